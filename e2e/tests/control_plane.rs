//! First end-to-end tests on the local control plane: the CRDs install and become Established,
//! the API server rejects each malformed object of SPEC §11 row 1 with the schema's message,
//! `kubectl get` shows the printer columns, and kwok drives Pods to Succeeded and Failed.

use std::time::Duration;

use dag_operator_e2e::{TestNamespace, eventually, plane};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

fn setup(prefix: &str) -> TestNamespace {
    plane().install_crds();
    TestNamespace::new(prefix)
}

/// Applies `yaml` in the namespace, expecting the API server to refuse it; returns stderr.
fn rejected(ns: &TestNamespace, yaml: &str) -> String {
    let out = ns.kubectl(&["apply", "-f", "-"], Some(yaml));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the API server accepted:\n{yaml}");
    stderr
}

const VALID_DAG: &str = r#"
apiVersion: dagoperator.io/v1alpha1
kind: DAG
metadata: {name: ok}
spec:
  schedule: "0 2 * * *"
  tasks:
  - {name: a, container: {image: busybox}}
"#;

#[tokio::test]
async fn crds_install_and_become_established() {
    plane().install_crds();
    let client = plane().client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in [
        "dags.dagoperator.io",
        "pools.dagoperator.io",
        "backfills.dagoperator.io",
    ] {
        let crd = crds
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is Established");
    }
    // the CRDs are served: a valid DAG is accepted
    let ns = TestNamespace::new("valid");
    ns.kubectl_ok(&["apply", "-f", "-"], Some(VALID_DAG));
}

#[tokio::test]
async fn unknown_enum_value_is_rejected() {
    let ns = setup("enum");
    let err = rejected(
        &ns,
        &VALID_DAG.replace("  schedule:", "  concurrencyPolicy: Sometimes\n  schedule:"),
    );
    assert!(err.contains("spec.concurrencyPolicy"), "{err}");
    assert!(err.contains("Unsupported value: \"Sometimes\""), "{err}");
    assert!(err.contains("\"Allow\", \"Forbid\", \"Replace\""), "{err}");
}

#[tokio::test]
async fn negative_pool_slots_are_rejected() {
    let ns = setup("slots");
    let err = rejected(
        &ns,
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: p}\nspec: {slots: -1}\n",
    );
    assert!(err.contains("spec.slots"), "{err}");
    assert!(
        err.contains("should be greater than or equal to 0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dag_ending_before_it_starts_is_rejected() {
    let ns = setup("dag-range");
    let err = rejected(
        &ns,
        &VALID_DAG.replace(
            "  schedule:",
            "  startDate: 2024-02-01T00:00:00Z\n  endDate: 2024-01-01T00:00:00Z\n  schedule:",
        ),
    );
    assert!(err.contains("endDate must be after startDate"), "{err}");
}

const BACKFILL: &str = r#"
apiVersion: dagoperator.io/v1alpha1
kind: Backfill
metadata: {name: bf}
spec:
  dagRef: {name: ok}
  start: 2024-01-01T00:00:00Z
  end: END
"#;

#[tokio::test]
async fn backfill_end_not_after_start_is_rejected() {
    let ns = setup("range");
    for end in ["2024-01-01T00:00:00Z", "2023-12-31T00:00:00Z"] {
        let err = rejected(&ns, &BACKFILL.replace("END", end));
        assert!(err.contains("end must be after start"), "{end}: {err}");
    }
}

#[tokio::test]
async fn duplicate_task_names_are_rejected() {
    let ns = setup("dup");
    let yaml = format!("{VALID_DAG}  - {{name: a, container: {{image: busybox}}}}\n");
    let err = rejected(&ns, &yaml);
    assert!(err.contains("spec.tasks[1]"), "{err}");
    assert!(err.contains("Duplicate value"), "{err}");
}

#[tokio::test]
async fn changing_an_immutable_backfill_field_is_rejected() {
    let ns = setup("immutable");
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&BACKFILL.replace("END", "2024-02-01T00:00:00Z")),
    );
    for (patch, message) in [
        (
            r#"{"spec":{"start":"2023-06-01T00:00:00Z"}}"#,
            "start is immutable",
        ),
        (
            r#"{"spec":{"dagRef":{"name":"other"}}}"#,
            "dagRef is immutable",
        ),
        (r#"{"spec":{"order":"NewestFirst"}}"#, "order is immutable"),
    ] {
        let out = ns.kubectl(
            &["patch", "backfill", "bf", "--type=merge", "-p", patch],
            None,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{patch} was accepted");
        assert!(err.contains(message), "{patch}: {err}");
    }
    // a mutable field still changes
    ns.kubectl_ok(
        &[
            "patch",
            "backfill",
            "bf",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ],
        None,
    );
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let ns = setup("columns");
    let examples = plane().repo.join("manifests/examples");
    ns.kubectl_ok(&["apply", "-f", &examples.to_string_lossy()], None);
    let out = ns.kubectl_ok(&["get", "dags,pools,backfills"], None);
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("NAME")).collect();
    let expect = [
        [
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "QUEUED",
            "LAST",
            "NEXT",
            "LASTSUCCESS",
            "READY",
            "AGE",
        ]
        .as_slice(),
        ["NAME", "SLOTS", "USED", "OPEN", "QUEUED", "AGE"].as_slice(),
        ["NAME", "DAG", "PHASE", "PROGRESS", "ACTIVE", "AGE"].as_slice(),
    ];
    assert_eq!(headers.len(), 3, "{out}");
    for (header, columns) in headers.iter().zip(expect) {
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            columns,
            "{out}"
        );
    }
    assert!(out.contains("dag.dagoperator.io/etl-pipeline"), "{out}");
    assert!(out.contains("30 2 * * *"), "{out}");
    // -o wide adds the Ready condition's message
    let wide = ns.kubectl_ok(&["get", "dags", "-o", "wide"], None);
    assert!(
        wide.lines()
            .next()
            .is_some_and(|h| h.split_whitespace().last() == Some("MESSAGE")),
        "{wide}"
    );
    // kubectl explain reads our descriptions
    let explain = ns.kubectl_ok(&["explain", "dag.spec.tasks.retryBackoff"], None);
    assert!(explain.contains("Exponential"), "{explain}");
    let explain = ns.kubectl_ok(&["explain", "dag"], None);
    assert!(!explain.contains("Auto-generated"), "{explain}");
    assert!(explain.contains("workflow DAG"), "{explain}");
    // the category and short names work too
    let by_category = ns.kubectl_ok(&["get", "dagoperator", "-o", "name"], None);
    for name in [
        "dag.dagoperator.io/etl-pipeline",
        "pool.dagoperator.io/warehouse",
        "backfill.dagoperator.io/etl-january-2024",
    ] {
        assert!(by_category.contains(name), "{by_category}");
    }
    ns.kubectl_ok(&["get", "dag,dagpool,bf"], None);
}

/// The description of a field of our CRD `crds/<file>` (`path` dotted from the root, arrays
/// looked through; empty: the kind itself), whitespace collapsed.
fn crd_description(file: &str, path: &str) -> String {
    let text = std::fs::read_to_string(plane().repo.join("crds").join(file)).expect("read CRD");
    let crd: serde_yaml::Value = serde_yaml::from_str(&text).expect("CRD YAML");
    let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for part in path.split('.').filter(|p| !p.is_empty()) {
        if node["type"] == "array" {
            node = &node["items"];
        }
        node = &node["properties"][part];
    }
    let description = node["description"]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: no description at {path:?}"));
    collapse(description)
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn kubectl_explain_prints_our_descriptions_for_every_kind_and_nested_fields() {
    let ns = setup("explain");
    let fields: [(&str, &str, &str); 21] = [
        ("dag", "dags.yaml", ""),
        ("dag", "dags.yaml", "spec.concurrencyPolicy"),
        ("dag", "dags.yaml", "spec.maxActiveRuns"),
        ("dag", "dags.yaml", "spec.catchup"),
        ("dag", "dags.yaml", "spec.schedules"),
        ("dag", "dags.yaml", "spec.jitter"),
        ("dag", "dags.yaml", "spec.tasks.retries"),
        ("dag", "dags.yaml", "spec.tasks.retryBackoff"),
        ("dag", "dags.yaml", "spec.tasks.triggerRule"),
        ("dag", "dags.yaml", "spec.tasks.poolSlots"),
        ("dag", "dags.yaml", "status.conditions"),
        ("dag", "dags.yaml", "status.nextScheduleTime"),
        ("dag", "dags.yaml", "status.autoSuspension"),
        ("pool", "pools.yaml", ""),
        ("pool", "pools.yaml", "spec.slots"),
        ("pool", "pools.yaml", "status.openSlots"),
        ("backfill", "backfills.yaml", ""),
        ("backfill", "backfills.yaml", "spec.reprocess"),
        ("backfill", "backfills.yaml", "spec.concurrency"),
        ("backfill", "backfills.yaml", "status.phase"),
        ("backfill", "backfills.yaml", "status.progress"),
    ];
    for (kind, file, path) in fields {
        let target = if path.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{path}")
        };
        let explain = ns.kubectl_ok(&["explain", &target], None);
        assert!(
            explain.contains("GROUP:      dagoperator.io"),
            "{target}: {explain}"
        );
        assert!(!explain.contains("Auto-generated"), "{target}: {explain}");
        let want = crd_description(file, path);
        assert!(
            collapse(&explain).contains(&want),
            "kubectl explain {target} does not print the CRD's description {want:?}:\n{explain}"
        );
    }
}

async fn pod_phase_after_kwok(ns: &TestNamespace, name: &str, image: &str) -> Pod {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: main, image: {image}}}\n"
    );
    ns.kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
    let pods: Api<Pod> = Api::namespaced(plane().client().await, &ns.name);
    eventually(
        Duration::from_secs(60),
        &format!("pod {name} to finish"),
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get(name).await.ok()?;
                let phase = pod.status.as_ref()?.phase.clone()?;
                (phase == "Succeeded" || phase == "Failed").then_some(pod)
            }
        },
    )
    .await
}

fn exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

#[tokio::test]
async fn a_pod_succeeds_through_kwok() {
    let ns = setup("pod-ok");
    let pod = pod_phase_after_kwok(&ns, "works", "busybox").await;
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    assert_eq!(exit_code(&pod), Some(0));
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some(),
        "scheduled onto a kwok node"
    );
}

#[tokio::test]
async fn a_pod_fails_through_kwok() {
    let ns = setup("pod-fail");
    let pod = pod_phase_after_kwok(&ns, "breaks", "e2e.local/fail").await;
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    assert_eq!(exit_code(&pod), Some(1));
}
