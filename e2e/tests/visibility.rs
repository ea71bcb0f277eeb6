//! Failures show up in kubectl, in Events and in metrics (issue 15), with the operator binary
//! on the local plane.

use std::time::Duration;

use dag_operator_e2e::eventually;
use dag_operator_e2e::scenario::{Setup, dag_yaml, dag_yaml_with_image, setup};
use serde_json::Value;

fn condition(status: &Value, type_: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn has(status: &Value, type_: &str, value: &str, reason: &str) -> bool {
    condition(status, type_).is_some_and(|c| c["status"] == value && c["reason"] == reason)
}

/// The value of a series of the operator's `/metrics` whose line starts with `prefix`.
async fn metric(op: &dag_operator_e2e::operator::Operator, prefix: &str) -> Option<f64> {
    let (_, body) = op.get("/metrics").await?;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn trigger(s: &Setup, dag: &str, date: &str) {
    s.cli(&["trigger", dag, "-n", &s.ns.name, "--logical-date", date]);
}

#[tokio::test]
async fn a_failing_dag_says_so_and_a_fixed_one_is_ready_again() {
    let s = setup("failing").await;
    // no schedule: one task, runs by trigger
    let with_image = |image: &str| dag_yaml_with_image("flaky", "  maxActiveRuns: 5", image);
    s.apply(&with_image("e2e.local/fail"));
    let op = s.operator(&[]);
    trigger(&s, "flaky", "2024-05-01T00:00:00Z").await;
    let failed = eventually(Duration::from_secs(60), "a RunFailed event", || {
        let found = s.events("RunFailed");
        async move { (!found.is_empty()).then_some(found) }
    })
    .await;
    let note = failed[0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(failed[0]["type"], "Warning");
    assert!(
        note.contains("task \"a\" try 1 failed with exit code 1"),
        "{note}"
    );
    let st = s
        .status_until("flaky", "Ready=False RunsFailing", |st| {
            has(st, "Ready", "False", "RunsFailing")
        })
        .await;
    assert!(
        has(&st, "Stalled", "False", "Schedulable"),
        "failing runs are not Stalled: {st}"
    );
    let ns = s.ns.name.clone();
    let last_failure =
        format!("dagop_dag_last_failure_timestamp_seconds{{namespace=\"{ns}\",dag=\"flaky\"}}");
    let when = eventually(Duration::from_secs(30), "the last-failure metric", || {
        let op = &op;
        let last_failure = last_failure.clone();
        async move { metric(op, &last_failure).await }
    })
    .await;
    assert!(when > 1.7e9, "seconds since the epoch: {when}");
    assert_eq!(
        metric(
            &op,
            &format!(
                "dagop_runs_finished_total{{namespace=\"{ns}\",dag=\"flaky\",state=\"failed\"}}"
            )
        )
        .await,
        Some(1.0)
    );

    // fixed: the next run succeeds and the DAG is Ready again
    s.apply(&with_image("busybox"));
    trigger(&s, "flaky", "2024-05-02T00:00:00Z").await;
    eventually(Duration::from_secs(60), "a RunSucceeded event", || {
        let found = s.events("RunSucceeded");
        async move { (!found.is_empty()).then_some(()) }
    })
    .await;
    s.status_until("flaky", "Ready=True again", |st| {
        condition(st, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;

    // restarted, the operator reads both ends back from PostgreSQL: the gauges are not empty
    // until a run ends in the new process (else DagNoRecentSuccess could not see the DAG)
    let last_success =
        format!("dagop_dag_last_success_timestamp_seconds{{namespace=\"{ns}\",dag=\"flaky\"}}");
    let succeeded = eventually(Duration::from_secs(30), "the last-success metric", || {
        let op = &op;
        let last_success = last_success.clone();
        async move { metric(op, &last_success).await }
    })
    .await;
    drop(op);
    let op = s.operator(&[]);
    let seeded = eventually(Duration::from_secs(60), "both ends seeded", || {
        let op = &op;
        let (last_success, last_failure) = (last_success.clone(), last_failure.clone());
        async move {
            Some((
                metric(op, &last_success).await?,
                metric(op, &last_failure).await?,
            ))
        }
    })
    .await;
    // PostgreSQL keeps microseconds, the gauge milliseconds
    assert!(
        (seeded.0 - succeeded).abs() < 0.002,
        "{seeded:?} vs {succeeded}"
    );
    assert!((seeded.1 - when).abs() < 0.002, "{seeded:?} vs {when}");
}

#[tokio::test]
async fn an_invalid_spec_is_stalled_for_its_generation() {
    let s = setup("stalled").await;
    s.apply(&dag_yaml("typo", "  schedule: '61 * * * *'"));
    let _op = s.operator(&[]);
    let st = s
        .status_until("typo", "Stalled=True", |st| {
            has(st, "Stalled", "True", "InvalidSchedule")
        })
        .await;
    let obj: Value =
        serde_json::from_str(&s.ns.kubectl_ok(&["get", "dag", "typo", "-o", "json"], None))
            .expect("json");
    let generation = obj["metadata"]["generation"].clone();
    assert_eq!(st["observedGeneration"], generation, "{st}");
    assert_eq!(
        condition(&st, "Stalled").map(|c| c["observedGeneration"].clone()),
        Some(generation)
    );
    assert!(has(&st, "Reconciling", "False", "Reconciled"), "{st}");
    // fixed: not Stalled any more, for the new generation
    s.apply(&dag_yaml("typo", "  schedule: '1 * * * *'"));
    s.status_until("typo", "Stalled=False", |st| {
        has(st, "Stalled", "False", "Schedulable") && st["observedGeneration"] == 2
    })
    .await;
}

/// One Event per DAG and reason per 10 s (docs/SEMANTICS.md): an every-second DAG running a
/// minute makes at most a dozen or so Event objects, not sixty.
#[tokio::test]
async fn an_every_second_dag_makes_a_bounded_number_of_events() {
    let s = setup("event-flood").await;
    s.apply(&dag_yaml(
        "tick",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 100",
    ));
    let _op = s.operator(&[]);
    let runs = s
        .runs_until("tick", "a minute of runs", |r| {
            r.iter()
                .filter(|r| r.state == dag_operator::store::RunState::Success)
                .count()
                >= 60
        })
        .await;
    assert!(runs.len() >= 60);
    let out = s.ns.kubectl_ok(&["get", "events", "-o", "json"], None);
    let list: Value = serde_json::from_str(&out).expect("json");
    let ours: Vec<&Value> = list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["involvedObject"]["name"] == "tick")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !ours.is_empty() && ours.len() <= 16,
        "{} Event objects for 60+ runs: {:?}",
        ours.len(),
        ours.iter().map(|e| e["reason"].clone()).collect::<Vec<_>>()
    );
}
