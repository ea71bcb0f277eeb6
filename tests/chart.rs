//! The Helm chart (files/crds/, rendered by templates/crds.yaml) and the kustomize install
//! carry byte-identical copies of crds/, and the chart's appVersion is the crate's version.
//! (Rendering, installing and upgrading the chart is tested end to end in
//! e2e/tests/install.rs and e2e/tests/crd_upgrade.rs.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const REGENERATE: &str = "regenerate with `cargo run -- crds --out-dir crds && \
     cargo run -- crds --out-dir charts/dag-operator/files/crds && scripts/render-manifests`";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// File name → content of every file in `dir`.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is not readable ({e}): {REGENERATE}", dir.display()));
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let content = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect()
}

fn assert_same_crds(copy_dir: &str) {
    let source = files(&repo().join("crds"));
    assert!(!source.is_empty(), "crds/ is empty: {REGENERATE}");
    let copy = files(&repo().join(copy_dir));
    for (name, content) in &source {
        match copy.get(name) {
            None => panic!("{copy_dir}/{name} is missing: {REGENERATE}"),
            Some(c) => assert!(
                c == content,
                "{copy_dir}/{name} differs from crds/{name}: {REGENERATE}"
            ),
        }
    }
    let extra: Vec<&String> = copy.keys().filter(|n| !source.contains_key(*n)).collect();
    assert!(
        extra.is_empty(),
        "{copy_dir} holds files that crds/ does not: {extra:?}; delete them and {REGENERATE}"
    );
}

#[test]
fn chart_crds_are_copies_of_crds() {
    assert_same_crds("charts/dag-operator/files/crds");
}

/// Helm installs a chart's crds/ once and never upgrades them: the CRDs live in files/crds/
/// and are templates, so the old directory must not come back.
#[test]
fn chart_has_no_crds_directory() {
    let old = repo().join("charts/dag-operator/crds");
    assert!(
        !old.exists(),
        "{} exists: Helm would install it once and never upgrade it; the chart's CRDs are \
         charts/dag-operator/files/crds/ (templates/crds.yaml renders them)",
        old.display()
    );
}

#[test]
fn kustomize_install_crds_are_copies_of_crds() {
    assert_same_crds("manifests/install/crds");
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let path = repo().join("charts/dag-operator/Chart.yaml");
    let text = std::fs::read_to_string(&path).expect("Chart.yaml is readable");
    let chart: serde_yaml::Value = serde_yaml::from_str(&text).expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("dag-operator"));
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "charts/dag-operator/Chart.yaml appVersion must be the version in Cargo.toml \
         (then run scripts/render-manifests)"
    );
}
