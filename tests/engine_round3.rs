//! Lifecycle, round 3 (issue 27): the ways work was still lost, doubled or held in the engine
//! — each test is the regression test of a defect the issue names, the real engine on a real
//! PostgreSQL with the clock in the test's hands.

mod common;
#[path = "support/faulty.rs"]
mod faulty;
#[path = "support/engine.rs"]
mod support;

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use dag_operator::engine::{Command, EngineConfig};
use dag_operator::store::{DagKey, RunState, RunType};
use support::{Harness, info, spec, utc};

fn t0() -> DateTime<Utc> {
    utc("2025-01-01T00:00:00Z")
}

/// Defect 1: the set of existing DAGs comes from the last listing, which can be hours old; a
/// DAG created since and then made invalid left the engine's map, so a resync took its
/// running run for a deleted DAG's and cancelled it. SPEC §11: the run finishes.
#[tokio::test]
async fn a_running_run_of_a_dag_created_after_the_listing_survives_it_going_invalid() {
    let store = common::fresh_store("r3_invalid_listed").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    // the watch listed the DAGs at start: none yet
    h.engine.apply(Command::Listed(HashMap::new()), t0());
    let x = spec("schedule: '* * * * *'");
    h.upsert(info("x", t0(), x), t0());
    h.tick(t0() + Duration::minutes(1)).await;
    assert!(!h.runs("x").await.is_empty(), "the first ticks' runs");
    // a broken cron: the DAG goes invalid; the next resync looks at the running runs
    h.engine
        .apply(Command::Invalid(DagKey::new("ns", "x")), t0());
    h.engine.resync_active().await.expect("resync");
    h.tick(t0() + Duration::minutes(2)).await;
    for run in h.runs("x").await {
        assert_eq!(
            run.state,
            RunState::Running,
            "the run of an invalid DAG goes on; it was cancelled as if the DAG were deleted"
        );
    }
    assert!(h.events("RunCancelled").is_empty());
}

/// A DAG that waits for `up` (which never succeeds) at most a minute.
fn waits_for_up() -> std::sync::Arc<dag_operator::api::DagSpec> {
    spec("schedule: '0 0 1 1 *'\ndependsOn: [{dag: up}]\ndependencyTimeoutSeconds: 60")
}

async fn triggers_of(h: &Harness, dag: &str) -> Vec<(String, Option<uuid::Uuid>, String)> {
    sqlx::query_as(
        "SELECT value, run_id, outcome FROM dag_triggers WHERE dag_name = $1 ORDER BY value",
    )
    .bind(dag)
    .fetch_all(h.store.pool())
    .await
    .expect("triggers")
}

/// Defect 4: a run whose `dependsOn` wait timed out was written without its trigger value, so
/// the value was never recorded and was queued again: an undated trigger made a new failed
/// run every `dependencyTimeoutSeconds`, forever.
#[tokio::test]
async fn a_manual_run_that_timed_out_on_its_upstream_fails_once_and_records_its_trigger() {
    let store = common::fresh_store("r3_dep_manual").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    h.upsert(info("up", t0(), spec("schedule: '0 0 1 1 *'")), t0());
    let mut down = info("down", t0(), waits_for_up());
    down.triggers = vec![dag_operator::engine::TriggerRequest {
        value: "t1".into(),
        params: None,
        logical_date: None,
        malformed: None,
        removable: true,
    }];
    h.upsert(down, t0());
    let mut now = t0();
    for _ in 0..10 {
        now += Duration::seconds(45);
        h.tick(now).await;
    }
    let runs: Vec<_> = h
        .runs("down")
        .await
        .into_iter()
        .filter(|r| r.run_type == RunType::Manual)
        .collect();
    assert_eq!(runs.len(), 1, "one run for one trigger value: {runs:?}");
    assert_eq!(runs[0].state, RunState::Failed);
    let triggers = triggers_of(&h, "down").await;
    assert_eq!(
        triggers,
        vec![("t1".to_string(), Some(runs[0].id), "created".to_string())],
        "the value is recorded with its (failed) run"
    );
    // the scheduled tick at t0 timed out too: one event each
    assert_eq!(h.events("DependencyTimeout").len(), 2);
}

/// Defect 4, for a Backfill: a date whose run timed out on its upstream got no
/// `backfill_dates` row, so the Backfill never finished (and after a restart with `reprocess:
/// None` the date was recorded skipped and the Backfill reported Succeeded).
#[tokio::test]
async fn a_backfill_date_that_timed_out_on_its_upstream_is_done_and_the_backfill_fails() {
    let store = common::fresh_store("r3_dep_backfill").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    let hourly = "schedule: '0 * * * *'\ndependsOn: [{dag: up}]\ndependencyTimeoutSeconds: 60";
    h.upsert(info("up", t0(), spec("schedule: '0 0 1 1 *'")), t0());
    h.upsert(info("down", t0(), spec(hourly)), t0());
    let start = utc("2024-06-01T00:00:00Z");
    h.backfill(
        support::backfill("bf", "down", start, start + Duration::hours(2), ""),
        t0(),
    );
    let mut now = t0();
    for _ in 0..8 {
        now += Duration::seconds(45);
        h.tick(now).await;
    }
    let runs: Vec<_> = h
        .runs("down")
        .await
        .into_iter()
        .filter(|r| r.backfill_name.is_some())
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.state == RunState::Failed));
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill_dates WHERE backfill = 'bf'")
        .fetch_one(h.store.pool())
        .await
        .expect("dates");
    assert_eq!(done, 2, "each date has its outcome");
    let progress = h.backfill_progress("bf").expect("reported");
    assert_eq!(
        progress.phase,
        dag_operator::engine::BackfillPhase::Failed,
        "{progress:?}"
    );
    // a restart does not walk it again
    let cfg = EngineConfig::default();
    let mut h = h.restart(cfg).await;
    h.upsert(info("up", t0(), spec("schedule: '0 0 1 1 *'")), now);
    h.upsert(info("down", t0(), spec(hourly)), now);
    h.backfill(
        support::backfill("bf", "down", start, start + Duration::hours(2), ""),
        now,
    );
    h.tick(now + Duration::seconds(1)).await;
    let progress = h.backfill_progress("bf").expect("reported");
    assert_eq!(progress.phase, dag_operator::engine::BackfillPhase::Failed);
    assert_eq!(progress.skipped, 0, "{progress:?}");
}
