//! Engine tests: the real engine against a real PostgreSQL (a fresh database per test), with a
//! controllable clock — each test passes the instants itself.

mod common;
#[path = "support/engine.rs"]
mod support;

use chrono::Duration;
use dag_operator::engine::{
    Command, DagInfo, Engine, EngineConfig, EngineStatus, EngineTelemetry, Output,
};
use dag_operator::report::Notice;
use dag_operator::store::{DagKey, RunState, RunStore, RunType};
use support::{Harness, every, info, spec, trigger, utc};
use tokio::sync::mpsc;

#[tokio::test]
async fn one_run_per_tick_consecutive_and_never_twice() {
    let store = common::fresh_store("eng_steady").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "fast",
            t0,
            spec("schedule: '* * * * * *'\nmaxActiveRuns: 1000"),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::seconds(10), Duration::milliseconds(500))
        .await;
    // the same instant again creates nothing
    h.tick(t0 + Duration::seconds(10)).await;
    // a tick at the DAG's creation instant counts (it did exist then)
    let dates = h.dates("fast").await;
    assert_eq!(dates, every(t0, Duration::seconds(1), 11));
    let run = &h.runs("fast").await[1];
    assert_eq!(run.run_type, RunType::Scheduled);
    assert_eq!(run.state, RunState::Running);
    assert_eq!(
        run.data_interval_start,
        run.logical_date - Duration::seconds(1)
    );
    assert_eq!(run.data_interval_end, run.logical_date);
    assert_eq!(h.engine.next_wake(), Some(t0 + Duration::seconds(11)));
}

#[tokio::test]
async fn catch_up_after_long_downtime_keeps_the_latest_n_and_reports_the_rest() {
    let db = common::fresh_store("eng_catchup").await;
    let t0 = utc("2025-01-01T00:00:00Z");
    let dag = spec("schedule: '*/5 * * * *'\nmaxCatchupRuns: 4\nmaxActiveRuns: 100");
    {
        let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
        h.upsert(info("etl", t0, dag.clone()), t0);
        h.run_clock(t0, t0 + Duration::minutes(10), Duration::minutes(5))
            .await;
        assert_eq!(h.dates("etl").await.len(), 3);
    }
    // down for three hours: a new engine on the same database
    let back = t0 + Duration::hours(3) + Duration::seconds(30);
    let mut h = Harness::new(db, EngineConfig::default()).await;
    h.upsert(info("etl", t0, dag), back);
    h.tick(back).await;
    let dates = h.dates("etl").await;
    let kept: Vec<_> = dates[3..].to_vec();
    assert_eq!(
        kept,
        every(t0 + Duration::minutes(165), Duration::minutes(5), 4)
    );
    let missed = h.events("MissedRuns");
    assert_eq!(missed.len(), 1, "{missed:?}");
    // ticks 00:15 .. 02:40 were dropped: 30 of them
    assert!(
        missed[0].starts_with(
            "30 missed tick(s) from 2025-01-01T00:15:00+00:00 to 2025-01-01T02:40:00+00:00"
        ),
        "{}",
        missed[0]
    );
}

#[tokio::test]
async fn catchup_false_keeps_only_the_latest_tick() {
    let db = common::fresh_store("eng_nocatchup").await;
    let t0 = utc("2025-01-01T00:00:00Z");
    let mut h = Harness::new(db, EngineConfig::default()).await;
    h.upsert(
        info("etl", t0, spec("schedule: '0 * * * *'\ncatchup: false")),
        t0 + Duration::hours(5) + Duration::minutes(1),
    );
    h.tick(t0 + Duration::hours(5) + Duration::minutes(1)).await;
    assert_eq!(h.dates("etl").await, [t0 + Duration::hours(5)]);
    assert_eq!(h.events("MissedRuns").len(), 1);
}

#[tokio::test]
async fn ticks_before_the_dag_existed_are_never_caught_up() {
    let db = common::fresh_store("eng_created").await;
    let created = utc("2025-01-01T10:30:00Z");
    let mut h = Harness::new(db, EngineConfig::default()).await;
    h.upsert(info("new", created, spec("schedule: '0 * * * *'")), created);
    h.run_clock(
        created,
        created + Duration::minutes(90),
        Duration::minutes(15),
    )
    .await;
    assert_eq!(
        h.dates("new").await,
        [utc("2025-01-01T11:00:00Z"), utc("2025-01-01T12:00:00Z")]
    );
    assert!(h.events("MissedRuns").is_empty());
}

#[tokio::test]
async fn dst_days_in_several_zones() {
    let db = common::fresh_store("eng_dst").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2024-03-09T00:00:00Z");
    for (name, zone) in [
        ("ny", "America/New_York"),
        ("berlin", "Europe/Berlin"),
        ("sydney", "Australia/Sydney"),
    ] {
        h.upsert(
            info(
                name,
                t0,
                spec(&format!(
                    "schedule: '30 2 * * *'\ntimezone: {zone}\nmaxActiveRuns: 100"
                )),
            ),
            t0,
        );
    }
    h.run_clock(t0, utc("2024-04-09T00:00:00Z"), Duration::minutes(30))
        .await;
    let ny = h.dates("ny").await;
    // 2024-03-10: 02:30 does not exist in New York; the run fires once at 03:00 EDT
    assert!(ny.contains(&utc("2024-03-10T07:00:00Z")), "{ny:?}");
    assert!(ny.contains(&utc("2024-03-09T07:30:00Z")) && ny.contains(&utc("2024-03-11T06:30:00Z")));
    let berlin = h.dates("berlin").await;
    // 2024-03-31: 02:30 does not exist in Berlin; the run fires at 03:00 CEST = 01:00Z
    assert!(berlin.contains(&utc("2024-03-31T01:00:00Z")), "{berlin:?}");
    let sydney = h.dates("sydney").await;
    // 2024-04-07: 02:30 happens twice in Sydney (fall back); a fixed-time job runs once, at AEDT
    assert!(sydney.contains(&utc("2024-04-06T15:30:00Z")), "{sydney:?}");
    assert!(!sydney.contains(&utc("2024-04-06T16:30:00Z")), "{sydney:?}");
    for (name, dates) in [("ny", &ny), ("berlin", &berlin), ("sydney", &sydney)] {
        assert_eq!(
            dates.len(),
            31,
            "{name}: one run per day for the 31 days: {dates:?}"
        );
    }
}

#[tokio::test]
async fn start_and_end_dates_bound_the_ticks() {
    let db = common::fresh_store("eng_bounds").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "bounded",
            t0,
            spec("schedule: '0 * * * *'\nstartDate: 2025-01-01T03:00:00Z\nendDate: 2025-01-01T05:00:00Z"),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::hours(8), Duration::minutes(30))
        .await;
    assert_eq!(
        h.dates("bounded").await,
        every(utc("2025-01-01T03:00:00Z"), Duration::hours(1), 3)
    );
    assert_eq!(h.engine.next_wake(), None, "no timer after endDate");
}

#[tokio::test]
async fn max_active_runs_queues_the_rest_and_admits_oldest_first() {
    let db = common::fresh_store("eng_maxactive").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "busy",
            t0,
            spec("schedule: '* * * * * *'\nmaxActiveRuns: 2"),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::seconds(6), Duration::seconds(1))
        .await;
    let runs = h.runs("busy").await;
    assert_eq!(runs.len(), 2);
    let statuses: Vec<_> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Status(EngineStatus::Dag(_, s)) => Some(s),
            _ => None,
        })
        .collect();
    let last = statuses.last().expect("status reported");
    assert_eq!((last.active_runs, last.queued_runs), (2, 5));
    // the first run ends: the oldest queued tick (00:00:02) is admitted next, not the newest
    h.engine.runs_ended(&[runs[0].id]);
    h.tick(t0 + Duration::seconds(6)).await;
    assert_eq!(h.dates("busy").await[2], t0 + Duration::seconds(2));
}

#[tokio::test]
async fn forbid_skips_while_a_run_is_active() {
    let db = common::fresh_store("eng_forbid").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "solo",
            t0,
            spec("schedule: '* * * * *'\nconcurrencyPolicy: Forbid"),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::minutes(3), Duration::minutes(1))
        .await;
    assert_eq!(h.dates("solo").await, [t0]);
    assert_eq!(h.events("RunSkipped").len(), 3);
}

#[tokio::test]
async fn replace_cancels_the_active_run_and_starts_the_new_one() {
    let db = common::fresh_store("eng_replace").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "latest",
            t0,
            spec("schedule: '* * * * *'\nconcurrencyPolicy: Replace"),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::minutes(2), Duration::minutes(1))
        .await;
    let runs = h.runs("latest").await;
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0].state, RunState::Cancelled);
    assert!(runs[0].ended_at.is_some());
    assert_eq!(runs[1].state, RunState::Cancelled);
    assert_eq!(runs[2].state, RunState::Running);
    assert_eq!(h.events("RunReplaced").len(), 2);
}

#[tokio::test]
async fn starting_deadline_skips_runs_admitted_too_late() {
    let db = common::fresh_store("eng_deadline").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "strict",
            t0,
            spec("schedule: '* * * * *'\nmaxActiveRuns: 1\nstartingDeadlineSeconds: 90"),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::minutes(4), Duration::minutes(1))
        .await;
    // 00:00 runs; 00:01 .. 00:04 wait behind it; at 00:04 the slot frees
    let first = h.runs("strict").await[0].id;
    h.engine.runs_ended(&[first]);
    h.tick(t0 + Duration::minutes(4)).await;
    // 00:01 and 00:02 are 180 s and 120 s late (> 90): skipped; 00:03 is 60 s late: admitted
    assert_eq!(h.dates("strict").await, [t0, t0 + Duration::minutes(3)]);
    let skipped = h.events("RunSkipped");
    assert!(
        skipped
            .iter()
            .any(|m| m.contains("startingDeadlineSeconds")),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn a_trigger_creates_one_manual_run_ahead_of_queued_scheduled_runs() {
    let db = common::fresh_store("eng_trigger").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    let dag = spec("schedule: '* * * * *'\nmaxActiveRuns: 1\nparams: {a: 1}");
    h.upsert(info("t", t0, dag.clone()), t0);
    h.run_clock(t0, t0 + Duration::minutes(3), Duration::minutes(1))
        .await;
    // 00:00 running, 00:01 .. 00:03 queued; now a trigger
    let mut with_trigger = info("t", t0, dag.clone());
    with_trigger.triggers = vec![trigger("run-1", Some(r#"{"b": 2}"#))];
    let now = t0 + Duration::minutes(3) + Duration::seconds(10);
    h.upsert(with_trigger.clone(), now);
    let first = h.runs("t").await[0].id;
    h.engine.runs_ended(&[first]);
    h.tick(now).await;
    let runs = h.runs("t").await;
    assert_eq!(runs.len(), 2);
    let manual = runs
        .iter()
        .find(|r| r.run_type == RunType::Manual)
        .expect("manual run");
    assert_eq!(manual.logical_date, now);
    assert_eq!(manual.params, serde_json::json!({"a": 1, "b": 2}));
    // re-applying the same value creates nothing
    h.upsert(with_trigger.clone(), now + Duration::seconds(1));
    h.engine.runs_ended(&[manual.id]);
    h.tick(now + Duration::seconds(1)).await;
    assert_eq!(
        h.runs("t")
            .await
            .iter()
            .filter(|r| r.run_type == RunType::Manual)
            .count(),
        1
    );
    // an RFC3339 value is the logical date; malformed params are refused with an event
    h.end_all().await;
    let mut dated = with_trigger.clone();
    dated.triggers = vec![trigger("2024-06-01T00:00:00Z", None)];
    h.upsert(dated, now + Duration::seconds(2));
    // (a single-form annotation overwritten before a pass would be lost: the many form keeps
    // each pending trigger; see several_pending_triggers_each_run_once)
    h.tick(now + Duration::seconds(2)).await;
    let mut bad = with_trigger;
    bad.triggers = vec![trigger("run-2", Some("{oops"))];
    h.upsert(bad, now + Duration::seconds(3));
    h.tick(now + Duration::seconds(3)).await;
    let manual: Vec<_> = h
        .runs("t")
        .await
        .into_iter()
        .filter(|r| r.run_type == RunType::Manual)
        .collect();
    assert_eq!(manual.len(), 2);
    assert!(
        manual
            .iter()
            .any(|r| r.logical_date == utc("2024-06-01T00:00:00Z"))
    );
    let refused = h.events("TriggerRefused");
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("not valid JSON"), "{refused:?}");
}

#[tokio::test]
async fn suspend_stops_new_runs_and_resume_catches_up() {
    let db = common::fresh_store("eng_suspend").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info("s", t0, spec("schedule: '0 * * * *'\nmaxCatchupRuns: 2")),
        t0,
    );
    h.run_clock(t0, t0 + Duration::hours(1), Duration::hours(1))
        .await;
    h.upsert(
        info(
            "s",
            t0,
            spec("schedule: '0 * * * *'\nmaxCatchupRuns: 2\nsuspend: true"),
        ),
        t0 + Duration::hours(1),
    );
    h.run_clock(
        t0 + Duration::hours(1),
        t0 + Duration::hours(6),
        Duration::minutes(30),
    )
    .await;
    assert_eq!(h.dates("s").await, [t0, t0 + Duration::hours(1)]);
    // a trigger on a suspended DAG is refused
    let mut trig = info(
        "s",
        t0,
        spec("schedule: '0 * * * *'\nmaxCatchupRuns: 2\nsuspend: true"),
    );
    trig.triggers = vec![trigger("x", None)];
    h.upsert(trig, t0 + Duration::hours(6));
    h.tick(t0 + Duration::hours(6)).await;
    assert_eq!(h.events("TriggerRefused").len(), 1);
    // resume at 06:10: the latest 2 missed ticks run
    let resume = t0 + Duration::hours(6) + Duration::minutes(10);
    h.upsert(
        info("s", t0, spec("schedule: '0 * * * *'\nmaxCatchupRuns: 2")),
        resume,
    );
    h.tick(resume).await;
    assert_eq!(
        h.dates("s").await,
        [
            t0,
            t0 + Duration::hours(1),
            t0 + Duration::hours(5),
            t0 + Duration::hours(6)
        ]
    );
}

#[tokio::test]
async fn changing_the_schedule_never_creates_past_ticks_of_the_new_one() {
    let db = common::fresh_store("eng_change").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(info("c", t0, spec("schedule: '0 0 * * *'")), t0);
    // a DAG is planned from its record at the engine's next pass
    h.tick(t0).await;
    // changed at 10:00:30: hourly ticks from 01:00 to 10:00 are past ticks of the new schedule
    let change = t0 + Duration::hours(10) + Duration::seconds(30);
    h.upsert(info("c", t0, spec("schedule: '0 * * * *'")), change);
    h.run_clock(change, change + Duration::hours(2), Duration::minutes(30))
        .await;
    assert_eq!(
        h.dates("c").await,
        [t0, t0 + Duration::hours(11), t0 + Duration::hours(12)]
    );
}

#[tokio::test]
async fn a_removed_dag_stops_and_two_engines_never_create_a_run_twice() {
    let db = common::fresh_store("eng_twice").await;
    let t0 = utc("2025-01-01T00:00:00Z");
    let dag = spec("schedule: '* * * * *'\nmaxActiveRuns: 100");
    let mut a = Harness::new(db.clone(), EngineConfig::default()).await;
    let mut b = Harness::new(db, EngineConfig::default()).await;
    a.upsert(info("shared", t0, dag.clone()), t0);
    b.upsert(info("shared", t0, dag), t0);
    let mut t = t0;
    while t <= t0 + Duration::minutes(5) {
        a.tick(t).await;
        b.tick(t).await;
        t += Duration::minutes(1);
    }
    assert_eq!(a.dates("shared").await, every(t0, Duration::minutes(1), 6));
    a.engine
        .apply(Command::Invalid(DagKey::new("ns", "shared")), t);
    b.engine
        .apply(Command::Invalid(DagKey::new("ns", "shared")), t);
    a.run_clock(t, t + Duration::minutes(3), Duration::minutes(1))
        .await;
    assert_eq!(a.dates("shared").await.len(), 6);
}

#[tokio::test]
async fn two_engines_sharing_a_gate_never_exceed_the_global_limit_together() {
    let db = common::fresh_store("eng_shared_gate").await;
    let gate = dag_operator::gate::MemoryGate::new(std::time::Duration::from_secs(30));
    let cfg = EngineConfig {
        max_concurrent_runs: 3,
        ..EngineConfig::default()
    };
    let t0 = utc("2025-01-01T00:00:00Z");
    let mut engines = Vec::new();
    for _ in 0..2 {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut e = Engine::with_gate(cfg.clone(), db.clone(), gate.clone(), tx);
        e.load().await.expect("load");
        // each replica knows every DAG, as two operators watching one cluster would
        for i in 0..4 {
            let dag = spec("schedule: '* * * * *'\nmaxActiveRuns: 100");
            e.apply(
                Command::Upsert(Box::new(info(&format!("d{i}"), t0, dag))),
                t0,
            );
        }
        engines.push((e, _rx));
    }
    for minute in 0..3 {
        for (e, _) in &mut engines {
            e.tick(t0 + Duration::minutes(minute)).await.expect("tick");
        }
    }
    let running = db.running_runs(None).await.expect("runs");
    assert_eq!(
        running.len(),
        3,
        "the shared global limit of 3 holds across both engines"
    );
}

#[tokio::test]
async fn an_unreachable_gate_pauses_admission_and_loses_nothing() {
    let db = common::fresh_store("eng_gate_down").await;
    let gate = dag_operator::gate::RedisGate::connect_lazy(
        "redis://127.0.0.1:1/0",
        "dagop",
        std::time::Duration::from_secs(30),
    )
    .expect("valid URL");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut e = Engine::with_gate(EngineConfig::default(), db.clone(), gate, tx);
    e.load().await.expect("load");
    let t0 = utc("2025-01-01T00:00:00Z");
    e.apply(
        Command::Upsert(Box::new(info("g", t0, spec("schedule: '* * * * *'")))),
        t0,
    );
    e.tick(t0 + Duration::minutes(2))
        .await
        .expect("store is fine");
    assert!(
        db.running_runs(None).await.expect("runs").is_empty(),
        "fail closed: nothing admitted"
    );
    let outputs: Vec<Output> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(
        outputs.contains(&Output::Status(EngineStatus::GateHealth(false))),
        "{outputs:?}"
    );
    // the due ticks still wait in the queue
    assert_eq!(e.queue_depth(), [0, 3, 0]);
}

/// The ids of the runs an output says were cancelled.
fn cancelled(outputs: &[Output]) -> Vec<uuid::Uuid> {
    outputs
        .iter()
        .flat_map(|o| match o {
            Output::RunsCancelled(runs) => runs.iter().map(|c| c.run).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn one_slot() -> EngineConfig {
    EngineConfig {
        max_concurrent_runs: 1,
        ..EngineConfig::default()
    }
}

#[tokio::test]
async fn a_deleted_dags_running_run_is_cancelled_and_its_global_slot_freed() {
    let db = common::fresh_store("eng_deleted").await;
    let mut h = Harness::new(db, one_slot()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(info("doomed", t0, spec("schedule: '0 * * * *'")), t0);
    h.tick(t0).await;
    let run = h.runs("doomed").await.remove(0);
    h.upsert(info("other", t0, spec("schedule: '*/5 * * * *'")), t0);
    h.tick(t0 + Duration::minutes(5)).await;
    assert!(
        h.runs("other").await.is_empty(),
        "the one global slot is taken"
    );
    h.engine.apply(
        Command::Deleted {
            key: DagKey::new("ns", "doomed"),
            uid: "uid-doomed".into(),
        },
        t0 + Duration::minutes(6),
    );
    h.tick(t0 + Duration::minutes(6)).await;
    assert_eq!(h.runs("doomed").await[0].state, RunState::Cancelled);
    let outputs = h.outputs();
    assert_eq!(cancelled(&outputs), [run.id]);
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::Event(Notice {
            reason: "RunCancelled",
            ..
        })
    )));
    h.tick(t0 + Duration::minutes(7)).await;
    assert_eq!(h.runs("other").await.len(), 1, "the slot is free again");
}

#[tokio::test]
async fn runs_of_a_dag_deleted_while_the_operator_was_down_are_cancelled_once_listed() {
    let db = common::fresh_store("eng_deleted_down").await;
    let t0 = utc("2025-01-01T00:00:00Z");
    let run = {
        let mut h = Harness::new(db.clone(), one_slot()).await;
        h.upsert(info("doomed", t0, spec("schedule: '0 * * * *'")), t0);
        h.tick(t0).await;
        h.runs("doomed").await.remove(0)
    };
    // a new process: the DAG is gone, another one exists
    let mut h = Harness::new(db, one_slot()).await;
    h.upsert(info("other", t0, spec("schedule: '*/5 * * * *'")), t0);
    h.engine.apply(
        Command::Listed(std::collections::HashMap::from([(
            DagKey::new("ns", "other"),
            "uid-other".to_string(),
        )])),
        t0 + Duration::minutes(5),
    );
    h.tick(t0 + Duration::minutes(5)).await;
    assert_eq!(h.runs("doomed").await[0].state, RunState::Cancelled);
    assert_eq!(cancelled(&h.outputs()), [run.id]);
    h.tick(t0 + Duration::minutes(6)).await;
    assert_eq!(h.runs("other").await.len(), 1, "the slot is free again");
}

#[tokio::test]
async fn a_dag_created_again_under_the_same_name_starts_clean() {
    let db = common::fresh_store("eng_recreated").await;
    let mut h = Harness::new(db, one_slot()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "same",
            t0,
            spec("schedule: '0 * * * *'\nconcurrencyPolicy: Forbid"),
        ),
        t0,
    );
    h.tick(t0).await;
    let old = h.runs("same").await.remove(0);
    // deleted and created again while the deletion went unseen: a new uid
    let mut again = info(
        "same",
        t0 + Duration::minutes(30),
        spec("schedule: '0 * * * *'\nconcurrencyPolicy: Forbid"),
    );
    again = DagInfo::from_spec(
        again.key.clone(),
        "uid-same-2",
        t0 + Duration::minutes(30),
        again.spec().clone(),
        again.schedule.clone(),
    );
    h.upsert(again, t0 + Duration::minutes(30));
    h.tick(t0 + Duration::minutes(30)).await;
    assert_eq!(cancelled(&h.outputs()), [old.id]);
    // with Forbid, the next tick is not skipped for the old object's run
    h.tick(t0 + Duration::hours(1)).await;
    let runs = h.runs("same").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].dag_uid, "uid-same-2");
    assert_eq!(runs[1].state, RunState::Running);
}

#[tokio::test]
async fn an_invalid_dags_running_run_goes_on() {
    let db = common::fresh_store("eng_invalid_keeps").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(info("typo", t0, spec("schedule: '0 * * * *'")), t0);
    h.tick(t0).await;
    h.engine.apply(
        Command::Invalid(DagKey::new("ns", "typo")),
        t0 + Duration::minutes(1),
    );
    h.tick(t0 + Duration::minutes(1)).await;
    assert_eq!(h.runs("typo").await[0].state, RunState::Running);
    assert!(cancelled(&h.outputs()).is_empty());
    assert_eq!(
        h.engine.active_total(),
        1,
        "it still counts against the limits"
    );
}

#[tokio::test]
async fn an_engine_watching_one_namespace_adopts_only_its_runs() {
    let db = common::fresh_store("eng_scope").await;
    let t0 = utc("2025-01-01T00:00:00Z");
    // runs left running in another namespace (deleted, or watched by another operator)
    let stranded: Vec<dag_operator::store::NewRun> = (0..3)
        .map(|i| dag_operator::store::NewRun {
            dag: DagKey::new("elsewhere", "x"),
            dag_uid: "uid-x".into(),
            run_type: RunType::Scheduled,
            backfill_name: None,
            backfill_uid: None,
            trigger: None,
            logical_date: t0 - Duration::hours(i + 1),
            data_interval_start: t0,
            data_interval_end: t0,
            priority: 0,
            params: serde_json::json!({}),
            spec_hash: None,
            tasks: Vec::new(),
        })
        .collect();
    db.insert_runs(&stranded).await.expect("insert");
    let cfg = EngineConfig {
        max_concurrent_runs: 1,
        namespace: Some("ns".into()),
        ..EngineConfig::default()
    };
    let mut h = Harness::new(db, cfg).await;
    h.upsert(info("mine", t0, spec("schedule: '0 * * * *'")), t0);
    h.tick(t0).await;
    assert_eq!(
        h.runs("mine").await.len(),
        1,
        "the other namespace's runs hold no slot here"
    );
}

#[tokio::test]
async fn admitted_runs_go_to_the_executor_with_their_spec_version() {
    let db = common::fresh_store("eng_versions").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(info("v", t0, spec("schedule: '0 * * * *'")), t0);
    h.tick(t0).await;
    let outputs = h.outputs();
    let admitted: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::RunsAdmitted(runs) => Some(runs.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(admitted.len(), 1);
    let run = &admitted[0];
    let hash = run.run.spec_hash.clone().expect("a spec version");
    assert_eq!(run.spec.content_hash().expect("hash").0, hash);
    let stored = db.specs(std::slice::from_ref(&hash)).await.expect("specs");
    assert_eq!(stored.len(), 1, "the version is stored");
    let back: dag_operator::api::DagSpec =
        serde_json::from_value(stored[0].spec.clone()).expect("a DagSpec");
    assert_eq!(&back, &*run.spec);
}

fn in_namespace(ns: &str, name: &str, created: chrono::DateTime<chrono::Utc>) -> DagInfo {
    let s = spec("schedule: '* * * * * *'\nmaxActiveRuns: 100");
    let schedule = s
        .parse_schedule(chrono_tz::Tz::UTC)
        .expect("valid schedule");
    DagInfo::from_spec(
        DagKey::new(ns, name),
        &format!("uid-{ns}-{name}"),
        created,
        (*s).clone(),
        schedule,
    )
}

async fn running_in(store: &dag_operator::store::PgStore, ns: &str) -> usize {
    let running = store.running_runs(None).await.expect("runs");
    running.iter().filter(|r| r.dag.namespace == ns).count()
}

#[tokio::test]
async fn a_capped_namespace_waits_at_its_cap_while_another_is_admitted_at_once() {
    let db = common::fresh_store("eng_ns_cap").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.engine.apply(
        Command::NamespaceLimit {
            namespace: "tenant-a".into(),
            max_running_runs: Some(2),
        },
        t0,
    );
    for ns in ["tenant-a", "tenant-b"] {
        for d in ["d1", "d2"] {
            h.upsert(in_namespace(ns, d, t0), t0);
        }
    }
    h.run_clock(t0, t0 + Duration::seconds(9), Duration::seconds(1))
        .await;
    // tenant-a's 20 due runs: 2 running, the rest queued; tenant-b's 20 all admitted
    assert_eq!(running_in(&db, "tenant-a").await, 2);
    assert_eq!(running_in(&db, "tenant-b").await, 20);
    // the cap is lifted (annotation removed, no default): tenant-a's queue drains at once
    h.engine
        .apply(Command::NamespaceDefault("tenant-a".into()), t0);
    h.tick(t0 + Duration::seconds(9)).await;
    assert_eq!(running_in(&db, "tenant-a").await, 20);
    // no tick lost or doubled on either side
    for ns in ["tenant-a", "tenant-b"] {
        let running = db.running_runs(None).await.expect("runs");
        let mut dates: Vec<_> = running
            .iter()
            .filter(|r| r.dag.namespace == ns && r.dag.name == "d1")
            .map(|r| r.logical_date)
            .collect();
        dates.sort();
        dates.dedup();
        assert_eq!(dates.len(), 10, "{ns}");
    }
}

#[tokio::test]
async fn a_cap_set_later_counts_the_runs_already_running() {
    let db = common::fresh_store("eng_ns_cap_late").await;
    let cfg = EngineConfig {
        max_runs_per_namespace: None,
        ..EngineConfig::default()
    };
    let mut h = Harness::new(db.clone(), cfg).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(in_namespace("tenant-a", "d1", t0), t0);
    h.run_clock(t0, t0 + Duration::seconds(4), Duration::seconds(1))
        .await;
    assert_eq!(running_in(&db, "tenant-a").await, 5);
    h.engine.apply(
        Command::NamespaceLimit {
            namespace: "tenant-a".into(),
            max_running_runs: Some(3),
        },
        t0,
    );
    h.run_clock(
        t0 + Duration::seconds(5),
        t0 + Duration::seconds(8),
        Duration::seconds(1),
    )
    .await;
    assert_eq!(
        running_in(&db, "tenant-a").await,
        5,
        "no new run above the cap"
    );
    // two end: still at the cap of 3 (5 - 2 = 3), nothing admitted; a third ends: one is
    let running = db.running_runs(None).await.expect("runs");
    let ids: Vec<_> = running.iter().map(|r| r.id).collect();
    db_end(&db, &ids[..2]).await;
    h.engine.runs_ended(&ids[..2]);
    h.tick(t0 + Duration::seconds(9)).await;
    assert_eq!(running_in(&db, "tenant-a").await, 3);
    db_end(&db, &ids[2..3]).await;
    h.engine.runs_ended(&ids[2..3]);
    h.tick(t0 + Duration::seconds(10)).await;
    assert_eq!(running_in(&db, "tenant-a").await, 3);
}

/// Ends runs `ids` as the executor would (successfully).
async fn db_end(store: &dag_operator::store::PgStore, ids: &[uuid::Uuid]) {
    let changes = dag_operator::store::Changes {
        run_ends: ids
            .iter()
            .map(|id| dag_operator::store::RunEnd {
                id: *id,
                state: RunState::Success,
                at: utc("2025-01-01T00:00:09Z"),
            })
            .collect(),
        ..Default::default()
    };
    store.write_changes(&changes).await.expect("end runs");
}

#[tokio::test]
async fn buffer_one_runs_one_keeps_one_waiting_and_skips_the_rest() {
    let db = common::fresh_store("eng_buffer_one").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "buffered",
            t0,
            spec("schedule: '* * * * * *'\nmaxActiveRuns: 5\nconcurrencyPolicy: BufferOne"),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::seconds(5), Duration::seconds(1))
        .await;
    // one runs (maxActiveRuns does not raise it), 00:00:01 waits, 02..05 are skipped
    assert_eq!(h.dates("buffered").await, vec![t0]);
    let skipped = h.events("RunSkipped");
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(skipped[0].contains("BufferOne"), "{skipped:?}");
    // the run ends: the waiting tick runs next, and the next tick may wait again
    h.finish_all(RunState::Success, t0 + Duration::seconds(5))
        .await;
    h.tick(t0 + Duration::seconds(5)).await;
    assert_eq!(
        h.dates("buffered").await,
        vec![t0, t0 + Duration::seconds(1)]
    );
    h.tick(t0 + Duration::seconds(6)).await;
    h.tick(t0 + Duration::seconds(7)).await;
    assert_eq!(h.dates("buffered").await.len(), 2);
    assert_eq!(h.events("RunSkipped").len(), 1, "07 skipped, 06 waits");
}

#[tokio::test]
async fn three_failed_scheduled_runs_in_a_row_suspend_the_dag_until_its_spec_changes() {
    let db = common::fresh_store("eng_auto_suspend").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    let dag = || {
        info(
            "flaky",
            t0,
            spec("schedule: '* * * * * *'\nmaxConsecutiveFailures: 3\ncatchup: false"),
        )
    };
    h.upsert(dag(), t0);
    for s in 0..3 {
        h.tick(t0 + Duration::seconds(s)).await;
        h.finish_all(RunState::Failed, t0 + Duration::seconds(s))
            .await;
    }
    h.outputs();
    // the third failure is counted at the next pass: no run for 00:00:03 or later
    for s in 3..6 {
        h.tick(t0 + Duration::seconds(s)).await;
    }
    assert_eq!(h.runs("flaky").await.len(), 3);
    let suspended = h.events("AutoSuspended");
    assert_eq!(suspended.len(), 1, "{suspended:?}");
    assert!(
        suspended[0].contains("3 failed scheduled runs"),
        "{suspended:?}"
    );
    // its status says so
    h.tick(t0 + Duration::seconds(6)).await;
    let status = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Status(EngineStatus::Dag(_, s)) => Some(s),
            _ => None,
        })
        .next_back();
    if let Some(s) = status {
        assert!(s.auto_suspended);
        assert_eq!(s.auto_suspension.map(|a| a.failures), Some(3));
    }
    // the user changes the spec (a new generation): it runs again, and the old failures do
    // not count again — one more failure does not suspend it
    let mut resumed = dag();
    std::sync::Arc::make_mut(&mut resumed.object)
        .metadata
        .generation = Some(2);
    h.upsert(resumed, t0 + Duration::seconds(7));
    h.tick(t0 + Duration::seconds(7)).await;
    assert_eq!(h.runs("flaky").await.len(), 4);
    h.finish_all(RunState::Failed, t0 + Duration::seconds(7))
        .await;
    h.tick(t0 + Duration::seconds(8)).await;
    assert_eq!(h.runs("flaky").await.len(), 5);
    assert!(h.events("AutoSuspended").is_empty());
}

#[tokio::test]
async fn several_schedules_fire_at_their_union_minus_the_excluded_days() {
    let db = common::fresh_store("eng_schedules").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "twice-daily",
            t0,
            spec(
                "schedules: ['0 9 * * *', '0 17 * * *', '0 9 * * 1-5']\nexclude: ['2025-01-02']\nmaxActiveRuns: 100",
            ),
        ),
        t0,
    );
    h.run_clock(t0, t0 + Duration::hours(72), Duration::hours(1))
        .await;
    let runs = h.runs("twice-daily").await;
    let dates: Vec<_> = runs.iter().map(|r| r.logical_date).collect();
    assert_eq!(
        dates,
        vec![
            utc("2025-01-01T09:00:00Z"),
            utc("2025-01-01T17:00:00Z"),
            utc("2025-01-03T09:00:00Z"),
            utc("2025-01-03T17:00:00Z"),
        ],
        "09:00 once though two schedules share it; nothing on the excluded day"
    );
    // the first run after the holiday covers it: its data interval starts at the last tick
    assert_eq!(runs[2].data_interval_start, utc("2025-01-01T17:00:00Z"));
    assert_eq!(runs[2].data_interval_end, utc("2025-01-03T09:00:00Z"));
}

#[tokio::test]
async fn jitter_delays_each_run_below_the_jitter_and_keeps_its_logical_date() {
    let db = common::fresh_store("eng_jitter").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(
        info(
            "jittery",
            t0,
            spec("schedule: '* * * * *'\njitter: 30s\nmaxActiveRuns: 100\nstartingDeadlineSeconds: 5"),
        ),
        t0,
    );
    let jitter = std::time::Duration::from_secs(30);
    let mut first_seen = std::collections::BTreeMap::new();
    for s in 0..200 {
        let now = t0 + Duration::seconds(s);
        h.tick(now).await;
        for r in h.runs("jittery").await {
            first_seen.entry(r.logical_date).or_insert(now);
        }
    }
    assert!(first_seen.len() >= 3, "{first_seen:?}");
    for (minute, (tick, seen)) in first_seen.iter().enumerate() {
        assert_eq!(
            *tick,
            t0 + Duration::minutes(minute as i64),
            "logical dates stay ticks"
        );
        let delay = dag_operator::schedule::jitter_delay("ns/jittery", *tick, jitter);
        let release = *tick + Duration::from_std(delay).expect("small");
        // admitted at the first clock step at or after its start, never before
        assert!(
            *seen >= release && *seen - release < Duration::seconds(1),
            "{tick}: {seen} vs {release}"
        );
        // (startingDeadlineSeconds 5 counts from the start: none was skipped)
    }
    assert!(h.events("RunSkipped").is_empty());
}

#[tokio::test]
async fn a_triggered_by_chain_runs_the_downstream_once_per_upstream_success() {
    let db = common::fresh_store("eng_triggered_by").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    let up = || info("up", t0, spec("schedule: '0 * * * *'\nmaxActiveRuns: 10"));
    let down = || {
        let s = std::sync::Arc::new(
            serde_yaml::from_str::<dag_operator::api::DagSpec>(
                "triggeredBy: [{dag: up}]\ntasks:\n- {name: a, container: {image: busybox}}\n",
            )
            .expect("valid spec"),
        );
        info("down", t0, s)
    };
    h.upsert(up(), t0);
    h.upsert(down(), t0);
    // two hourly runs of up: the first fails, the second succeeds
    h.tick(t0).await;
    h.finish_all(RunState::Failed, t0 + Duration::minutes(5))
        .await;
    h.tick(t0 + Duration::hours(1)).await;
    h.finish_all(RunState::Success, t0 + Duration::minutes(65))
        .await;
    for m in [66, 67] {
        h.tick(t0 + Duration::minutes(m)).await;
    }
    let runs = h.runs("down").await;
    assert_eq!(
        runs.len(),
        1,
        "one run, for the successful upstream run only"
    );
    let upstream = &h.runs("up").await[1];
    assert_eq!(runs[0].logical_date, upstream.logical_date);
    assert_eq!(runs[0].data_interval_start, upstream.data_interval_start);
    assert_eq!(runs[0].data_interval_end, upstream.data_interval_end);
    assert_eq!(runs[0].run_type, RunType::Manual);
    // a restart looks at the upstream's successes again: recorded, so no second run
    let mut h = h.restart(EngineConfig::default()).await;
    h.upsert(up(), t0 + Duration::minutes(70));
    h.upsert(down(), t0 + Duration::minutes(70));
    for m in [70, 71] {
        h.tick(t0 + Duration::minutes(m)).await;
    }
    assert_eq!(h.runs("down").await.len(), 1);
}

#[tokio::test]
async fn a_depends_on_run_waits_for_its_upstreams_data_and_fails_after_its_timeout() {
    let db = common::fresh_store("eng_depends_on").await;
    let mut h = Harness::new(db.clone(), EngineConfig::default()).await;
    let t0 = utc("2025-01-01T00:00:00Z");
    h.upsert(info("up", t0, spec("schedule: '0 * * * *'")), t0);
    h.upsert(
        info(
            "down",
            t0,
            spec("schedule: '0 * * * *'\ndependsOn: [{dag: up}]\ndependencyTimeoutSeconds: 1800"),
        ),
        t0,
    );
    h.tick(t0).await;
    h.tick(t0 + Duration::seconds(1)).await;
    // up's 00:00 run runs; down's waits for it
    assert_eq!(h.runs("up").await.len(), 1);
    assert!(h.runs("down").await.is_empty(), "down waits for up's data");
    let up = h.runs("up").await.remove(0);
    let changes = dag_operator::store::Changes {
        run_ends: vec![dag_operator::store::RunEnd {
            id: up.id,
            state: RunState::Success,
            at: t0 + Duration::minutes(5),
        }],
        ..Default::default()
    };
    db.write_changes(&changes).await.expect("end up");
    h.engine.runs_ended(&[up.id]);
    h.tick(t0 + Duration::minutes(5)).await;
    let down = h.runs("down").await;
    assert_eq!(down.len(), 1, "up's success covers down's interval");
    assert_eq!(down[0].state, RunState::Running);
    // the next hour up fails: down's 01:00 run waits, then fails after 30 minutes
    h.finish_all(RunState::Success, t0 + Duration::minutes(6))
        .await;
    h.tick(t0 + Duration::hours(1)).await;
    h.finish_all(RunState::Failed, t0 + Duration::minutes(65))
        .await;
    h.tick(t0 + Duration::minutes(66)).await;
    assert_eq!(h.runs("down").await.len(), 1, "01:00 waits");
    h.tick(t0 + Duration::minutes(89)).await;
    assert_eq!(h.runs("down").await.len(), 1, "not yet timed out");
    h.tick(t0 + Duration::minutes(90)).await;
    let down = h.runs("down").await;
    assert_eq!(down.len(), 2);
    assert_eq!(down[1].logical_date, t0 + Duration::hours(1));
    assert_eq!(down[1].state, RunState::Failed);
    let tries = db.task_instances(&[down[1].id]).await.expect("tries");
    assert!(
        tries.iter().all(|t| t.state == "upstream_failed"),
        "{tries:?}"
    );
    let events = h.events("DependencyTimeout");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("no successful run of up"), "{events:?}");
}

/// The schedule intervals and stored run ends the engine told the metrics.
fn telemetry(
    outputs: &[Output],
) -> (
    Vec<(String, Option<f64>)>,
    Vec<dag_operator::store::LastEnds>,
) {
    let mut intervals = Vec::new();
    let mut ends = Vec::new();
    for o in outputs {
        match o {
            Output::Telemetry(EngineTelemetry::ScheduleInterval { dag, secs }) => {
                intervals.push((dag.name.clone(), *secs))
            }
            Output::Telemetry(EngineTelemetry::LastEnds(e)) => ends.push(e.clone()),
            _ => {}
        }
    }
    (intervals, ends)
}

#[tokio::test]
async fn each_dag_tells_its_schedule_interval_and_a_restart_its_last_run_ends() {
    let db = common::fresh_store("eng_interval").await;
    let mut h = Harness::new(db, EngineConfig::default()).await;
    // a Monday
    let t0 = utc("2025-03-03T00:30:00Z");
    h.upsert(info("hourly", t0, spec("schedule: '0 * * * *'")), t0);
    h.upsert(info("weekdays", t0, spec("schedule: '0 9 * * 1-5'")), t0);
    h.upsert(
        info("paused", t0, spec("schedule: '0 * * * *'\nsuspend: true")),
        t0,
    );
    h.upsert(info("manual", t0, spec("")), t0);
    let (intervals, _) = telemetry(&h.outputs());
    assert_eq!(
        intervals,
        [
            ("hourly".to_string(), Some(3600.0)),
            ("weekdays".to_string(), Some(3.0 * 86_400.0)),
            // suspended and trigger-only DAGs: no series
            ("paused".to_string(), None),
            ("manual".to_string(), None),
        ]
    );
    // suspending the hourly one takes its series away
    h.upsert(
        info("hourly", t0, spec("schedule: '0 * * * *'\nsuspend: true")),
        t0,
    );
    let (intervals, _) = telemetry(&h.outputs());
    assert_eq!(intervals, [("hourly".to_string(), None)]);
    h.upsert(info("hourly", t0, spec("schedule: '0 * * * *'")), t0);
    let t1 = t0 + Duration::minutes(30);
    h.tick(t1).await;
    let ended = t1 + Duration::minutes(5);
    h.finish_all(RunState::Success, ended).await;
    let t2 = t1 + Duration::hours(1);
    h.tick(t2).await;
    h.finish_all(RunState::Failed, t2 + Duration::minutes(1))
        .await;
    let (_, ends) = telemetry(&h.outputs());
    assert!(ends.is_empty(), "a fresh start had nothing to tell");

    // restarted: the ends come from PostgreSQL, told as each DAG is taken up
    let mut h = h.restart(EngineConfig::default()).await;
    h.upsert(info("hourly", t0, spec("schedule: '0 * * * *'")), t2);
    h.upsert(info("manual", t0, spec("")), t2);
    h.tick(t2 + Duration::minutes(2)).await;
    let (_, ends) = telemetry(&h.outputs());
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].dag, DagKey::new("ns", "hourly"));
    assert_eq!(ends[0].success, Some(ended));
    assert_eq!(ends[0].failure, Some(t2 + Duration::minutes(1)));
    // once
    h.tick(t2 + Duration::minutes(3)).await;
    assert!(telemetry(&h.outputs()).1.is_empty());
}
