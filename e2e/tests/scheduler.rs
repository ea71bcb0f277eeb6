//! The scheduler end to end (issue 4): the operator binary on the local plane, a database of
//! its own per test, DAGs applied with kubectl, runs read back from PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dag_operator::store::{RunRow, RunType};
use dag_operator_e2e::assert_one_run_per_tick;
use dag_operator_e2e::scenario::{Setup, dag_yaml, dag_yaml_with_image, setup};
use serde_json::Value;

/// Asserts the logical dates are consecutive seconds: every due tick exactly once.
fn assert_every_second(runs: &[RunRow]) {
    assert_one_run_per_tick(runs, 1);
}

fn ready_condition(status: &Value) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == "Ready").then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

#[tokio::test]
async fn a_once_a_second_dag_gets_one_run_per_second() {
    let s = setup("every-second").await;
    s.apply(&dag_yaml(
        "tick",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 10000",
    ));
    let op = s.operator(&[]);
    let runs = s.runs_until("tick", "6 runs", |r| r.len() >= 6).await;
    assert_every_second(&runs);
    assert!(runs.iter().all(|r| r.run_type == RunType::Scheduled));
    // the status shows the last and next schedule times, one second apart
    let status = s
        .status_until("tick", "schedule times in status", |st| {
            st["lastScheduleTime"].is_string() && st["nextScheduleTime"].is_string()
        })
        .await;
    let last: DateTime<Utc> = status["lastScheduleTime"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .expect("time");
    let next: DateTime<Utc> = status["nextScheduleTime"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .expect("time");
    assert!(next > last, "{status}");
    assert!((next - last).num_seconds() <= 2, "{status}");
    let (ready, reason, _) = ready_condition(&status).expect("Ready condition");
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Scheduling"));
    let metrics = op.get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("dagop_runs_created_total{type=\"scheduled\"}") && !l.ends_with(" 0")
        ),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("runs_created"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn kill_9_three_times_leaves_exactly_one_run_per_due_tick() {
    let s = setup("kill9").await;
    s.apply(&dag_yaml(
        "crashy",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 10000\n  maxCatchupRuns: 1000",
    ));
    let mut op = s.operator(&[]);
    for round in 1..=3 {
        let before = s.runs("crashy").await.len();
        s.runs_until("crashy", "the operator to schedule", |r| {
            r.len() >= before + 2
        })
        .await;
        op.kill9();
        // down for a moment: the ticks of this gap must be caught up after the restart
        tokio::time::sleep(Duration::from_millis(1500)).await;
        op.restart();
        assert!(op.alive(), "restart {round}");
    }
    let killed_at = Utc::now();
    let runs = s
        .runs_until("crashy", "runs past the last restart", |r| {
            r.last()
                .is_some_and(|last| last.logical_date > killed_at + chrono::Duration::seconds(1))
        })
        .await;
    drop(op);
    assert_every_second(&runs);
}

#[tokio::test]
async fn max_active_runs_two_runs_two_and_queues_the_rest() {
    let s = setup("max-active").await;
    s.apply(&dag_yaml_with_image(
        "busy",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 2",
        "e2e.local/hold",
    ));
    let _op = s.operator(&[]);
    let status = s
        .status_until("busy", "queued runs in status", |st| {
            st["queuedRuns"].as_i64().unwrap_or(0) >= 3
        })
        .await;
    assert_eq!(status["activeRuns"], 2, "{status}");
    let runs = s.runs("busy").await;
    assert_eq!(runs.len(), 2, "exactly two runs admitted");
    assert_eq!(
        (runs[1].logical_date - runs[0].logical_date).num_seconds(),
        1,
        "the two oldest ticks"
    );
}

#[tokio::test]
async fn a_trigger_annotation_creates_one_manual_run_ahead_of_queued_ones() {
    let s = setup("trigger").await;
    s.apply(&dag_yaml_with_image(
        "manual",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1\n  params: {a: 1}",
        "e2e.local/hold",
    ));
    // this test ends runs by hand in PostgreSQL (not through the executor): the engine's
    // resync of running runs notices that
    let _op = s.operator(&["--resync-interval", "1s"]);
    s.status_until("manual", "scheduled runs queued", |st| {
        st["queuedRuns"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    let printed = s.cli(&[
        "trigger",
        "manual",
        "-n",
        &s.ns.name,
        "--params",
        r#"{"b": 2}"#,
    ]);
    // the CLI adds one trigger.dagoperator.io/<id> annotation and says which
    let key = printed
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the annotation in the CLI's output")
        .to_string();
    let value = key
        .strip_prefix("trigger.dagoperator.io/")
        .expect("a trigger annotation")
        .to_string();
    assert!(!value.is_empty());
    // free the slot: the manual run goes before the queued scheduled ones; the trigger is
    // handled when its run is recorded (not before: a crash in between would lose it)
    end_running_runs(&s).await;
    let runs = s
        .runs_until("manual", "a second run", |r| r.len() >= 2)
        .await;
    s.status_until("manual", "the trigger handled", |st| {
        st["lastHandledTrigger"] == value.as_str()
    })
    .await;
    let newest = runs.iter().max_by_key(|r| r.created_at).expect("runs");
    assert_eq!(newest.run_type, RunType::Manual, "{runs:?}");
    assert_eq!(newest.params, serde_json::json!({"a": 1, "b": 2}));
    // the same value again creates nothing
    s.ns.kubectl_ok(
        &[
            "annotate",
            "--overwrite",
            "dag",
            "manual",
            &format!("{key}="),
        ],
        None,
    );
    end_running_runs(&s).await;
    s.runs_until("manual", "a third run", |r| r.len() >= 3)
        .await;
    end_running_runs(&s).await;
    let runs = s
        .runs_until("manual", "a fourth run", |r| r.len() >= 4)
        .await;
    assert_eq!(
        runs.iter()
            .filter(|r| r.run_type == RunType::Manual)
            .count(),
        1
    );
}

/// Marks every running run of the test's database `success`, as the executor will.
async fn end_running_runs(s: &Setup) {
    sqlx::query("UPDATE dag_runs SET state = 'success', ended_at = now() WHERE state = 'running'")
        .execute(s.store.pool())
        .await
        .expect("update runs");
}

#[tokio::test]
async fn invalid_dags_are_not_ready_and_a_valid_one_keeps_running() {
    let s = setup("invalid").await;
    s.apply(&dag_yaml("bad-cron", "  schedule: '61 * * * *'"));
    s.apply(&dag_yaml(
        "bad-zone",
        "  schedule: '@hourly'\n  timezone: Mars/Olympus_Mons",
    ));
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {name: cycle}\nspec:\n  schedule: '* * * * * *'\n  tasks:\n  - {name: a, dependsOn: [b], container: {image: busybox}}\n  - {name: b, dependsOn: [a], container: {image: busybox}}\n",
    );
    s.apply(&dag_yaml(
        "good",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1000",
    ));
    let _op = s.operator(&[]);
    for (dag, reason, token) in [
        ("bad-cron", "InvalidSchedule", "\"61\""),
        ("bad-zone", "InvalidTimezone", "Mars/Olympus_Mons"),
        ("cycle", "InvalidGraph", "a -> b -> a"),
    ] {
        let status = s
            .status_until(dag, &format!("{dag} Ready=False"), |st| {
                ready_condition(st).is_some_and(|(ready, _, _)| ready == "False")
            })
            .await;
        let (_, got_reason, message) = ready_condition(&status).expect("condition");
        assert_eq!(got_reason, reason, "{dag}: {status}");
        assert!(
            message.contains(token) || (dag == "cycle" && message.contains("b -> a -> b")),
            "{dag}: {message}"
        );
    }
    s.runs_until("good", "the valid DAG to keep running", |r| r.len() >= 3)
        .await;
    for dag in ["bad-cron", "bad-zone", "cycle"] {
        assert!(s.runs(dag).await.is_empty(), "{dag} has no runs");
    }
    // the invalid spec is reported as a Warning event with the reason
    let events = s.ns.kubectl_ok(&["get", "events", "-o", "json"], None);
    assert!(events.contains("InvalidSchedule"), "{events}");
}

#[tokio::test]
async fn a_dag_failing_three_times_in_a_row_suspends_itself_until_its_spec_changes() {
    let s = setup("auto-suspend").await;
    s.apply(&dag_yaml_with_image(
        "failing",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1\n  catchup: false\n  maxConsecutiveFailures: 3",
        "e2e.local/fail",
    ));
    let _op = s.operator(&[]);
    let status = s
        .status_until("failing", "Ready=False AutoSuspended", |st| {
            ready_condition(st)
                .is_some_and(|(status, reason, _)| status == "False" && reason == "AutoSuspended")
        })
        .await;
    assert_eq!(status["autoSuspension"]["failures"], 3, "{status}");
    assert_eq!(status["autoSuspension"]["generation"], 1, "{status}");
    let stalled = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Stalled").cloned())
        .unwrap_or_default();
    assert_eq!(stalled["status"], "True", "{status}");
    assert!(!s.events("AutoSuspended").is_empty());
    // no scheduled run after the suspension: the count stays put
    let runs = s.runs("failing").await.len();
    assert_eq!(runs, 3, "one run at a time: three failures, then no more");
    tokio::time::sleep(Duration::from_secs(3)).await; // a span in which ticks would come due
    assert_eq!(s.runs("failing").await.len(), runs);
    // the user changes the spec: it schedules again, counting failures afresh
    s.apply(&dag_yaml_with_image(
        "failing",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1\n  catchup: false\n  maxConsecutiveFailures: 5",
        "e2e.local/fail",
    ));
    s.runs_until("failing", "runs again after the spec changed", |r| {
        r.len() > runs
    })
    .await;
}

#[tokio::test]
async fn schedule_and_schedules_together_are_refused_at_apply() {
    let s = setup("schedules-cel").await;
    let out = s.ns.kubectl(
        &["apply", "-f", "-"],
        Some(&dag_yaml(
            "both",
            "  schedule: '0 9 * * *'\n  schedules: ['0 17 * * *']",
        )),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set schedule or schedules, not both"), "{err}");
    // either alone is fine, with exclusions
    s.apply(&dag_yaml(
        "list",
        "  schedules: ['0 9 * * *', '0 17 * * *']\n  exclude: ['2025-12-25', '* * 31 12 *']",
    ));
}

#[tokio::test]
async fn a_triggered_by_chain_runs_the_downstream_once_per_upstream_success() {
    let s = setup("chain").await;
    s.apply(&dag_yaml(
        "up",
        "  schedule: '*/2 * * * * *'\n  maxActiveRuns: 10",
    ));
    s.apply(&dag_yaml("down", "  triggeredBy: [{dag: up}]"));
    // a DAG triggered by itself is a cycle: refused with a condition
    s.apply(&dag_yaml("selfish", "  triggeredBy: [{dag: selfish}]"));
    let _op = s.operator(&[]);
    let downs = s
        .runs_until("down", "three downstream runs", |r| r.len() >= 3)
        .await;
    let ups = s.runs("up").await;
    for d in &downs {
        let up = ups
            .iter()
            .find(|u| u.logical_date == d.logical_date)
            .unwrap_or_else(|| panic!("no upstream run for {}", d.logical_date));
        assert_eq!(up.state, dag_operator::store::RunState::Success);
        assert_eq!(
            (d.data_interval_start, d.data_interval_end),
            (up.data_interval_start, up.data_interval_end),
            "the downstream run covers its upstream run's data interval"
        );
    }
    let status = s
        .status_until("selfish", "Ready=False DependencyCycle", |st| {
            ready_condition(st).is_some_and(|(_, reason, _)| reason == "DependencyCycle")
        })
        .await;
    assert!(
        ready_condition(&status).is_some_and(|(_, _, m)| m.contains("selfish <- selfish")),
        "{status}"
    );
}
