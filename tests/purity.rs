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

/// The crate paths a file names (`crate::x::y`, and `use crate::{x::y, ...}` groups flattened
/// as far as one level), with the line they are on.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_group: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default().trim();
        if code.starts_with("use crate::{") && !code.contains('}') {
            in_group = Some(n + 1);
            continue;
        }
        if let Some(start) = in_group {
            if code.starts_with('}') {
                in_group = None;
            } else {
                for part in code.split(',') {
                    let part = part.trim();
                    if !part.is_empty() {
                        out.push((start, format!("crate::{part}")));
                    }
                }
            }
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
                .unwrap_or(tail.len());
            out.push((n + 1, tail[..end].to_string()));
            rest = &tail[end..];
        }
    }
    out
}

fn files_under(parts: &[&str]) -> Vec<PathBuf> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in parts {
        rust_files(&src.join(part), &mut files);
    }
    files
}

/// Issue 14: dependencies point one way (cli → operator → controllers → engine/executor →
/// schedule/queue/graph, store, gate). The engine and the executor report domain types and
/// never reach up to the controllers, the CLI, the wiring, the metrics or the CRD's status
/// types; the controllers read only what the executor reports (`executor::output`).
#[test]
fn dependencies_point_one_way() {
    let lower = files_under(&["engine", "executor", "store", "gate", "key.rs", "report.rs"]);
    assert!(lower.len() >= 20, "found the lower layers: {lower:?}");
    let upward = [
        "crate::controller",
        "crate::cli",
        "crate::operator",
        "crate::telemetry",
        "crate::leader",
        "crate::http",
        "crate::logs",
    ];
    let status_types = ["DagStatus", "PoolStatus", "BackfillStatus"];
    for file in &lower {
        let text = std::fs::read_to_string(file).expect("readable");
        for (n, path) in crate_paths(&text) {
            for up in upward {
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
