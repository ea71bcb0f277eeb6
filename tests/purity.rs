//! ARCHITECTURE.md: `schedule/`, `queue/` and `graph.rs` import no tokio, kube, sqlx or redis.

use std::path::{Path, PathBuf};

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("readable dir").flatten() {
            rust_files(&entry.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn pure_core_imports_no_io_crates() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in ["schedule", "queue", "graph.rs"] {
        rust_files(&src.join(part), &mut files);
    }
    assert!(files.len() >= 6, "found the pure modules: {files:?}");
    let forbidden = ["tokio", "kube", "k8s_openapi", "sqlx", "redis"];
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for name in forbidden {
                let used =
                    code.contains(&format!("{name}::")) || code.contains(&format!("use {name}"));
                assert!(!used, "{}:{} uses {name}: {line}", file.display(), n + 1);
            }
        }
    }
}

/// The crate paths a file names, with the line they start on: `crate::x::y` anywhere, and
/// every leaf of a `use crate::…` tree (on one line or several, groups nested to any depth:
/// `use crate::{a::b, c::{d, e as f}};` names `crate::a::b`, `crate::c::d`, `crate::c::e`).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    // comments out, lines kept (so a byte offset gives the line)
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        let before = code[..at].trim_end();
        let is_use = before.ends_with("use")
            && !before[..before.len() - 3].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        if is_use {
            let end = code[at..].find(';').map_or(code.len(), |e| at + e);
            let mut leaves = Vec::new();
            use_leaves(&code[at..end], "", &mut leaves);
            out.extend(leaves.into_iter().map(|p| (line_of(at), p)));
            from = end;
        } else {
            let tail = &code[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
                .unwrap_or(tail.len());
            out.push((line_of(at), tail[..len].to_string()));
            from = at + len;
        }
    }
    out
}

/// The leaves of one use tree (`a::b`, `a::{b, c::{d}}`, `a as b`, `a::self`), each prefixed.
fn use_leaves(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match (tree.find('{'), tree.rfind('}')) {
        (Some(open), Some(close)) if open < close => {
            let head = format!("{prefix}{}", tree[..open].trim());
            for part in top_level_parts(&tree[open + 1..close]) {
                use_leaves(part, &head, out);
            }
        }
        _ => {
            let path = tree.split(" as ").next().unwrap_or_default().trim();
            if path.is_empty() {
                return;
            }
            let full = format!("{prefix}{path}");
            out.push(match full.strip_suffix("::self") {
                Some(parent) => parent.to_string(),
                None => full,
            });
        }
    }
}

/// `a, b::{c, d}, e` split at the commas outside braces.
fn top_level_parts(group: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&group[start..]);
    parts
}

fn files_under(parts: &[&str]) -> Vec<PathBuf> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in parts {
        rust_files(&src.join(part), &mut files);
    }
    files
}

/// What the lower layers must not name.
const UPWARD: [&str; 7] = [
    "crate::controller",
    "crate::cli",
    "crate::operator",
    "crate::telemetry",
    "crate::leader",
    "crate::http",
    "crate::logs",
];

/// Issue 14: dependencies point one way (cli → operator → controllers → engine/executor →
/// schedule/queue/graph, store, gate). The engine and the executor report domain types and
/// never reach up to the controllers, the CLI, the wiring, the metrics or the CRD's status
/// types; the controllers read only what the executor reports (`executor::output`).
#[test]
fn dependencies_point_one_way() {
    let lower = files_under(&["engine", "executor", "store", "gate", "key.rs", "report.rs"]);
    assert!(lower.len() >= 20, "found the lower layers: {lower:?}");
    let status_types = ["DagStatus", "PoolStatus", "BackfillStatus"];
    for file in &lower {
        let text = std::fs::read_to_string(file).expect("readable");
        for (n, path) in crate_paths(&text) {
            for up in UPWARD {
                assert!(
                    !path.starts_with(up),
                    "{}:{n} reaches up to {up}: {path}",
                    file.display()
                );
            }
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for t in status_types {
                assert!(
                    !code.contains(t),
                    "{}:{} names the CRD status type {t}: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
    for file in files_under(&["controller"]) {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (n, path) in crate_paths(&text) {
            if path.starts_with("crate::executor") {
                assert!(
                    path.starts_with("crate::executor::output"),
                    "{}:{n} reads the executor's internals: {path}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn the_path_reader_sees_grouped_and_inline_paths() {
    let text = "use crate::{\n    controller::status,\n    gate::Gate,\n};\nlet x = crate::cli::run();\nuse crate::executor::output::PoolUsage;";
    let paths: Vec<String> = crate_paths(text).into_iter().map(|(_, p)| p).collect();
    assert!(
        paths.contains(&"crate::controller::status".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"crate::cli::run".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"crate::executor::output::PoolUsage".to_string()),
        "{paths:?}"
    );
}

#[test]
fn the_path_reader_expands_one_line_and_nested_groups() {
    let text = "use std::sync::Arc;\nuse crate::{controller::x, gate::Gate};\n\
                pub(crate) use crate::store::{DagKey, pg::{self, PgStore as Pg}};\n\
                use crate::{executor::{output::PoolUsage, state::Live}};";
    let paths = crate_paths(text);
    for (line, want) in [
        (2, "crate::controller::x"),
        (2, "crate::gate::Gate"),
        (3, "crate::store::DagKey"),
        (3, "crate::store::pg"),
        (3, "crate::store::pg::PgStore"),
        (4, "crate::executor::output::PoolUsage"),
        (4, "crate::executor::state::Live"),
    ] {
        assert!(
            paths.contains(&(line, want.to_string())),
            "{want} on line {line}: {paths:?}"
        );
    }
    assert_eq!(paths.len(), 7, "{paths:?}");
    // a lower layer with such a line is caught by `dependencies_point_one_way`
    let reaching_up = |text: &str| {
        crate_paths(text)
            .into_iter()
            .filter(|(_, p)| UPWARD.iter().any(|up| p.starts_with(up)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reaching_up("use crate::{controller::x, gate::Gate};"),
        vec![(1, "crate::controller::x".to_string())]
    );
    assert_eq!(
        reaching_up("use crate::{gate::Gate, store::{DagKey, RunStore}};"),
        vec![]
    );
    assert_eq!(
        reaching_up("use crate::{gate::{self, Gate}, telemetry::{Metrics}};").len(),
        1
    );
}
