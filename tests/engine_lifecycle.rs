//! The edges of a resource's life in the engine (issue 13): Backfills suspended and resumed,
//! DAGs made invalid and fixed, triggers across crashes and replicas, finished Backfills after
//! a restart — the real engine on a real PostgreSQL, the clock in the test's hands. Each test
//! is the regression test of a defect the issue names.

mod common;
#[path = "support/faulty.rs"]
mod faulty;
#[path = "support/engine.rs"]
mod support;

use chrono::{DateTime, Duration, Utc};
use dag_operator::engine::{
    BackfillPhase, Command, EngineConfig, EngineStatus, Output, TriggerRequest,
};
use dag_operator::gate::{Gate, MemoryGate, key as gate_key};
use dag_operator::store::{DagKey, RunState, RunStore, RunType};
use support::{Harness, backfill, info, spec, trigger, utc};

fn t0() -> DateTime<Utc> {
    utc("2025-01-01T00:00:00Z")
}

/// A many-form trigger annotation (`trigger.dagoperator.io/<value>`), no date, no params.
fn pending(value: &str) -> TriggerRequest {
    TriggerRequest {
        value: value.into(),
        params: None,
        logical_date: None,
        malformed: None,
        removable: true,
    }
}

async fn manual_runs(h: &Harness, dag: &str) -> Vec<dag_operator::store::RunRow> {
    h.runs(dag)
        .await
        .into_iter()
        .filter(|r| r.run_type == RunType::Manual)
        .collect()
}

/// The 10-date Backfill of the regression tests below.
struct Ten {
    /// its first date
    start: DateTime<Utc>,
    /// the engine's clock after the first passes
    now: DateTime<Utc>,
    /// the spec of its DAG "daily"
    dag: std::sync::Arc<dag_operator::api::DagSpec>,
}

/// A daily DAG that takes 2 runs at a time, created at 00:30 (its first own tick is
/// tomorrow's), and a Backfill "ten" of 10 dates, 5 at a time: after two passes, 2 of its
/// runs run and 3 dates wait in the queue.
async fn ten_dates_two_running(h: &mut Harness) -> Ten {
    let now = t0() + Duration::hours(1);
    let dag = spec("schedule: '0 0 * * *'\nmaxActiveRuns: 2");
    h.upsert(info("daily", now - Duration::minutes(30), dag.clone()), now);
    let start = utc("2024-01-01T00:00:00Z");
    h.backfill(
        backfill(
            "ten",
            "daily",
            start,
            start + Duration::days(10),
            "concurrency: 5",
        ),
        now,
    );
    h.tick(now).await;
    h.tick(now).await;
    assert_eq!(
        h.runs("daily").await.len(),
        2,
        "the DAG's limit: 2 at a time"
    );
    Ten { start, now, dag }
}

/// Ticks from `from` on, every run succeeding, until the 10-date Backfill "ten" of "daily"
/// (from `start`, one date a day) is done: every date has its run, and it Succeeded 10/10.
async fn every_date_runs(h: &mut Harness, start: DateTime<Utc>, from: DateTime<Utc>) {
    let mut t = from;
    for _ in 0..20 {
        h.tick(t).await;
        h.finish_all(RunState::Success, t).await;
        t += Duration::seconds(1);
    }
    h.tick(t).await;
    // (the DAG's own daily run at its creation is not the Backfill's)
    let dates: Vec<_> = h
        .runs("daily")
        .await
        .iter()
        .filter(|r| r.backfill_name.is_some())
        .map(|r| r.logical_date)
        .collect();
    assert_eq!(
        dates,
        (0..10)
            .map(|d| start + Duration::days(d))
            .collect::<Vec<_>>(),
        "every planned date has its run"
    );
    let progress = h.backfill_progress("ten").expect("a status");
    assert_eq!(progress.phase, BackfillPhase::Succeeded, "{progress:?}");
    assert_eq!(progress.progress(), "10/10");
    assert_eq!(progress.created, 10);
}

// ---- 1. Backfill suspend ---------------------------------------------------------------

#[tokio::test]
async fn a_suspended_and_resumed_backfill_runs_every_date_and_only_then_succeeds() {
    let db = common::fresh_store("lc_bf_suspend").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let Ten { start, now, .. } = ten_dates_two_running(&mut h).await;
    assert_eq!(h.runs("daily").await[0].run_type, RunType::Backfill);
    // suspended while 3 dates wait in the queue, then the running ones end
    let mut suspended = backfill(
        "ten",
        "daily",
        start,
        start + Duration::days(10),
        "concurrency: 5\nsuspend: true",
    );
    h.backfill(suspended.clone(), now);
    h.tick(now).await;
    h.finish_all(RunState::Success, now).await;
    h.tick(now + Duration::seconds(1)).await;
    assert_eq!(
        h.runs("daily").await.len(),
        2,
        "nothing admitted while suspended"
    );
    // resumed: every date runs, and only then does it succeed
    suspended.spec.suspend = false;
    h.backfill(suspended, now);
    every_date_runs(&mut h, start, now + Duration::seconds(2)).await;
}

/// The same when the engine removes the DAG (a spec made invalid, then fixed) while dates of
/// its Backfill wait in the queue: they come back, and the Backfill ends with every date.
#[tokio::test]
async fn backfill_dates_queued_when_the_dag_goes_invalid_run_once_it_is_fixed() {
    let db = common::fresh_store("lc_bf_invalid").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let Ten { start, now, dag } = ten_dates_two_running(&mut h).await;
    // a typo takes the DAG off the engine while 3 dates wait; the running ones end
    h.engine
        .apply(Command::Invalid(DagKey::new("ns", "daily")), now);
    h.tick(now).await;
    h.finish_all(RunState::Success, now).await;
    h.tick(now + Duration::seconds(1)).await;
    // fixed: every date runs
    h.upsert(
        info("daily", now - Duration::minutes(30), dag),
        now + Duration::seconds(2),
    );
    every_date_runs(&mut h, start, now + Duration::seconds(2)).await;
}

// ---- 2. DAG invalid, then fixed ---------------------------------------------------------

#[tokio::test]
async fn a_dag_made_invalid_and_fixed_resumes_from_the_record() {
    let db = common::fresh_store("lc_invalid_fixed").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let dag = spec("schedule: '*/5 * * * *'\nconcurrencyPolicy: Replace");
    h.upsert(info("rep", t0(), dag.clone()), t0());
    h.tick(t0()).await;
    h.tick(t0() + Duration::minutes(5)).await;
    let before = h.runs("rep").await;
    assert_eq!(before.len(), 2);
    assert_eq!(before[0].state, RunState::Cancelled, "replaced by 00:05");
    // a cron typo at 00:06 takes it off the schedule; fixed at 00:08
    h.engine.apply(
        Command::Invalid(DagKey::new("ns", "rep")),
        t0() + Duration::minutes(6),
    );
    h.tick(t0() + Duration::minutes(6)).await;
    h.upsert(info("rep", t0(), dag), t0() + Duration::minutes(8));
    h.tick(t0() + Duration::minutes(8)).await;
    let after = h.runs("rep").await;
    assert_eq!(
        after.len(),
        2,
        "no tick already run is queued again: {after:?}"
    );
    assert_eq!(
        after[1].state,
        RunState::Running,
        "the healthy run is not replaced"
    );
    h.tick(t0() + Duration::minutes(10)).await;
    assert_eq!(
        h.runs("rep").await.len(),
        3,
        "scheduling resumes at the next tick"
    );
}

#[tokio::test]
async fn ticks_skipped_by_forbid_are_not_created_after_the_dag_comes_back() {
    let db = common::fresh_store("lc_forbid_back").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let dag = spec("schedule: '*/5 * * * *'\nconcurrencyPolicy: Forbid");
    h.upsert(info("f", t0(), dag.clone()), t0());
    h.tick(t0()).await;
    // 00:05 and 00:10 are skipped: the 00:00 run is still active
    h.tick(t0() + Duration::minutes(5)).await;
    h.tick(t0() + Duration::minutes(10)).await;
    assert_eq!(h.runs("f").await.len(), 1);
    h.finish_all(RunState::Success, t0() + Duration::minutes(11))
        .await;
    h.engine.apply(
        Command::Invalid(DagKey::new("ns", "f")),
        t0() + Duration::minutes(11),
    );
    h.tick(t0() + Duration::minutes(11)).await;
    h.upsert(info("f", t0(), dag), t0() + Duration::minutes(12));
    h.tick(t0() + Duration::minutes(12)).await;
    assert_eq!(
        h.dates("f").await,
        [t0()],
        "skipped ticks stay skipped: the position is in the record"
    );
}

#[tokio::test]
async fn a_schedule_changed_while_invalid_creates_no_past_tick_of_the_new_one() {
    let db = common::fresh_store("lc_changed_invalid").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    h.upsert(info("c", t0(), spec("schedule: '0 0 * * *'")), t0());
    h.tick(t0()).await;
    h.engine.apply(
        Command::Invalid(DagKey::new("ns", "c")),
        t0() + Duration::hours(1),
    );
    h.tick(t0() + Duration::hours(1)).await;
    // fixed at 10:00:30 with an hourly schedule, after a restart even
    let mut h = h.restart(EngineConfig::default()).await;
    let fixed = t0() + Duration::hours(10) + Duration::seconds(30);
    h.upsert(info("c", t0(), spec("schedule: '0 * * * *'")), fixed);
    h.run_clock(fixed, fixed + Duration::hours(2), Duration::minutes(30))
        .await;
    assert_eq!(
        h.dates("c").await,
        [t0(), t0() + Duration::hours(11), t0() + Duration::hours(12)]
    );
}

// ---- 3. triggers -------------------------------------------------------------------------

#[tokio::test]
async fn a_trigger_queued_behind_a_limit_survives_a_crash() {
    let db = common::fresh_store("lc_trigger_crash").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let dag = spec("maxActiveRuns: 1");
    let mut busy = info("busy", t0(), dag.clone());
    busy.triggers = vec![pending("first")];
    h.upsert(busy.clone(), t0());
    h.tick(t0()).await;
    busy.triggers = vec![pending("first"), pending("second")];
    h.upsert(busy.clone(), t0() + Duration::seconds(1));
    h.tick(t0() + Duration::seconds(1)).await;
    assert_eq!(
        manual_runs(&h, "busy").await.len(),
        1,
        "second waits for the slot"
    );
    // the operator dies with "second" queued: it was not handled, so it runs after a restart
    let mut h = h.restart(EngineConfig::default()).await;
    h.upsert(busy, t0() + Duration::seconds(2));
    h.tick(t0() + Duration::seconds(2)).await;
    h.finish_all(RunState::Success, t0() + Duration::seconds(3))
        .await;
    h.tick(t0() + Duration::seconds(3)).await;
    h.tick(t0() + Duration::seconds(4)).await;
    assert_eq!(
        manual_runs(&h, "busy").await.len(),
        2,
        "each trigger exactly once"
    );
}

#[tokio::test]
async fn a_trigger_without_a_date_yields_one_run_across_restarts() {
    let db = common::fresh_store("lc_trigger_once").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let mut dag = info("once", t0(), spec(""));
    dag.triggers = vec![trigger("manual-20250101", None)];
    h.upsert(dag.clone(), t0());
    h.tick(t0()).await;
    assert_eq!(manual_runs(&h, "once").await.len(), 1);
    // killed before anything else was written; the annotation is still there at restart,
    // and the clock has moved (a value without a date would get a new logical date)
    for k in 1..4 {
        h = h.restart(EngineConfig::default()).await;
        let t = t0() + Duration::minutes(k);
        h.upsert(dag.clone(), t);
        h.tick(t).await;
    }
    assert_eq!(
        manual_runs(&h, "once").await.len(),
        1,
        "one run for one value"
    );
    // the record is what the status shows
    let statuses: Vec<_> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Status(EngineStatus::Dag(_, s)) => s.last_handled_trigger,
            _ => None,
        })
        .collect();
    assert_eq!(statuses.last().map(String::as_str), Some("manual-20250101"));
}

#[tokio::test]
async fn two_replicas_handling_one_trigger_create_one_run() {
    let db = common::fresh_store("lc_trigger_split").await;
    let gate = MemoryGate::new(std::time::Duration::from_secs(30));
    let mut engines = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut e = dag_operator::engine::Engine::with_gate(
            EngineConfig::default(),
            db.clone(),
            gate.clone(),
            tx,
        );
        e.load().await.expect("load");
        engines.push((e, rx));
    }
    let mut dag = info("split", t0(), spec(""));
    dag.triggers = vec![trigger("go", None)];
    // each replica picks its own moment for the value without a date
    for (i, (e, _)) in engines.iter_mut().enumerate() {
        let t = t0() + Duration::seconds(i as i64 * 7);
        e.apply(Command::Upsert(Box::new(dag.clone())), t);
        e.tick(t).await.expect("tick");
    }
    let runs = db
        .list_runs(&dag_operator::store::RunFilter::default())
        .await
        .expect("runs");
    assert_eq!(runs.len(), 1, "split brain, still one run: {runs:?}");
}

#[tokio::test]
async fn several_pending_triggers_each_run_once() {
    let db = common::fresh_store("lc_trigger_many").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let mut dag = info("many", t0(), spec("maxActiveRuns: 10"));
    dag.triggers = (0..5).map(|i| pending(&format!("t{i}"))).collect();
    h.upsert(dag.clone(), t0());
    h.tick(t0()).await;
    let runs = manual_runs(&h, "many").await;
    assert_eq!(
        runs.len(),
        5,
        "five values, five runs (none overwrote another)"
    );
    let dates: std::collections::BTreeSet<_> = runs.iter().map(|r| r.logical_date).collect();
    assert_eq!(dates.len(), 5, "each its own logical date");
    // handled annotations may go
    let handled: Vec<String> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::TriggersHandled(_, v) => Some(v),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(handled.len(), 5);
    h.upsert(dag, t0() + Duration::seconds(1));
    h.tick(t0() + Duration::seconds(1)).await;
    assert_eq!(manual_runs(&h, "many").await.len(), 5);
}

#[tokio::test]
async fn a_trigger_on_a_suspended_dag_is_refused_once_and_recorded() {
    let db = common::fresh_store("lc_trigger_refused").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let mut dag = info("s", t0(), spec("suspend: true"));
    dag.triggers = vec![pending("nope")];
    h.upsert(dag.clone(), t0());
    h.tick(t0()).await;
    assert_eq!(h.events("TriggerRefused").len(), 1);
    let mut h = h.restart(EngineConfig::default()).await;
    // resumed: the refused value stays refused (it was handled)
    let mut resumed = info("s", t0(), spec(""));
    resumed.triggers = dag.triggers.clone();
    h.upsert(resumed, t0() + Duration::minutes(1));
    h.tick(t0() + Duration::minutes(1)).await;
    assert!(manual_runs(&h, "s").await.is_empty());
    assert!(h.events("TriggerRefused").is_empty(), "told once");
}

// ---- 4. finished Backfills after a restart -------------------------------------------------

#[tokio::test]
async fn a_finished_backfill_is_not_planned_again_after_a_restart() {
    let db = common::fresh_store("lc_bf_finished").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    h.upsert(
        info("d", t0(), spec("schedule: '0 0 * * *'\nmaxActiveRuns: 10")),
        t0(),
    );
    let start = utc("2024-01-01T00:00:00Z");
    let end = start + Duration::days(3);
    let all_a = backfill("a", "d", start, end, "concurrency: 3\nreprocess: All");
    let all_b = backfill("b", "d", start, end, "concurrency: 3\nreprocess: All");
    h.backfill(all_a.clone(), t0());
    let mut t = t0();
    for _ in 0..4 {
        h.tick(t).await;
        h.finish_all(RunState::Success, t).await;
        t += Duration::seconds(1);
    }
    h.tick(t).await;
    let a = h.backfill_progress("a").expect("a status");
    assert_eq!(a.phase, BackfillPhase::Succeeded);
    h.backfill(all_b.clone(), t);
    for _ in 0..4 {
        h.tick(t).await;
        h.finish_all(RunState::Success, t).await;
        t += Duration::seconds(1);
    }
    h.tick(t).await;
    assert_eq!(
        h.backfill_progress("b").expect("b").phase,
        BackfillPhase::Succeeded
    );
    let attempts = |runs: Vec<dag_operator::store::RunRow>| -> Vec<i32> {
        runs.iter()
            .filter(|r| r.logical_date < end)
            .map(|r| r.attempt)
            .collect()
    };
    assert_eq!(
        attempts(h.runs("d").await),
        [2, 2, 2],
        "b re-ran a's runs once"
    );
    // restarts: neither runs anything again, timestamps stay, no event is told again
    for _ in 0..2 {
        h = h.restart(EngineConfig::default()).await;
        h.upsert(
            info("d", t0(), spec("schedule: '0 0 * * *'\nmaxActiveRuns: 10")),
            t,
        );
        h.backfill(all_a.clone(), t);
        h.backfill(all_b.clone(), t);
        for _ in 0..3 {
            t += Duration::hours(1);
            h.tick(t).await;
        }
        assert_eq!(
            attempts(h.runs("d").await),
            [2, 2, 2],
            "nothing re-run after a restart"
        );
        let outputs = h.outputs();
        assert!(
            !outputs
                .iter()
                .any(|o| matches!(o, Output::Event(n) if n.subject.kind() == "Backfill")),
            "no event told again: {outputs:?}"
        );
        let completed: Vec<_> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Status(EngineStatus::Backfill(_, p)) => Some((p.phase, p.completed_at)),
                _ => None,
            })
            .collect();
        assert!(!completed.is_empty());
        assert!(
            completed
                .iter()
                .all(|(phase, at)| *phase == BackfillPhase::Succeeded
                    && at.is_some_and(|at| at < t - Duration::hours(3))),
            "{completed:?}"
        );
    }
}

// ---- 5. smaller ---------------------------------------------------------------------------

#[tokio::test]
async fn a_manual_run_dated_now_holds_one_slot_across_a_restart() {
    let db = common::fresh_store("lc_micros").await;
    let gate = MemoryGate::new(std::time::Duration::from_secs(30));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut e = dag_operator::engine::Engine::with_gate(
        EngineConfig::default(),
        db.clone(),
        gate.clone(),
        tx,
    );
    e.load().await.expect("load");
    let mut dag = info("now", t0(), spec(""));
    dag.triggers = vec![trigger("go", None)];
    // a moment with nanoseconds: PostgreSQL keeps microseconds
    let now = DateTime::from_timestamp(t0().timestamp() + 5, 123_456_789).expect("time");
    e.apply(Command::Upsert(Box::new(dag)), now);
    e.tick(now).await.expect("tick");
    assert_eq!(gate.usage(gate_key::GLOBAL_RUNS).await.unwrap(), 1);
    // a new process adopts the run's lease under the name it was claimed with
    let (tx, _rx2) = tokio::sync::mpsc::unbounded_channel();
    let mut again = dag_operator::engine::Engine::with_gate(
        EngineConfig::default(),
        db.clone(),
        gate.clone(),
        tx,
    );
    again.load().await.expect("load");
    again.tick(now + Duration::seconds(1)).await.expect("tick");
    assert_eq!(
        gate.usage(gate_key::GLOBAL_RUNS).await.unwrap(),
        1,
        "the same holder, not a second one"
    );
}

#[tokio::test]
async fn ticks_queued_when_a_dag_is_suspended_run_when_it_resumes() {
    let db = common::fresh_store("lc_suspend_queued").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let limited = "schedule: '*/5 * * * *'\nmaxActiveRuns: 1";
    h.upsert(info("q", t0(), spec(limited)), t0());
    h.run_clock(t0(), t0() + Duration::minutes(15), Duration::minutes(5))
        .await;
    // 00:00 runs; 00:05, 00:10, 00:15 wait behind maxActiveRuns 1
    assert_eq!(h.runs("q").await.len(), 1);
    let now = t0() + Duration::minutes(16);
    h.upsert(
        info("q", t0(), spec(&format!("{limited}\nsuspend: true"))),
        now,
    );
    h.tick(now).await;
    h.finish_all(RunState::Success, now).await;
    h.upsert(info("q", t0(), spec(limited)), now + Duration::seconds(1));
    let mut t = now + Duration::seconds(1);
    for _ in 0..4 {
        h.tick(t).await;
        h.finish_all(RunState::Success, t).await;
        t += Duration::seconds(1);
    }
    assert_eq!(
        h.dates("q").await,
        (0..4)
            .map(|k| t0() + Duration::minutes(5 * k))
            .collect::<Vec<_>>(),
        "the ticks queued at suspend run at resume"
    );
}

#[tokio::test]
async fn a_new_run_and_a_rerun_are_one_transaction() {
    let db = common::fresh_store("lc_one_tx").await;
    let day = utc("2024-01-01T00:00:00Z");
    let new = |date| dag_operator::store::NewRun {
        dag: DagKey::new("ns", "tx"),
        dag_uid: "uid".into(),
        run_type: RunType::Backfill,
        backfill_name: Some("bf".into()),
        backfill_uid: Some("bf-uid".into()),
        trigger: None,
        logical_date: date,
        data_interval_start: date,
        data_interval_end: date,
        priority: 0,
        params: serde_json::json!({}),
        spec_hash: None,
        tasks: vec![dag_operator::store::NewTask {
            task_name: "a".into(),
            pool: None,
            pool_slots: 1,
        }],
    };
    let existing = db.insert_runs(&[new(day)]).await.expect("insert").remove(0);
    sqlx::query("UPDATE dag_runs SET state = 'failed' WHERE id = $1")
        .bind(existing.id)
        .execute(db.pool())
        .await
        .expect("fail it");
    // the re-run's new try breaks a constraint: the new run of the same admission is not
    // written either
    let broken = dag_operator::store::Rerun {
        id: existing.id,
        backfill_name: "bf".into(),
        backfill_uid: "bf-uid".into(),
        params: serde_json::json!({}),
        spec_hash: None,
        tasks: vec![dag_operator::store::NewTask {
            task_name: "a".into(),
            pool: None,
            pool_slots: 0,
        }],
    };
    let result = db
        .admit(&dag_operator::store::Admission {
            runs: vec![new(day + Duration::days(1))],
            reruns: vec![broken],
            ..Default::default()
        })
        .await;
    assert!(result.is_err());
    let runs = db
        .list_runs(&dag_operator::store::RunFilter::default())
        .await
        .expect("runs");
    assert_eq!(runs.len(), 1, "all or nothing: {runs:?}");
    assert_eq!(runs[0].state, RunState::Failed);
}

#[tokio::test]
async fn a_large_backfill_is_counted_beside_the_engine_which_keeps_admitting() {
    let db = common::fresh_store("lc_bf_large").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    h.upsert(
        info(
            "minutely",
            t0(),
            spec("schedule: '* * * * *'\nmaxActiveRuns: 10"),
        ),
        t0(),
    );
    h.upsert(info("every", t0(), spec("schedule: '* * * * *'")), t0());
    // 300,000 minutely ticks (over the inline count): counted off the engine's task
    let start = utc("2023-01-01T00:00:00Z");
    h.backfill(
        backfill(
            "big",
            "minutely",
            start,
            start + Duration::minutes(300_000),
            "concurrency: 2",
        ),
        t0(),
    );
    h.tick(t0()).await;
    assert_eq!(
        h.runs("every").await.len(),
        1,
        "scheduled runs are admitted meanwhile"
    );
    let mut t = t0();
    let progress = loop {
        t += Duration::seconds(1);
        h.tick(t).await;
        if let Some(p) = h.backfill_progress("big") {
            if p.phase == BackfillPhase::Running {
                break p;
            }
        }
        assert!(t < t0() + Duration::minutes(10), "the count never arrived");
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(progress.total, 300_000);
    assert_eq!(progress.planned_dates.len(), 100);
    assert_eq!(progress.active, 2, "concurrency 2");
}

#[tokio::test]
async fn leases_are_renewed_on_time_whatever_the_schedule_interval() {
    let db = common::fresh_store("lc_renew").await;
    // leases of 300 ms (renewed every 100 ms) under passes 10 s apart
    let gate = MemoryGate::new(std::time::Duration::from_millis(300));
    let cfg = EngineConfig {
        schedule_interval: std::time::Duration::from_secs(10),
        ..EngineConfig::default()
    };
    let (tx, _out) = tokio::sync::mpsc::unbounded_channel();
    let engine = dag_operator::engine::Engine::with_gate(cfg, db.clone(), gate.clone(), tx);
    let (commands, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(engine.run(rx));
    let mut dag = info("held", Utc::now(), spec(""));
    dag.triggers = vec![trigger("go", None)];
    commands
        .send(Command::Upsert(Box::new(dag)))
        .await
        .expect("engine runs");
    // the run is admitted (and holds its slot) …
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gate.usage(gate_key::GLOBAL_RUNS).await.unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run was not admitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // … and keeps it for three lease lifetimes and more, between two passes
    for _ in 0..25 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            gate.usage(gate_key::GLOBAL_RUNS).await.unwrap(),
            1,
            "the lease lapsed between passes"
        );
    }
    task.abort();
}

/// A pass that fails on the store (a DAG waiting to be taken up while PostgreSQL is gone)
/// still renews the leases of the running runs: they never lapse during an outage.
#[tokio::test]
async fn leases_are_renewed_while_the_store_fails_every_pass() {
    let db = common::fresh_store("lc_renew_outage").await;
    let store = faulty::Faulty::new(db);
    // leases of 300 ms, renewed every 100 ms
    let gate = MemoryGate::new(std::time::Duration::from_millis(300));
    let (tx, _out) = tokio::sync::mpsc::unbounded_channel();
    let mut engine = dag_operator::engine::Engine::with_gate(
        EngineConfig::default(),
        store.clone(),
        gate.clone(),
        tx,
    );
    engine.load().await.expect("load");
    let mut dag = info("held", t0(), spec(""));
    dag.triggers = vec![trigger("go", None)];
    engine.apply(Command::Upsert(Box::new(dag)), t0());
    engine.tick(t0()).await.expect("tick");
    assert_eq!(gate.usage(gate_key::GLOBAL_RUNS).await.unwrap(), 1);
    // PostgreSQL goes; a new DAG waits to be taken up, so every pass fails on the store
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    engine.apply(
        Command::Upsert(Box::new(info("new", t0(), spec("schedule: '@hourly'")))),
        t0(),
    );
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(engine.tick(t0()).await.is_err(), "the store is down");
        assert_eq!(
            gate.usage(gate_key::GLOBAL_RUNS).await.unwrap(),
            1,
            "the running run's lease lapsed while the store was down"
        );
    }
}

/// A trigger whose lookup fails on the store is looked at again by the next pass, not only
/// when the DAG changes.
#[tokio::test]
async fn a_trigger_whose_lookup_failed_is_handled_by_the_next_pass() {
    let db = common::fresh_store("lc_trigger_lookup").await;
    let store = faulty::Faulty::new(db.clone());
    let (tx, _out) = tokio::sync::mpsc::unbounded_channel();
    let mut engine = dag_operator::engine::Engine::new(EngineConfig::default(), store.clone(), tx);
    engine.load().await.expect("load");
    engine.apply(
        Command::Upsert(Box::new(info("manual", t0(), spec("")))),
        t0(),
    );
    engine.tick(t0()).await.expect("tick");
    // the trigger arrives; the store fails on the pass's first call after the DAG's record
    let mut dag = info("manual", t0(), spec(""));
    dag.triggers = vec![pending("once")];
    engine.apply(Command::Upsert(Box::new(dag)), t0());
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(engine.tick(t0()).await.is_err());
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // no change to the DAG: the next passes alone must handle the value
    for s in 1..=3 {
        engine
            .tick(t0() + Duration::seconds(s))
            .await
            .expect("tick");
    }
    let runs: Vec<_> = db
        .list_runs(&dag_operator::store::RunFilter {
            namespace: Some("ns".into()),
            dag_name: Some("manual".into()),
            state: None,
            limit: 10,
        })
        .await
        .expect("list")
        .into_iter()
        .filter(|r| r.run_type == RunType::Manual)
        .collect();
    assert_eq!(runs.len(), 1, "the trigger ran once");
}
