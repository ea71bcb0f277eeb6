//! Lifecycle, round 3 (issue 27) end to end: the real operator binary on the local plane, for
//! the defects of the engine and the executor that the tier-3 tests (tests/engine_round3.rs,
//! tests/executor.rs) pin with a fake clock and a fake cluster:
//! - defect 1: a DAG created after the operator's listing and then made invalid keeps its
//!   running run across resyncs (it was cancelled as if the DAG were deleted);
//! - defect 3: Pod creates still in flight when their run is cancelled leave no Pod;
//! - defect 4: an undated manual trigger whose run times out on `dependsOn` makes one failed
//!   run and is recorded (it made a new failed run every `dependencyTimeoutSeconds`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dag_operator::store::{RunRow, RunState, RunType};
use dag_operator_e2e::eventually;
use dag_operator_e2e::rights::{ACT, READ};
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup};
use serde_json::Value;

/// Checks `f` every 200 ms for the whole of `span`, panicking at the first time it fails: the
/// way to see that something does *not* happen (a run cancelled, a run repeated) over a span
/// in which, before the fix, it did.
async fn throughout<F, Fut>(span: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let end = Instant::now() + span;
    while Instant::now() < end {
        if let Err(e) = f().await {
            panic!("{what} did not hold: {e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `Ready` condition of a DAG's status: (status, reason).
fn ready(status: &Value) -> Option<(String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

/// Waits until the operator answers `/readyz` with 200.
async fn ready_operator(op: &dag_operator_e2e::operator::Operator) {
    eventually(Duration::from_secs(60), "the operator ready", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 200)
    })
    .await;
}

/// X's spec: one task holding its Pod running, and a schedule (`valid`: a yearly one that
/// does not come due during the test; else one the CRD accepts and the cron parser refuses).
fn x_spec(valid: bool) -> String {
    let schedule = if valid { "0 0 1 1 *" } else { "61 * * * *" };
    format!(
        "  schedule: '{schedule}'\n  tasks:\n  - {{name: work, container: {{image: e2e.local/hold}}}}\n"
    )
}

/// Defect 1 (SPEC §11: an invalid DAG's running runs finish). The engine took the set of
/// existing DAGs from the last listing only; X, created after it, left the engine's map when
/// it went invalid, and the next resync cancelled its running run as a deleted DAG's.
#[tokio::test]
async fn a_dag_created_after_the_listing_and_made_invalid_keeps_its_running_run() {
    let s = setup("r3-invalid").await;
    // a DAG there before the operator: once it has a status, the operator's watches have
    // listed the namespace, so X (created next) is not in that listing
    s.apply(&dag_with_spec(
        "early",
        "  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let op = s.operator(&["--resync-interval", "2s"]);
    ready_operator(&op).await;
    s.status_until("early", "the first DAG reconciled", |st| {
        st["observedGeneration"] == 1
    })
    .await;

    s.apply(&dag_with_spec("x", &x_spec(true)));
    s.status_until("x", "X Ready", |st| {
        ready(st).is_some_and(|(status, _)| status == "True")
    })
    .await;
    s.cli(&[
        "trigger",
        "x",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-07-01T00:00:00Z",
    ]);
    let run = s
        .runs_until("x", "X's run running", |r| {
            r.iter().any(|r| r.state == RunState::Running)
        })
        .await
        .remove(0);
    let pod = s.pod_of_run(&run).await;

    // a broken cron pushed: X goes invalid
    s.apply(&dag_with_spec("x", &x_spec(false)));
    s.status_until("x", "X Ready=False InvalidSchedule", |st| {
        ready(st).is_some_and(|(status, reason)| status == "False" && reason == "InvalidSchedule")
    })
    .await;

    // four resync intervals: before the fix the first resync cancelled the run
    throughout(
        Duration::from_secs(8),
        "the invalid DAG's run running, its Pod there",
        || async {
            let runs = s.runs("x").await;
            let state = runs.iter().find(|r| r.id == run.id).map(|r| r.state);
            if state != Some(RunState::Running) {
                return Err(format!("the run is {state:?}:\n{}", op.log_tail()));
            }
            if s.pod_gone("x", &pod) {
                return Err(format!("its Pod {pod} is gone"));
            }
            let cancelled = s.events("RunCancelled");
            if !cancelled.is_empty() {
                return Err(format!("RunCancelled events: {cancelled:?}"));
            }
            Ok(())
        },
    )
    .await;

    // and it finishes: its task's Pod succeeds, so does the run
    s.pod_outcome(&pod, "succeed");
    let ended = s
        .runs_until("x", "X's run to end", |r| {
            r.iter()
                .any(|r| r.id == run.id && r.state != RunState::Running)
        })
        .await;
    let ended = ended
        .iter()
        .find(|r| r.id == run.id)
        .expect("the run is there");
    assert_eq!(ended.state, RunState::Success, "{ended:?}");
    assert_eq!(s.runs("x").await.len(), 1, "no other run of X");
    assert!(s.events("RunCancelled").is_empty());
}

/// The run-id labels of the namespace's task Pods.
fn pod_runs(s: &Setup, dag: &str) -> Vec<String> {
    s.pods(dag)
        .iter()
        .filter_map(|p| {
            p["metadata"]["labels"]["dagoperator.io/run-id"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Defect 3. A run's Pods are deleted once, by label, when it ends, but its creates may still
/// be in flight: one that landed afterwards left a Pod of the cancelled run running, holding
/// no slot. Here the creates go one at a time (`--pod-create-concurrency 1`) for a run of
/// many parallel tasks, so a cancel while they go on finds many in flight.
#[tokio::test]
async fn pods_whose_creates_were_in_flight_when_their_run_was_cancelled_are_deleted() {
    const TASKS: usize = 150;
    let s = setup("r3-late-create").await;
    let token = s.ns.account("runner", &[READ, ACT]);
    let tasks: String = (0..TASKS)
        .map(|i| format!("  - {{name: t{i:03}, container: {{image: e2e.local/hold}}}}\n"))
        .collect();
    s.apply(&dag_with_spec("wide", &format!("  tasks:\n{tasks}")));
    let op = s.operator(&[
        "--pod-create-concurrency",
        "1",
        "--max-running-tasks",
        "1000",
    ]);
    ready_operator(&op).await;
    s.cli(&[
        "trigger",
        "wide",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-07-02T00:00:00Z",
    ]);
    let run = s
        .runs_until("wide", "the run", |r| !r.is_empty())
        .await
        .remove(0);
    // its first Pod is there: the creates are under way
    s.pod_of_run(&run).await;
    let actions = format!("/api/v1/namespaces/{}/runs/{}/actions", s.ns.name, run.id);
    let (code, answer) = eventually(Duration::from_secs(30), "the API answers", || {
        let (op, path, token) = (&op, actions.clone(), token.clone());
        async move {
            op.api_post(&path, Some(&token), r#"{"action": "cancel"}"#)
                .await
        }
    })
    .await;
    assert_eq!(code, 202, "{answer}");
    let id = run.id.to_string();
    s.runs_until("wide", "the run cancelled", |r| {
        r.iter()
            .any(|r| r.id == run.id && r.state == RunState::Cancelled)
    })
    .await;
    let started = Instant::now();
    eventually(
        Duration::from_secs(60),
        "no Pod of the cancelled run",
        || {
            let left = pod_runs(&s, "wide").iter().filter(|r| **r == id).count();
            async move { (left == 0).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "the cancelled run's Pods were gone {:?} after it was cancelled",
        started.elapsed()
    );
    // and none comes back: every Pod there is of a running run
    throughout(
        Duration::from_secs(3),
        "every Pod of a running run",
        || async {
            let live: HashSet<String> = s
                .runs("wide")
                .await
                .iter()
                .filter(|r| r.state == RunState::Running)
                .map(|r| r.id.to_string())
                .collect();
            let stray: Vec<String> = pod_runs(&s, "wide")
                .into_iter()
                .filter(|r| !live.contains(r))
                .collect();
            if stray.is_empty() {
                Ok(())
            } else {
                Err(format!("{} Pods of ended runs", stray.len()))
            }
        },
    )
    .await;
    let tries = s.tasks(&run).await;
    assert!(
        tries.iter().all(|t| t.state == "cancelled"),
        "every try of the cancelled run ends cancelled"
    );
    let late = std::fs::read_to_string(&op.log)
        .unwrap_or_default()
        .matches("a create landed after its run ended")
        .count();
    let never_started = tries.iter().filter(|t| t.started_at.is_none()).count();
    eprintln!(
        "{never_started} of {TASKS} tries never written running; {late} creates landed after the cancel"
    );
    assert!(
        never_started > 0,
        "the cancel came while creates were in flight (else this test proves nothing)"
    );
}

/// Defect 4. A run whose `dependsOn` wait timed out was written without its trigger value:
/// the value was never recorded, so an undated manual trigger made a new failed run every
/// `dependencyTimeoutSeconds`, for ever.
#[tokio::test]
async fn an_undated_trigger_that_times_out_on_its_upstream_makes_one_failed_run() {
    let s = setup("r3-dep-timeout").await;
    // `up` exists and never runs: no schedule, nobody triggers it
    s.apply(&dag_with_spec(
        "up",
        "  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    s.apply(&dag_with_spec(
        "down",
        "  dependsOn: [{dag: up}]\n  dependencyTimeoutSeconds: 2\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let op = s.operator(&[]);
    ready_operator(&op).await;
    // `dag-operator trigger` without --logical-date: the many-form annotation, no date
    let printed = s.cli(&["trigger", "down", "-n", &s.ns.name]);
    let value = printed
        .split("trigger.dagoperator.io/")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("the trigger's value in {printed:?}"))
        .to_string();
    let failed = s
        .runs_until("down", "the triggered run to fail", |r| {
            r.iter().any(|r| r.state == RunState::Failed)
        })
        .await
        .remove(0);
    assert_eq!(failed.run_type, RunType::Manual, "{failed:?}");
    let tries = s.tasks(&failed).await;
    assert!(
        tries.iter().all(|t| t.state == "upstream_failed"),
        "never started: {tries:?}"
    );
    assert!(!s.events("DependencyTimeout").is_empty());

    // four timeouts long: before the fix each made another failed run
    let one = |runs: &[RunRow]| -> Result<(), String> {
        if runs.len() == 1 {
            Ok(())
        } else {
            Err(format!("{} runs: {runs:?}", runs.len()))
        }
    };
    throughout(
        Duration::from_secs(8),
        "one run for one trigger",
        || async { one(&s.runs("down").await) },
    )
    .await;

    let recorded: Vec<(String, Option<uuid::Uuid>, String)> = sqlx::query_as(
        "SELECT value, run_id, outcome FROM dag_triggers WHERE namespace = $1 AND dag_name = 'down'",
    )
    .bind(&s.ns.name)
    .fetch_all(s.store.pool())
    .await
    .expect("the trigger records");
    assert_eq!(
        recorded,
        vec![(value.clone(), Some(failed.id), "created".to_string())],
        "the value is recorded with its (failed) run"
    );
    // handled: the operator removes the annotation
    eventually(
        Duration::from_secs(30),
        "the handled annotation removed",
        || async {
            let annotations = s.ns.kubectl_ok(
                &[
                    "get",
                    "dag",
                    "down",
                    "-o",
                    "jsonpath={.metadata.annotations}",
                ],
                None,
            );
            (!annotations.contains(&value)).then_some(())
        },
    )
    .await;
    assert!(s.runs("up").await.is_empty(), "up never ran");
}
