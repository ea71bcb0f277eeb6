//! Tenancy end to end (issue 17, docs/SEMANTICS.md "Tenancy"): one operator watching every
//! namespace; namespace A, annotated with a cap of 2 running runs, gets a burst of 50
//! (a Backfill of 50 dates, concurrency 50) and never holds more than 2 — in PostgreSQL and in
//! Redis — while namespace B's runs are admitted at once; B's DAG asks for priority 5000 and is
//! queued at the ceiling 1000 with a `PriorityClamped` condition until B's annotation grants
//! more; raising A's cap lets more of A's runs in. A test binary of its own: its operator
//! schedules every DAG in the cluster.

use std::process::Command;
use std::time::Duration;

use dag_operator::store::{RunFilter, RunRow, RunState, RunStore};
use dag_operator_e2e::db::TestDb;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::scenario::dag_yaml_with_image;
use dag_operator_e2e::{TestNamespace, eventually, plane};
use serde_json::Value;

const CAP: usize = 2;

fn backfill(dag: &str, end: &str, concurrency: usize) -> String {
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Backfill\nmetadata: {{name: burst}}\nspec:\n  dagRef: {{name: {dag}}}\n  start: '2024-01-01T00:00:00Z'\n  end: '{end}'\n  concurrency: {concurrency}\n"
    )
}

fn condition(ns: &TestNamespace, dag: &str, type_: &str) -> Option<Value> {
    let out = ns.kubectl_ok(&["get", "dag", dag, "-o", "json"], None);
    let obj: Value = serde_json::from_str(&out).ok()?;
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Sets (or replaces) an annotation of a Namespace.
fn annotate(namespace: &str, annotation: &str) {
    plane().kubectl_ok(
        &[
            "annotate",
            "--overwrite",
            "namespace",
            namespace,
            annotation,
        ],
        None,
    );
}

/// Members of a gate semaphore in the plane's Redis.
fn holders(key: &str) -> usize {
    let out = Command::new("redis-cli")
        .args(["-u", &plane().redis_url, "zcard", key])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_namespace_cap_holds_one_tenants_burst_while_another_is_admitted_at_once() {
    plane().install_crds();
    let a = TestNamespace::new("tenant-a");
    let b = TestNamespace::new("tenant-b");
    annotate(&a.name, &format!("dagoperator.io/max-running-runs={CAP}"));
    let db = TestDb::create("e2e_tenancy").await;
    let store = db.migrated().await;
    let hourly = "  schedule: '0 * * * *'\n  maxActiveRuns: 100";
    a.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&dag_yaml_with_image("work", hourly, "e2e.local/hold")),
    );
    b.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&dag_yaml_with_image(
            "work",
            &format!("{hourly}\n  priority: 5000"),
            "e2e.local/hold",
        )),
    );
    let label = format!("tenancy-{}", std::process::id());
    let op = Operator::start_all_namespaces(&label, &db.url, &["--max-concurrent-runs", "200"]);
    let ns_key = |ns: &str| format!("dagop-{label}:sem:runs:ns:{ns}");
    // 50 hourly dates for A, 5 for B (a Backfill's end is exclusive)
    a.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&backfill("work", "2024-01-03T02:00:00Z", 50)),
    );
    b.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&backfill("work", "2024-01-01T05:00:00Z", 5)),
    );
    let runs = |ns: String| {
        let store = store.clone();
        async move {
            store
                .list_runs(&RunFilter {
                    namespace: Some(ns),
                    dag_name: Some("work".into()),
                    state: None,
                    limit: 1000,
                })
                .await
                .unwrap_or_default()
        }
    };
    let running = |rows: &[RunRow]| rows.iter().filter(|r| r.state == RunState::Running).count();
    // sampled all along: A never above its cap, in PostgreSQL and in the gate
    let check_a = || async {
        let a_runs = runs(a.name.clone()).await;
        let (in_pg, in_gate) = (running(&a_runs), holders(&ns_key(&a.name)));
        assert!(
            in_pg <= CAP && in_gate <= CAP,
            "namespace A over its cap of {CAP}: {in_pg} runs running, {in_gate} gate holders"
        );
        in_pg
    };
    let b_runs = eventually(Duration::from_secs(60), "B's 5 runs admitted", || async {
        check_a().await;
        let b_runs = runs(b.name.clone()).await;
        (running(&b_runs) == 5).then_some(b_runs)
    })
    .await;
    // B's runs were admitted at its ceiling, not at the 5000 it asked for
    assert!(
        b_runs.iter().all(|r| r.priority == 1000),
        "priorities: {:?}",
        b_runs.iter().map(|r| r.priority).collect::<Vec<_>>()
    );
    // A is at its cap, not starved, and stays there
    eventually(Duration::from_secs(30), "A at its cap", || async {
        (check_a().await == CAP).then_some(())
    })
    .await;
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        check_a().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // B's DAG says its priority was lowered; a grant on the namespace clears it
    let clamped = eventually(Duration::from_secs(30), "PriorityClamped", || async {
        condition(&b, "work", "PriorityClamped")
    })
    .await;
    assert_eq!(clamped["status"], "True");
    assert_eq!(clamped["reason"], "AboveNamespaceCeiling");
    assert!(
        clamped["message"]
            .as_str()
            .unwrap_or_default()
            .contains("5000"),
        "{clamped}"
    );
    annotate(&b.name, "dagoperator.io/max-dag-priority=10000");
    eventually(
        Duration::from_secs(30),
        "the condition gone after the grant",
        || async {
            condition(&b, "work", "PriorityClamped")
                .is_none()
                .then_some(())
        },
    )
    .await;
    // a larger cap lets more of A's burst in (and no more)
    annotate(&a.name, "dagoperator.io/max-running-runs=5");
    eventually(Duration::from_secs(30), "A at its new cap of 5", || async {
        let n = running(&runs(a.name.clone()).await);
        assert!(n <= 5, "{n} runs over the new cap of 5");
        (n == 5).then_some(())
    })
    .await;
    // an annotation that is not a number: the default applies, and the Namespace says why
    annotate(&a.name, "dagoperator.io/max-running-runs=lots");
    eventually(
        Duration::from_secs(30),
        "an InvalidAnnotation event",
        || async {
            let out = plane().kubectl_ok(
                &[
                    "get",
                    "events",
                    "-A",
                    "--field-selector",
                    &format!("reason=InvalidAnnotation,involvedObject.name={}", a.name),
                    "-o",
                    "json",
                ],
                None,
            );
            out.contains("lots").then_some(())
        },
    )
    .await;
    assert!(
        op.log_tail().contains("InvalidAnnotation"),
        "{}",
        op.log_tail()
    );
}
