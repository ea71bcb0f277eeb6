//! CRD upgrades through Helm (issue 17): the chart renders its CRDs as templates, so a release
//! adopts CRDs that are already in the cluster (`--take-ownership`), `helm upgrade` changes
//! their schema in place, and `helm uninstall` leaves them and their objects
//! (`crds.keep`: `helm.sh/resource-policy: keep`).
//!
//! The plane's CRDs are shared by every other test, so the "previous chart" differs from the
//! current one in a description only, never in the schema's structure; the release owns no
//! other cluster-wide object; and at the end (also when the test fails) the CRDs are put back
//! exactly as crds/ defines them. A test binary of its own: nothing else in it applies crds/
//! while the release holds the previous description.

mod support;

use std::path::{Path, PathBuf};

use dag_operator_e2e::chart::{CHART, chart, helm, helm_ok, text, yaml_docs};
use dag_operator_e2e::{TestNamespace, plane};
use serde_json::Value;
use support::{Release, crds_uninstall_would_delete, first_difference, numbers_as_floats};

const CRDS: [&str; 3] = [
    "backfills.dagoperator.io",
    "dags.dagoperator.io",
    "pools.dagoperator.io",
];

/// Where the DAG CRD's `spec` property is described, in the CRD object.
const SPEC_DESCRIPTION: &str =
    "/spec/versions/0/schema/openAPIV3Schema/properties/spec/description";

/// The previous chart's description of a DAG's `spec`: the only difference from the current
/// chart's CRDs.
const PREVIOUS_DESCRIPTION: &str = "What the DAG runs and when (chart 0.0.1).";

/// What Helm writes on the objects it owns.
const HELM_ANNOTATIONS: [&str; 3] = [
    "meta.helm.sh/release-name",
    "meta.helm.sh/release-namespace",
    "helm.sh/resource-policy",
];
const HELM_LABEL: &str = "app.kubernetes.io/managed-by";

/// crds/<file> as a JSON value.
fn crd_file(name: &str) -> Value {
    let plural = name.split('.').next().unwrap_or_default();
    let path = plane().repo.join(format!("crds/{plural}.yaml"));
    let text = std::fs::read_to_string(&path).expect("crds/ is readable");
    yaml_docs(&text).pop().expect("one CRD per file")
}

/// Panics where the live CRD's versions (schemas, printer columns, subresources) differ
/// from crds/'s.
fn assert_versions_are_crds(name: &str) {
    let live = numbers_as_floats(&live_crd(name)["spec"]["versions"]);
    let file = numbers_as_floats(&crd_file(name)["spec"]["versions"]);
    if let Some(diff) = first_difference(&live, &file, "/spec/versions") {
        panic!("{name}: the live CRD differs from crds/ at {diff}");
    }
}

/// The CRD as the API server holds it.
fn live_crd(name: &str) -> Value {
    let out = plane().kubectl_ok(&["get", "crd", name, "-o", "json"], None);
    serde_json::from_str(&out).expect("CRD as JSON")
}

fn description(crd: &Value) -> String {
    crd.pointer(SPEC_DESCRIPTION)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Puts the CRDs back as crds/ defines them: Helm's ownership annotations and label removed,
/// crds/ applied again (client-side, as the harness installs them), Established. Runs when
/// dropped, so a failing test leaves the plane as it found it too.
struct RestoreCrds;

impl RestoreCrds {
    fn restore(&self) {
        let p = plane();
        let mut annotate = vec!["annotate", "crd"];
        annotate.extend(CRDS);
        let removals: Vec<String> = HELM_ANNOTATIONS.iter().map(|a| format!("{a}-")).collect();
        annotate.extend(removals.iter().map(String::as_str));
        p.kubectl_ok(&annotate, None);
        let mut label = vec!["label", "crd"];
        label.extend(CRDS);
        let removal = format!("{HELM_LABEL}-");
        label.push(&removal);
        p.kubectl_ok(&label, None);
        let dir = p.repo.join("crds").to_string_lossy().into_owned();
        p.kubectl_ok(&["apply", "-f", &dir], None);
        p.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                &dir,
            ],
            None,
        );
    }
}

impl Drop for RestoreCrds {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // best effort: a second panic here would abort and hide the first
            let _ = std::panic::catch_unwind(|| self.restore());
        }
    }
}

/// A copy of the chart as its previous version shipped it: version 0.0.1, and the DAG CRD
/// with another description of `spec` (nothing else differs).
fn previous_chart(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("temporary directory");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(plane().repo.join(CHART))
        .arg(dir)
        .status()
        .expect("cp runs");
    assert!(status.success(), "cp -r {CHART} failed");
    let copy = dir.join("dag-operator");

    let chart_yaml = copy.join("Chart.yaml");
    let meta = std::fs::read_to_string(&chart_yaml).expect("Chart.yaml");
    let meta: String = meta
        .lines()
        .map(|l| {
            if l.starts_with("version:") {
                "version: 0.0.1".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&chart_yaml, meta + "\n").expect("Chart.yaml written");

    let dags = copy.join("files/crds/dags.yaml");
    let current = description(&crd_file("dags.dagoperator.io"));
    assert!(!current.is_empty(), "crds/dags.yaml describes a DAG's spec");
    let yaml = std::fs::read_to_string(&dags).expect("files/crds/dags.yaml");
    // the description as the YAML writes it: a single-quoted scalar
    let quoted = format!("description: '{}'", current.replace('\'', "''"));
    assert_eq!(
        yaml.matches(&quoted).count(),
        1,
        "{quoted} is not once in files/crds/dags.yaml"
    );
    let yaml = yaml.replacen(&quoted, &format!("description: {PREVIOUS_DESCRIPTION}"), 1);
    std::fs::write(&dags, yaml).expect("files/crds/dags.yaml written");
    copy
}

fn annotations(crd: &Value) -> serde_json::Map<String, Value> {
    crd["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn helm_upgrade_updates_the_crds_in_place_and_uninstall_keeps_them() {
    let p = plane();
    p.install_crds();
    let restore = RestoreCrds;
    let current = description(&crd_file("dags.dagoperator.io"));
    assert_eq!(description(&live_crd("dags.dagoperator.io")), current);

    // a Pool, to show that the CRDs' objects outlive the release
    let ns = TestNamespace::new("crd-upgrade");
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some("apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata:\n  name: survivor\nspec:\n  slots: 1\n"),
    );

    let tmp = std::env::temp_dir().join(format!("dagop-e2e-crd-upgrade-{}", std::process::id()));
    let previous = previous_chart(&tmp);
    let previous = previous.to_string_lossy().into_owned();
    let release_ns = TestNamespace::new("crd-upgrade-rel");
    let release = Release {
        name: format!("crds-{}", std::process::id()),
        namespace: release_ns.name.clone(),
    };
    // nothing cluster-wide but the CRDs (no RBAC, no example roles), no operator Pod
    let sets = [
        "--set",
        "rbac.create=false",
        "--set",
        "ui.exampleRoles=false",
        "--set",
        "replicaCount=0",
    ];
    let with_sets = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(sets.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helm_ok(&args)
    };

    // 1. the CRDs are there already (applied with kubectl, owned by no release): a plain
    // install refuses them; --take-ownership adopts them and applies the previous chart's
    let dry = helm(&[
        "install",
        &release.name,
        &previous,
        "--namespace",
        &release.namespace,
        "--dry-run=server",
    ]);
    let refused = text(&dry.stderr);
    assert!(
        !dry.status.success() && refused.contains("invalid ownership metadata"),
        "helm install over CRDs it does not own: {refused}{}",
        text(&dry.stdout)
    );
    run(with_sets(&[
        "install",
        &release.name,
        &previous,
        "--namespace",
        &release.namespace,
        "--take-ownership",
    ]));
    for name in CRDS {
        let crd = live_crd(name);
        let a = annotations(&crd);
        assert_eq!(
            a.get("meta.helm.sh/release-name").and_then(Value::as_str),
            Some(release.name.as_str()),
            "{name} adopted: {a:?}"
        );
        assert_eq!(
            a.get("helm.sh/resource-policy").and_then(Value::as_str),
            Some("keep"),
            "{name}: {a:?}"
        );
        assert_eq!(crd["metadata"]["labels"][HELM_LABEL], "Helm", "{name}");
    }
    assert_eq!(
        description(&live_crd("dags.dagoperator.io")),
        PREVIOUS_DESCRIPTION,
        "the previous chart's CRD was applied"
    );

    // 2. helm upgrade to the current chart changes the CRD in place: the same object (uid),
    // a new generation, the current schema
    let before = live_crd("dags.dagoperator.io");
    run(with_sets(&[
        "upgrade",
        &release.name,
        &chart(),
        "--namespace",
        &release.namespace,
    ]));
    let after = live_crd("dags.dagoperator.io");
    assert_eq!(description(&after), current, "helm upgrade updated the CRD");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert!(
        after["metadata"]["generation"].as_i64() > before["metadata"]["generation"].as_i64(),
        "a new generation: {} -> {}",
        before["metadata"]["generation"],
        after["metadata"]["generation"]
    );
    for name in CRDS {
        assert_versions_are_crds(name);
    }
    let history: Value = serde_json::from_str(&helm_ok(&[
        "history",
        &release.name,
        "--namespace",
        &release.namespace,
        "-o",
        "json",
    ]))
    .expect("helm history json");
    let charts: Vec<&str> = history
        .as_array()
        .map(|h| h.iter().filter_map(|r| r["chart"].as_str()).collect())
        .unwrap_or_default();
    let current_version = format!("dag-operator-{}", {
        let meta =
            std::fs::read_to_string(p.repo.join(CHART).join("Chart.yaml")).expect("Chart.yaml");
        let meta: serde_yaml::Value = serde_yaml::from_str(&meta).expect("Chart.yaml is YAML");
        meta["version"].as_str().unwrap_or_default().to_string()
    });
    assert_eq!(charts, ["dag-operator-0.0.1", current_version.as_str()]);

    // 3. helm uninstall keeps the CRDs (crds.keep), and so the Pool
    assert_eq!(
        crds_uninstall_would_delete(&release.name, &release.namespace),
        Ok(vec![])
    );
    let out = release.uninstall();
    assert!(
        out.contains("kept due to the resource policy"),
        "helm uninstall: {out}"
    );
    for name in CRDS {
        let crd = live_crd(name);
        assert!(
            crd["metadata"]["deletionTimestamp"].is_null(),
            "{name} is being deleted"
        );
    }
    let pool = ns.kubectl_ok(
        &["get", "pool", "survivor", "-o", "jsonpath={.spec.slots}"],
        None,
    );
    assert_eq!(pool, "1", "the Pool outlived the release");
    assert!(
        !helm(&["status", &release.name, "--namespace", &release.namespace])
            .status
            .success(),
        "the release is gone"
    );

    // 4. the CRDs as crds/ defines them, for every other test
    restore.restore();
    for name in CRDS {
        let live = live_crd(name);
        let a = annotations(&live);
        for key in HELM_ANNOTATIONS {
            assert!(!a.contains_key(key), "{name} still has {key}");
        }
        assert!(live["metadata"]["labels"][HELM_LABEL].is_null(), "{name}");
        assert_versions_are_crds(name);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
