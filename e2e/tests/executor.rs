//! Task execution end to end (issue 5): every task try runs as a Pod on the local plane, kwok
//! decides what the Pod does (image `e2e.local/hold` waits for the test's annotation), and the
//! task instances and runs end in PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dag_operator::store::{RunRow, RunState, TaskRow};
use dag_operator_e2e::eventually;
use dag_operator_e2e::scenario::{Setup, dag_with_spec, env_of, setup};

/// Triggers one manual run at `date` and returns it.
async fn trigger(s: &Setup, dag: &str, date: &str) -> RunRow {
    s.cli(&["trigger", dag, "-n", &s.ns.name, "--logical-date", date]);
    let date: DateTime<Utc> = date.parse().expect("date");
    s.runs_until(dag, "the triggered run", |r| {
        r.iter().any(|r| r.logical_date == date)
    })
    .await
    .into_iter()
    .find(|r| r.logical_date == date)
    .expect("run")
}

async fn run_ends(s: &Setup, dag: &str, id: uuid::Uuid) -> RunRow {
    s.runs_until(dag, "the run to end", |r| {
        r.iter().any(|r| r.id == id && r.state != RunState::Running)
    })
    .await
    .into_iter()
    .find(|r| r.id == id)
    .expect("run")
}

fn latest(tasks: &[TaskRow]) -> BTreeMap<String, TaskRow> {
    let mut out: BTreeMap<String, TaskRow> = BTreeMap::new();
    for t in tasks {
        if out
            .get(&t.task_name)
            .is_none_or(|o| o.try_number < t.try_number)
        {
            out.insert(t.task_name.clone(), t.clone());
        }
    }
    out
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_and_succeeds() {
    let s = setup("diamond").await;
    s.apply(&dag_with_spec(
        "diamond",
        "  tasks:\n  - {name: a, container: {image: busybox}}\n  - {name: b, dependsOn: [a], container: {image: busybox}}\n  - {name: c, dependsOn: [a], container: {image: busybox}}\n  - {name: d, dependsOn: [b, c], container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    let run = trigger(&s, "diamond", "2024-05-01T00:00:00Z").await;
    let run = run_ends(&s, "diamond", run.id).await;
    assert_eq!(run.state, RunState::Success);
    let tasks = latest(&s.tasks(&run).await);
    assert!(
        tasks
            .values()
            .all(|t| t.state == "success" && t.try_number == 1),
        "{tasks:?}"
    );
    let started = |n: &str| tasks[n].started_at.expect("started");
    let ended = |n: &str| tasks[n].ended_at.expect("ended");
    assert!(started("b") >= ended("a") && started("c") >= ended("a"));
    assert!(started("d") >= ended("b") && started("d") >= ended("c"));
    // every Pod carries the run's environment
    let pods = s.pods("diamond");
    assert_eq!(pods.len(), 4);
    for pod in &pods {
        let env = env_of(pod);
        let task = pod["metadata"]["labels"]["dagoperator.io/task"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(env["LOGICAL_DATE"], "2024-05-01T00:00:00Z", "{task}");
        assert_eq!(env["DAG_RUN_ID"], run.id.to_string());
        assert_eq!(env["DAG_RUN_TYPE"], "manual");
        assert_eq!(env["TASK_NAME"], task);
        assert_eq!(env["TRY_NUMBER"], "1");
        assert_eq!(env["DAG_NAME"], "diamond");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DAG");
    }
    // the DAG's status lists the run and its success
    let status = s
        .status_until("diamond", "recentRuns", |st| {
            st["lastSuccessfulTime"].is_string() && st["recentRuns"][0]["state"] == "success"
        })
        .await;
    assert_eq!(status["recentRuns"][0]["id"], run.id.to_string());
}

#[tokio::test]
async fn a_task_failing_twice_succeeds_on_try_three_with_backoff() {
    let s = setup("retries").await;
    s.apply(&dag_with_spec(
        "flaky",
        "  tasks:\n  - {name: work, retries: 2, retryDelaySeconds: 1, retryBackoff: Exponential, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    let run = trigger(&s, "flaky", "2024-05-02T00:00:00Z").await;
    for (try_number, outcome) in [(1, "fail"), (2, "fail"), (3, "succeed")] {
        let pod = s.pod_of("flaky", "work", try_number).await;
        s.pod_outcome(&pod, outcome);
    }
    let run = run_ends(&s, "flaky", run.id).await;
    assert_eq!(run.state, RunState::Success);
    let tries = s.tasks(&run).await;
    let states: Vec<(i32, &str)> = tries
        .iter()
        .map(|t| (t.try_number, t.state.as_str()))
        .collect();
    assert_eq!(states, [(1, "failed"), (2, "failed"), (3, "success")]);
    assert_eq!(tries[0].exit_code, Some(1));
    // exponential backoff: at least 1 s before try 2, at least 2 s before try 3
    let gap = |a: &TaskRow, b: &TaskRow| {
        (b.started_at.expect("started") - a.ended_at.expect("ended")).num_milliseconds()
    };
    assert!(gap(&tries[0], &tries[1]) >= 1000, "{tries:?}");
    assert!(gap(&tries[1], &tries[2]) >= 2000, "{tries:?}");
}

#[tokio::test]
async fn a_task_out_of_retries_fails_the_run_and_all_done_still_runs() {
    let s = setup("fail").await;
    s.apply(&dag_with_spec(
        "breaks",
        "  tasks:\n  - {name: work, retries: 1, retryDelaySeconds: 0, container: {image: e2e.local/fail}}\n  - {name: after, dependsOn: [work], container: {image: busybox}}\n  - {name: cleanup, dependsOn: [after], triggerRule: AllDone, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    let run = trigger(&s, "breaks", "2024-05-03T00:00:00Z").await;
    let run = run_ends(&s, "breaks", run.id).await;
    assert_eq!(run.state, RunState::Failed);
    let tasks = latest(&s.tasks(&run).await);
    assert_eq!(tasks["work"].try_number, 2);
    assert_eq!(tasks["work"].state, "failed");
    assert_eq!(tasks["after"].state, "upstream_failed");
    assert_eq!(
        tasks["cleanup"].state, "success",
        "an AllDone task still runs"
    );
}

#[tokio::test]
async fn a_task_over_its_timeout_fails_and_its_pod_is_gone() {
    let s = setup("timeout").await;
    s.apply(&dag_with_spec(
        "slow",
        "  tasks:\n  - {name: work, timeoutSeconds: 2, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    let run = trigger(&s, "slow", "2024-05-04T00:00:00Z").await;
    let pod = s.pod_of("slow", "work", 1).await;
    let run = run_ends(&s, "slow", run.id).await;
    assert_eq!(run.state, RunState::Failed);
    let task = &s.tasks(&run).await[0];
    assert_eq!(task.state, "failed");
    assert!(
        task.message
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"),
        "{task:?}"
    );
    eventually(
        Duration::from_secs(30),
        "the timed-out pod to be deleted",
        || {
            let gone = s.pod_gone("slow", &pod);
            async move { gone.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_held_run_over_its_run_timeout_fails_and_its_pod_is_deleted() {
    let s = setup("run-timeout").await;
    s.apply(&dag_with_spec(
        "held",
        "  runTimeoutSeconds: 3\n  tasks:\n  - {name: work, retries: 2, container: {image: e2e.local/hold}}\n  - {name: after, dependsOn: [work], container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    let run = trigger(&s, "held", "2024-05-05T00:00:00Z").await;
    let pod = s.pod_of("held", "work", 1).await;
    let run = run_ends(&s, "held", run.id).await;
    assert_eq!(run.state, RunState::Failed);
    let tasks = latest(&s.tasks(&run).await);
    assert_eq!(tasks["work"].state, "failed");
    assert_eq!(tasks["work"].try_number, 1, "no retry after a run timeout");
    assert!(
        tasks["work"]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("runTimeoutSeconds"),
        "{tasks:?}"
    );
    assert_eq!(tasks["after"].state, "skipped");
    eventually(Duration::from_secs(30), "the held Pod deleted", || {
        let gone = s.pod_gone("held", &pod);
        async move { gone.then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(30), "a RunTimedOut event", || {
        let events = s.events("RunTimedOut");
        async move { (!events.is_empty()).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn max_active_runs_one_runs_one_after_another() {
    let s = setup("serial").await;
    s.apply(&dag_with_spec(
        "serial",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1\n  tasks:\n  - {name: work, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    let runs = s
        .runs_until("serial", "three finished runs", |r| {
            r.iter().filter(|r| r.state == RunState::Success).count() >= 3
        })
        .await;
    let mut done: Vec<&RunRow> = runs
        .iter()
        .filter(|r| r.state != RunState::Running)
        .collect();
    done.sort_by_key(|r| r.started_at);
    for pair in done.windows(2) {
        assert!(
            pair[1].started_at >= pair[0].ended_at,
            "run {} started before {} ended",
            pair[1].logical_date,
            pair[0].logical_date
        );
    }
}

#[tokio::test]
async fn kill_9_while_tasks_run_ends_every_task_exactly_once() {
    let s = setup("exec-kill").await;
    s.apply(&dag_with_spec(
        "held",
        "  tasks:\n  - {name: a, container: {image: e2e.local/hold}}\n  - {name: b, container: {image: e2e.local/hold}}\n  - {name: c, dependsOn: [a, b], container: {image: busybox}}\n",
    ));
    let mut op = s.operator(&[]);
    let run = trigger(&s, "held", "2024-05-05T00:00:00Z").await;
    let a = s.pod_of("held", "a", 1).await;
    let b = s.pod_of("held", "b", 1).await;
    op.kill9();
    s.pod_outcome(&a, "succeed");
    op.restart();
    s.pod_outcome(&b, "succeed");
    let run = run_ends(&s, "held", run.id).await;
    assert_eq!(run.state, RunState::Success);
    let tries = s.tasks(&run).await;
    assert_eq!(tries.len(), 3, "one try per task: {tries:?}");
    assert!(tries.iter().all(|t| t.state == "success"));
    assert_eq!(s.pods("held").len(), 3, "no Pod started twice");
}

#[tokio::test]
async fn deleting_the_dag_removes_its_pods_and_keeps_its_history() {
    let s = setup("delete").await;
    s.apply(&dag_with_spec(
        "doomed",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 3\n  tasks:\n  - {name: work, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    eventually(Duration::from_secs(60), "pods to run", || {
        let n = s.pods("doomed").len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    s.ns.kubectl_ok(&["delete", "dag", "doomed"], None);
    eventually(
        Duration::from_secs(60),
        "garbage collection of the pods",
        || {
            let n = s.pods("doomed").len();
            async move { (n == 0).then_some(()) }
        },
    )
    .await;
    let before = s.runs("doomed").await.len();
    assert!(before >= 2, "the run history stays");
    // the schedule stopped: three more ticks pass without a new run (waiting is the point)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.runs("doomed").await.len(), before);
}

#[tokio::test]
async fn a_pod_deleted_behind_the_operators_back_fails_its_try() {
    let s = setup("pod-gone").await;
    s.apply(&dag_with_spec(
        "fragile",
        "  tasks:\n  - {name: work, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    let run = trigger(&s, "fragile", "2024-05-06T00:00:00Z").await;
    let pod = s.pod_of("fragile", "work", 1).await;
    s.ns.kubectl_ok(&["delete", "pod", &pod], None);
    let run = run_ends(&s, "fragile", run.id).await;
    assert_eq!(run.state, RunState::Failed);
    let task = &s.tasks(&run).await[0];
    assert_eq!(task.state, "failed");
    assert!(
        task.message
            .as_deref()
            .unwrap_or_default()
            .contains("deleted"),
        "{task:?}"
    );
}

#[tokio::test]
async fn max_running_tasks_limits_the_pods_and_queues_the_rest() {
    let s = setup("max-tasks").await;
    s.apply(&dag_with_spec(
        "wide",
        "  tasks:\n  - {name: low, priorityWeight: 1, container: {image: e2e.local/hold}}\n  - {name: high, priorityWeight: 10, container: {image: e2e.local/hold}}\n  - {name: mid, priorityWeight: 5, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&["--max-running-tasks", "1"]);
    let run = trigger(&s, "wide", "2024-05-07T00:00:00Z").await;
    // the highest priorityWeight goes first; the others wait queued
    for task in ["high", "mid", "low"] {
        let pod = s.pod_of("wide", task, 1).await;
        let tasks = latest(&s.tasks(&run).await);
        let running: Vec<_> = tasks.values().filter(|t| t.state == "running").collect();
        assert_eq!(running.len(), 1, "{tasks:?}");
        assert_eq!(running[0].task_name, task);
        let unfinished = s
            .pods("wide")
            .iter()
            .filter(|p| p["status"]["phase"] != "Succeeded")
            .count();
        assert_eq!(unfinished, 1, "one task Pod at a time");
        s.pod_outcome(&pod, "succeed");
    }
    assert_eq!(run_ends(&s, "wide", run.id).await.state, RunState::Success);
}

#[tokio::test]
async fn replace_cancels_the_active_run_and_deletes_its_pods() {
    let s = setup("replace").await;
    s.apply(&dag_with_spec(
        "newest",
        "  schedule: '*/3 * * * * *'\n  concurrencyPolicy: Replace\n  tasks:\n  - {name: work, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    let runs = s
        .runs_until("newest", "a replaced run", |r| {
            r.iter().any(|r| r.state == RunState::Cancelled)
        })
        .await;
    let cancelled = runs
        .iter()
        .find(|r| r.state == RunState::Cancelled)
        .expect("cancelled run");
    let id = cancelled.id.to_string();
    eventually(
        Duration::from_secs(30),
        "the cancelled run's pods to go",
        || {
            let left = s
                .pods("newest")
                .iter()
                .filter(|p| p["metadata"]["labels"]["dagoperator.io/run-id"] == id.as_str())
                .count();
            async move { (left == 0).then_some(()) }
        },
    )
    .await;
    let tries = s.tasks(cancelled).await;
    assert!(tries.iter().all(|t| t.state == "cancelled"), "{tries:?}");
}
