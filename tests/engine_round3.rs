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
use dag_operator::store::RunStore;
use dag_operator::store::{DagKey, RunState, RunType};
use faulty::Faulty;
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

/// An engine on a store that fails on demand.
async fn faulty_harness(name: &str) -> (Harness<Faulty>, Faulty) {
    let db = common::fresh_store(name).await;
    let store = Faulty::new(db.clone());
    let h = Harness::on(db, store.clone(), EngineConfig::default()).await;
    (h, store)
}

/// Defect 7 (rule: nothing leaves memory until the write that records it has succeeded): a
/// Backfill's dates were taken off its plan before the queries that can fail; a failed pass
/// lost them, and the Backfill finished without them.
#[tokio::test]
async fn backfill_dates_taken_off_the_plan_survive_a_failed_query() {
    let (mut h, store) = faulty_harness("r3_walk_error").await;
    h.upsert(info("d", t0(), spec("schedule: '0 * * * *'")), t0());
    let start = utc("2024-06-01T00:00:00Z");
    h.backfill(
        support::backfill(
            "bf",
            "d",
            start,
            start + Duration::hours(3),
            "concurrency: 3",
        ),
        t0(),
    );
    store.fail_on(&["backfill_done"]);
    assert!(h.engine.tick(t0()).await.is_err());
    store.fail_on(&[]);
    let mut now = t0();
    for _ in 0..6 {
        now += Duration::seconds(10);
        h.tick(now).await;
        h.finish_all(RunState::Success, now).await;
    }
    let dates: Vec<_> = h
        .runs("d")
        .await
        .into_iter()
        .filter(|r| r.backfill_name.is_some())
        .map(|r| r.logical_date)
        .collect();
    assert_eq!(
        dates,
        support::every(start, Duration::hours(1), 3),
        "every date of the plan runs"
    );
}

/// Defect 7: Replace took the newest tick out of the queue before cancelling the running run;
/// when the cancel failed, the tick was never queued again.
#[tokio::test]
async fn replace_keeps_the_newest_tick_when_cancelling_fails() {
    let (mut h, store) = faulty_harness("r3_replace_error").await;
    let created = t0() - Duration::seconds(30);
    h.upsert(
        info(
            "r",
            created,
            spec("schedule: '* * * * *'\nconcurrencyPolicy: Replace"),
        ),
        t0(),
    );
    h.tick(t0()).await;
    assert_eq!(h.runs("r").await.len(), 1);
    store.fail_on(&["cancel_runs"]);
    let next = t0() + Duration::minutes(1);
    assert!(h.engine.tick(next).await.is_err());
    store.fail_on(&[]);
    h.tick(next + Duration::seconds(1)).await;
    let runs = h.runs("r").await;
    assert_eq!(
        runs.iter().map(|r| r.logical_date).collect::<Vec<_>>(),
        vec![t0(), next],
        "the newest tick replaces the running run"
    );
    assert_eq!(runs[0].state, RunState::Cancelled);
    assert_eq!(runs[1].state, RunState::Running);
}

/// Defect 7: a Backfill's `dirty` mark was cleared before its record was saved; when the save
/// failed, its completion was never reported nor recorded.
#[tokio::test]
async fn a_backfill_whose_completion_failed_to_save_completes_on_the_next_pass() {
    let (mut h, store) = faulty_harness("r3_save_error").await;
    h.upsert(info("d", t0(), spec("schedule: '0 * * * *'")), t0());
    let start = utc("2024-06-01T00:00:00Z");
    h.backfill(
        support::backfill("bf", "d", start, start + Duration::hours(1), ""),
        t0(),
    );
    h.tick(t0()).await;
    h.finish_all(RunState::Success, t0()).await;
    store.fail_on(&["save_backfill"]);
    let now = t0() + Duration::seconds(10);
    assert!(h.engine.tick(now).await.is_err());
    store.fail_on(&[]);
    h.tick(now + Duration::seconds(10)).await;
    let record = h
        .store
        .backfill_record(&dag_operator::store::BackfillRef {
            namespace: "ns".into(),
            name: "bf".into(),
            uid: "uid-bf-bf".into(),
        })
        .await
        .expect("record")
        .expect("saved");
    assert!(record.completed_at.is_some(), "{record:?}");
    assert_eq!(h.events("BackfillSucceeded").len(), 1);
}

fn buffer_one() -> std::sync::Arc<dag_operator::api::DagSpec> {
    spec("schedule: '* * * * *'\nconcurrencyPolicy: BufferOne")
}

/// A BufferOne DAG at 00:02: its 00:00 run runs, 00:01 waits, 00:02 was skipped.
async fn one_running_one_waiting(h: &mut Harness) {
    h.upsert(info("b", t0() - Duration::seconds(30), buffer_one()), t0());
    h.tick(t0()).await;
    h.tick(t0() + Duration::minutes(1)).await;
    h.tick(t0() + Duration::minutes(2)).await;
    assert_eq!(h.runs("b").await.len(), 1, "00:00 runs, 00:01 waits");
    assert_eq!(h.events("RunSkipped").len(), 1, "00:02 skipped");
}

/// Defect 5: BufferOne's skip of a newer tick moved the schedule position past the waiting
/// one; a restart planned from there and the waiting tick was lost, with no event.
#[tokio::test]
async fn buffer_one_keeps_its_waiting_tick_across_a_restart() {
    let store = common::fresh_store("r3_buffer_restart").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    one_running_one_waiting(&mut h).await;
    let now = t0() + Duration::minutes(2) + Duration::seconds(10);
    let mut h = h.restart(EngineConfig::default()).await;
    h.upsert(info("b", t0() - Duration::seconds(30), buffer_one()), now);
    h.tick(now).await;
    h.finish_all(RunState::Success, now).await;
    h.tick(now + Duration::seconds(1)).await;
    assert_eq!(
        h.dates("b").await,
        vec![t0(), t0() + Duration::minutes(1)],
        "the waiting 00:01 runs once 00:00 ended"
    );
}

/// Defect 5, suspended and resumed: the waiting tick runs after the resume.
#[tokio::test]
async fn buffer_one_keeps_its_waiting_tick_across_a_suspension() {
    let store = common::fresh_store("r3_buffer_suspend").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    one_running_one_waiting(&mut h).await;
    let now = t0() + Duration::minutes(2) + Duration::seconds(10);
    let suspended = spec("schedule: '* * * * *'\nconcurrencyPolicy: BufferOne\nsuspend: true");
    h.upsert(info("b", t0() - Duration::seconds(30), suspended), now);
    h.tick(now).await;
    h.finish_all(RunState::Success, now).await;
    h.upsert(info("b", t0() - Duration::seconds(30), buffer_one()), now);
    h.tick(now + Duration::seconds(1)).await;
    assert_eq!(
        h.dates("b").await,
        vec![t0(), t0() + Duration::minutes(1)],
        "the waiting 00:01 runs after the resume"
    );
}

/// Ends the running runs and passes until nothing runs (at most `rounds` passes).
async fn run_out(h: &mut Harness, mut now: DateTime<Utc>, rounds: usize) -> DateTime<Utc> {
    for _ in 0..rounds {
        now += Duration::seconds(10);
        h.tick(now).await;
        h.finish_all(RunState::Success, now).await;
    }
    now
}

/// Defect 6: a run deleted by `--keep-runs-per-dag` (oldest logical dates first: exactly a
/// Backfill's) was counted as cancelled, and cancelled as failed: a Backfill whose every run
/// succeeded ended Failed. A deleted run counts by its recorded outcome.
#[tokio::test]
async fn retention_deleting_a_backfills_runs_leaves_it_succeeded() {
    let store = common::fresh_store("r3_retention_bf").await;
    let mut h = Harness::new(store.clone(), EngineConfig::default()).await;
    h.upsert(info("d", t0(), spec("schedule: '0 * * * *'")), t0());
    let start = utc("2024-06-01T00:00:00Z");
    h.backfill(
        support::backfill("bf", "d", start, start + Duration::hours(3), ""),
        t0(),
    );
    let mut now = t0();
    for _ in 0..2 {
        now += Duration::seconds(10);
        h.tick(now).await;
        h.finish_all(RunState::Success, now).await;
        // retention keeps the newest run of the DAG
        store
            .prune_beyond(&DagKey::new("ns", "d"), 1, 100)
            .await
            .expect("prune");
    }
    run_out(&mut h, now, 4).await;
    let progress = h.backfill_progress("bf").expect("reported");
    assert_eq!(
        progress.phase,
        dag_operator::engine::BackfillPhase::Succeeded,
        "{progress:?}"
    );
    assert_eq!(
        (progress.succeeded, progress.failed),
        (3, 0),
        "{progress:?}"
    );
}

/// Defect 6: a date a Backfill decided to re-run whose run retention deleted before it was
/// admitted was recorded as skipped and never ran; it is created afresh.
#[tokio::test]
async fn a_rerun_of_a_date_whose_run_retention_deleted_runs_afresh() {
    let store = common::fresh_store("r3_retention_rerun").await;
    let mut h = Harness::new(store.clone(), EngineConfig::default()).await;
    h.upsert(info("d", t0(), spec("schedule: '0 * * * *'")), t0());
    let start = utc("2024-06-01T00:00:00Z");
    let end = start + Duration::hours(2);
    h.backfill(support::backfill("first", "d", start, end, ""), t0());
    let now = run_out(&mut h, t0(), 4).await;
    let backfilled = |runs: Vec<dag_operator::store::RunRow>| -> Vec<_> {
        runs.into_iter().filter(|r| r.logical_date < end).collect()
    };
    assert_eq!(backfilled(h.runs("d").await).len(), 2);
    h.backfill(
        support::backfill("again", "d", start, end, "reprocess: All\nconcurrency: 1"),
        now,
    );
    let now = now + Duration::seconds(10);
    h.tick(now).await;
    // the first date re-runs; retention deletes the finished run of the second
    store
        .prune_older(now + Duration::days(365), 100)
        .await
        .expect("prune");
    run_out(&mut h, now, 4).await;
    let runs = backfilled(h.runs("d").await);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs.iter()
            .all(|r| r.backfill_name.as_deref() == Some("again") && r.state == RunState::Success),
        "{runs:?}"
    );
    let progress = h.backfill_progress("again").expect("reported");
    assert_eq!(progress.skipped, 0, "{progress:?}");
    assert_eq!(
        progress.phase,
        dag_operator::engine::BackfillPhase::Succeeded
    );
}

/// Auto-suspension was persisted only by the status writer (which may hold a write for up to
/// 5 s): a crash in that window cost one more run. A DAG with `maxConsecutiveFailures` taken
/// up is checked before its ticks are admitted.
#[tokio::test]
async fn an_auto_suspension_not_written_yet_holds_across_a_restart() {
    let store = common::fresh_store("r3_auto_suspend").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    let flaky = || {
        info(
            "flaky",
            t0(),
            spec("schedule: '* * * * *'\nmaxConsecutiveFailures: 2\ncatchup: false"),
        )
    };
    h.upsert(flaky(), t0());
    for m in 0..2 {
        let now = t0() + Duration::minutes(m);
        h.tick(now).await;
        h.finish_all(RunState::Failed, now + Duration::seconds(5))
            .await;
    }
    // the process dies before the suspension reached the DAG's status
    let mut h = h.restart(EngineConfig::default()).await;
    let now = t0() + Duration::minutes(2);
    h.upsert(flaky(), now);
    h.tick(now).await;
    h.tick(now + Duration::minutes(1)).await;
    assert_eq!(
        h.runs("flaky").await.len(),
        2,
        "no run after the second failure in a row"
    );
    assert_eq!(h.events("AutoSuspended").len(), 1);
}
