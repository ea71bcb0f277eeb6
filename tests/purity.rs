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
