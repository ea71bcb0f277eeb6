//! The edges of a task's life end to end (issue 12, SPEC §11): a DAG deleted while its run
//! runs (also by deleting its namespace, also while the operator is down), runs of namespaces
//! the operator does not watch, DAG names too long for a label, and Pods the API server
//! refuses.

use std::time::Duration;

use chrono::Utc;
use dag_operator::store::{DagKey, NewRun, NewTask, RunState, RunStore, RunType};
use dag_operator_e2e::eventually;
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup};

/// A DAG whose one task holds its Pod running until told otherwise.
fn held(name: &str) -> String {
    dag_with_spec(
        name,
        "  tasks:\n  - {name: work, container: {image: e2e.local/hold}}\n",
    )
}

/// A DAG with a run every second.
fn every_second(name: &str) -> String {
    dag_with_spec(
        name,
        "  schedule: '* * * * * *'\n  maxActiveRuns: 100\n  tasks:\n  - {name: work, container: {image: busybox}}\n",
    )
}

/// Triggers `dag` and waits until its run's Pod exists; returns the run id and the Pod.
async fn held_run(s: &Setup, dag: &str) -> (uuid::Uuid, String) {
    s.cli(&[
        "trigger",
        dag,
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-06-01T00:00:00Z",
    ]);
    let run = s
        .runs_until(dag, "the triggered run", |r| !r.is_empty())
        .await
        .remove(0);
    let pod = s.pod_of_run(&run).await;
    (run.id, pod)
}

async fn cancelled_within(s: &Setup, dag: &str, id: uuid::Uuid, secs: u64) {
    eventually(
        Duration::from_secs(secs),
        "the deleted DAG's run to be cancelled",
        || async {
            s.runs(dag)
                .await
                .iter()
                .any(|r| r.id == id && r.state == RunState::Cancelled)
                .then_some(())
        },
    )
    .await;
    let tries = s.store.task_instances(&[id]).await.expect("task instances");
    assert!(
        tries.iter().all(|t| t.state == "cancelled"),
        "every try of a cancelled run ends cancelled: {tries:?}"
    );
}

/// As [`cancelled_within`], for a run of a deleted namespace: the leader purges that
/// namespace's history (docs/SEMANTICS.md, "History and namespaces"), finished runs only, so
/// a run that is gone was ended first.
async fn cancelled_or_purged_within(s: &Setup, dag: &str, id: uuid::Uuid, secs: u64) {
    eventually(
        Duration::from_secs(secs),
        "the deleted namespace's run to be cancelled (or purged once ended)",
        || async {
            let runs = s.runs(dag).await;
            let run = runs.iter().find(|r| r.id == id);
            run.is_none_or(|r| r.state == RunState::Cancelled)
                .then_some(())
        },
    )
    .await;
    let tries = s.store.task_instances(&[id]).await.expect("task instances");
    assert!(
        tries.iter().all(|t| t.state == "cancelled"),
        "every try of a cancelled run ends cancelled: {tries:?}"
    );
}

async fn pods_gone(s: &Setup, dag: &str) {
    eventually(Duration::from_secs(30), "the run's Pods to go", || {
        let n = s.pods(dag).len();
        async move { (n == 0).then_some(()) }
    })
    .await;
}

/// With `--max-concurrent-runs 1`, `dag` gets a run: the global slot is free.
async fn gets_a_run(s: &Setup, dag: &str) {
    s.runs_until(
        dag,
        "a run of the other DAG (the global slot is back)",
        |r| !r.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn a_dag_deleted_while_its_task_runs_cancels_the_run_and_frees_its_slot() {
    let s = setup("del-running").await;
    s.apply(&held("doomed"));
    let _op = s.operator(&["--max-concurrent-runs", "1"]);
    let (id, _pod) = held_run(&s, "doomed").await;
    s.ns.kubectl_ok(&["delete", "dag", "doomed"], None);
    cancelled_within(&s, "doomed", id, 15).await;
    pods_gone(&s, "doomed").await;
    // the one global slot is free again
    s.apply(&every_second("other"));
    gets_a_run(&s, "other").await;
    // re-created under the same name, the DAG starts clean: a trigger runs
    s.apply(&held("doomed"));
    s.cli(&[
        "trigger",
        "doomed",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-06-02T00:00:00Z",
    ]);
    s.ns.kubectl_ok(&["delete", "dag", "other"], None);
    s.runs_until("doomed", "the re-created DAG's run", |r| {
        r.iter().any(|r| {
            r.state == RunState::Running && r.logical_date.to_rfc3339().starts_with("2024-06-02")
        })
    })
    .await;
}

#[tokio::test]
async fn a_dag_deleted_while_the_operator_is_down_has_its_run_cancelled_at_start() {
    let s = setup("del-down").await;
    s.apply(&held("doomed"));
    let mut op = s.operator(&["--max-concurrent-runs", "1"]);
    let (id, _pod) = held_run(&s, "doomed").await;
    op.kill9();
    s.ns.kubectl_ok(&["delete", "dag", "doomed"], None);
    s.apply(&every_second("other"));
    op.restart();
    cancelled_within(&s, "doomed", id, 30).await;
    gets_a_run(&s, "other").await;
}

#[tokio::test]
async fn deleting_the_namespace_cancels_its_runs_and_frees_their_slots() {
    let s = setup("del-ns").await;
    s.apply(&held("doomed"));
    let _op = s.operator(&["--max-concurrent-runs", "1"]);
    let (id, _pod) = held_run(&s, "doomed").await;
    s.ns.kubectl_ok(&["delete", "namespace", &s.ns.name, "--wait=true"], None);
    cancelled_or_purged_within(&s, "doomed", id, 60).await;
    pods_gone(&s, "doomed").await;
    // the namespace again, with another DAG: the global slot is back
    dag_operator_e2e::plane().kubectl_ok(&["create", "namespace", &s.ns.name], None);
    s.apply(&every_second("other"));
    gets_a_run(&s, "other").await;
}

#[tokio::test]
async fn a_namespace_deleted_while_the_operator_is_down_has_its_runs_cancelled_at_start() {
    let s = setup("del-ns-down").await;
    s.apply(&held("doomed"));
    let mut op = s.operator(&["--max-concurrent-runs", "1"]);
    let (id, _pod) = held_run(&s, "doomed").await;
    op.kill9();
    s.ns.kubectl_ok(&["delete", "namespace", &s.ns.name, "--wait=true"], None);
    dag_operator_e2e::plane().kubectl_ok(&["create", "namespace", &s.ns.name], None);
    s.apply(&every_second("other"));
    op.restart();
    cancelled_or_purged_within(&s, "doomed", id, 60).await;
    pods_gone(&s, "doomed").await;
    gets_a_run(&s, "other").await;
}

#[tokio::test]
async fn runs_of_namespaces_not_watched_are_not_adopted() {
    let s = setup("scope").await;
    // 5 runs left `running` by a namespace that no longer exists (and is not watched)
    let runs: Vec<NewRun> = (0..5)
        .map(|i| {
            let t = Utc::now() - chrono::Duration::hours(i + 1);
            NewRun {
                dag: DagKey::new(format!("{}-gone", s.ns.name), "orphan"),
                dag_uid: "uid-gone".into(),
                run_type: RunType::Scheduled,
                backfill_name: None,
                backfill_uid: None,
                trigger: None,
                logical_date: t,
                data_interval_start: t,
                data_interval_end: t,
                priority: 0,
                params: serde_json::json!({}),
                spec_hash: None,
                tasks: vec![NewTask {
                    task_name: "work".into(),
                    pool: None,
                    pool_slots: 1,
                }],
            }
        })
        .collect();
    s.store.insert_runs(&runs).await.expect("insert");
    s.apply(&every_second("mine"));
    let _op = s.operator(&["--max-concurrent-runs", "2"]);
    gets_a_run(&s, "mine").await;
}

#[tokio::test]
async fn a_dag_name_too_long_for_a_label_is_refused_at_apply() {
    let s = setup("long-name").await;
    let name = format!("d{}", "x".repeat(69));
    let out = s.ns.kubectl(&["apply", "-f", "-"], Some(&held(&name)));
    assert!(!out.status.success(), "a 70-character DAG name is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("63"), "the message names the limit: {err}");
}

#[tokio::test]
async fn a_pod_the_api_server_refuses_fails_its_try_with_the_message() {
    let s = setup("refused").await;
    s.apply(&dag_with_spec(
        "badmount",
        // valid for the CRD (and for the operator), refused by the API server's Pod validation:
        // a mount of a volume the Pod does not have
        "  tasks:\n  - {name: work, retries: 1, retryDelaySeconds: 0, container: {image: busybox, volumeMounts: [{name: missing, mountPath: /data}]}}\n",
    ));
    let _op = s.operator(&[]);
    s.cli(&[
        "trigger",
        "badmount",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-06-03T00:00:00Z",
    ]);
    let run = s
        .runs_until("badmount", "the run to fail", |r| {
            r.iter().any(|r| r.state == RunState::Failed)
        })
        .await
        .remove(0);
    let tries = s.store.task_instances(&[run.id]).await.expect("tries");
    assert_eq!(tries.len(), 2, "retries apply to a refused Pod: {tries:?}");
    for t in &tries {
        assert_eq!(t.state, "failed");
        let msg = t.message.as_deref().unwrap_or_default();
        assert!(
            msg.contains("volumeMounts"),
            "the API server's message: {msg}"
        );
    }
    let warned = eventually(Duration::from_secs(30), "a FailedCreate event", || {
        let found = s.events("FailedCreate");
        async move { (!found.is_empty()).then_some(found) }
    })
    .await;
    assert_eq!(warned[0]["type"], "Warning");
    assert_eq!(warned[0]["involvedObject"]["name"], "badmount");
    s.status_until("badmount", "Ready=False FailedCreate", |st| {
        st["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "Ready" && c["status"] == "False" && c["reason"] == "FailedCreate"
            })
        })
    })
    .await;
}

#[tokio::test]
async fn a_run_finishes_with_the_spec_it_was_admitted_with() {
    let s = setup("spec-pinned").await;
    s.apply(&dag_with_spec(
        "evolving",
        "  tasks:\n  - {name: first, container: {image: e2e.local/hold}}\n  - {name: second, dependsOn: [first], container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    s.cli(&[
        "trigger",
        "evolving",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-06-04T00:00:00Z",
    ]);
    let first = s.pod_of("evolving", "first", 1).await;
    // a GitOps sync mid-run: `second` is removed, a new task appears
    s.apply(&dag_with_spec(
        "evolving",
        "  tasks:\n  - {name: first, container: {image: e2e.local/hold}}\n  - {name: other, container: {image: busybox}}\n",
    ));
    // the change reached the operator (its status carries the new generation)
    s.status_until("evolving", "the new generation observed", |st| {
        st["observedGeneration"] == 2
    })
    .await;
    s.pod_outcome(&first, "succeed");
    let run = s
        .runs_until("evolving", "the run to end", |r| {
            r.iter().any(|r| r.state != RunState::Running)
        })
        .await
        .remove(0);
    assert_eq!(run.state, RunState::Success);
    let tries = s.store.task_instances(&[run.id]).await.expect("tries");
    let names: Vec<&str> = tries.iter().map(|t| t.task_name.as_str()).collect();
    assert_eq!(
        names,
        ["first", "second"],
        "the admitted spec, whole: {tries:?}"
    );
    assert!(tries.iter().all(|t| t.state == "success"), "{tries:?}");
    assert!(
        s.pods("evolving")
            .iter()
            .all(|p| p["metadata"]["labels"]["dagoperator.io/task"] != "other"),
        "no task of the new spec ran in the old run"
    );
}
