//! A model-based test of the engine (issue 13): random sequences of what happens to DAGs,
//! triggers and Backfills — created, changed, made invalid and fixed, suspended and resumed,
//! deleted and created again, runs ending, the clock moving, the process crashing (also in the
//! middle of a pass, at a random store call) and starting again from PostgreSQL — against the
//! real engine, a real PostgreSQL and the in-process gate. After every step and at the end it
//! checks what must always hold:
//! - at most one run per (DAG, logical date), and a DAG's scheduled runs appear in tick order
//!   (no tick already run or skipped is created again);
//! - a scheduled run is a tick of its DAG's current schedule, never before the DAG was created
//!   or before the schedule began;
//! - every trigger value yields at most one run, and one record; at the end, every value of a
//!   live DAG is recorded (a run, or a refusal);
//! - a Succeeded Backfill has a run for every planned date, and every run it made succeeded;
//! - no running run without its lease (and at the end, the gate's count is the running runs);
//! - nothing of a deleted DAG stays running.

mod common;
#[path = "support/engine.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use dag_operator::engine::{
    BackfillInfo, BackfillPhase, Command, DagInfo, Engine, EngineConfig, EngineStatus, Output,
    TriggerRequest,
};
use dag_operator::gate::{Gate, MemoryGate, key as gate_key};
use dag_operator::schedule::Schedule;
use dag_operator::store::*;
use proptest::prelude::*;
use tokio::sync::mpsc;

/// A store that, once its countdown of calls runs out, fails every call (the database gone
/// in the middle of a pass, just before the process dies).
#[derive(Clone)]
struct Faulty {
    inner: PgStore,
    /// calls left before failing; negative: never
    countdown: Arc<AtomicI64>,
    failing: Arc<AtomicBool>,
}

impl Faulty {
    fn new(inner: PgStore) -> Self {
        Faulty {
            inner,
            countdown: Arc::new(AtomicI64::new(-1)),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left == 0 {
            self.failing.store(true, Ordering::SeqCst);
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        if left > 0 {
            self.countdown.store(left - 1, Ordering::SeqCst);
        }
        Ok(())
    }
}

macro_rules! pass {
    ($self:ident . $name:ident ( $($arg:expr),* )) => {{
        $self.check()?;
        $self.inner.$name($($arg),*).await
    }};
}

impl RunStore for Faulty {
    async fn ping(&self) -> Result<(), StoreError> {
        pass!(self.ping())
    }
    async fn admit(&self, a: &Admission) -> Result<Admitted, StoreError> {
        pass!(self.admit(a))
    }
    async fn dag_records(&self, d: &[DagKey]) -> Result<Vec<DagRecord>, StoreError> {
        pass!(self.dag_records(d))
    }
    async fn recorded_triggers(
        &self,
        v: &[(DagKey, String)],
    ) -> Result<Vec<(DagKey, String)>, StoreError> {
        pass!(self.recorded_triggers(v))
    }
    async fn backfill_record(&self, b: &BackfillRef) -> Result<Option<BackfillRecord>, StoreError> {
        pass!(self.backfill_record(b))
    }
    async fn save_backfill(&self, b: &BackfillRef, r: &BackfillRecord) -> Result<(), StoreError> {
        pass!(self.save_backfill(b, r))
    }
    async fn backfill_done(
        &self,
        b: &BackfillRef,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        pass!(self.backfill_done(b, from, to))
    }
    async fn running_runs(&self, ns: Option<&str>) -> Result<Vec<RunRow>, StoreError> {
        pass!(self.running_runs(ns))
    }
    async fn last_ends(
        &self,
        ns: Option<&str>,
    ) -> Result<Vec<dag_operator::store::LastEnds>, StoreError> {
        pass!(self.last_ends(ns))
    }
    async fn save_specs(&self, s: &[SpecRow]) -> Result<(), StoreError> {
        pass!(self.save_specs(s))
    }
    async fn specs(&self, h: &[String]) -> Result<Vec<SpecRow>, StoreError> {
        pass!(self.specs(h))
    }
    async fn pin_spec(&self, ids: &[uuid::Uuid], h: &str) -> Result<(), StoreError> {
        pass!(self.pin_spec(ids, h))
    }
    async fn cancel_runs(&self, ids: &[uuid::Uuid]) -> Result<u64, StoreError> {
        pass!(self.cancel_runs(ids))
    }
    async fn run(&self, id: uuid::Uuid) -> Result<Option<RunRow>, StoreError> {
        pass!(self.run(id))
    }
    async fn pending_actions(
        &self,
        ns: Option<&str>,
        limit: i64,
    ) -> Result<Vec<dag_operator::store::RunAction>, StoreError> {
        pass!(self.pending_actions(ns, limit))
    }
    async fn write_action(
        &self,
        w: &dag_operator::store::ActionWrite,
    ) -> Result<dag_operator::store::ActionWritten, StoreError> {
        pass!(self.write_action(w))
    }
    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        pass!(self.list_runs(f))
    }
    async fn task_instances(&self, ids: &[uuid::Uuid]) -> Result<Vec<TaskRow>, StoreError> {
        pass!(self.task_instances(ids))
    }
    async fn write_changes(&self, c: &Changes) -> Result<Applied, StoreError> {
        pass!(self.write_changes(c))
    }
    async fn recent_runs(&self, d: &[DagKey], l: i64) -> Result<Vec<RecentRuns>, StoreError> {
        pass!(self.recent_runs(d, l))
    }
    async fn runs_between(
        &self,
        d: &DagKey,
        s: DateTime<Utc>,
        e: DateTime<Utc>,
    ) -> Result<Vec<DateRun>, StoreError> {
        pass!(self.runs_between(d, s, e))
    }
    async fn runs_page(
        &self,
        d: &DagKey,
        s: DateTime<Utc>,
        e: DateTime<Utc>,
        l: i64,
    ) -> Result<Vec<DateRun>, StoreError> {
        pass!(self.runs_page(d, s, e, l))
    }
    async fn backfill_counts(&self, b: &BackfillRef) -> Result<BackfillCounts, StoreError> {
        pass!(self.backfill_counts(b))
    }
}

// ---- the world the engine is told about ------------------------------------------------

const SCHEDULES: [&str; 3] = ["*/10 * * * *", "0 * * * *", "*/15 * * * *"];
const POLICIES: [&str; 3] = ["Allow", "Forbid", "Replace"];
const DAGS: u8 = 3;
const BACKFILLS: u8 = 2;

#[derive(Clone, Debug)]
enum Op {
    Create(u8),
    ChangeSchedule(u8, u8),
    MakeInvalid(u8),
    Fix(u8),
    Suspend(u8),
    Resume(u8),
    Delete(u8),
    Trigger(u8),
    Backfill {
        slot: u8,
        dag: u8,
        hours: u8,
        rerun_all: bool,
    },
    SuspendBackfill(u8),
    ResumeBackfill(u8),
    DeleteBackfill(u8),
    Complete {
        pick: u8,
        fail: bool,
    },
    Advance(u16),
    Crash,
    /// the store fails from its n-th call of the next pass on; then the process dies
    CrashMidPass(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DAGS;
    prop_oneof![
        3 => d.clone().prop_map(Op::Create),
        1 => (d.clone(), 0..SCHEDULES.len() as u8).prop_map(|(i, s)| Op::ChangeSchedule(i, s)),
        1 => d.clone().prop_map(Op::MakeInvalid),
        1 => d.clone().prop_map(Op::Fix),
        1 => d.clone().prop_map(Op::Suspend),
        1 => d.clone().prop_map(Op::Resume),
        1 => d.clone().prop_map(Op::Delete),
        2 => d.clone().prop_map(Op::Trigger),
        2 => (0..BACKFILLS, d.clone(), 1u8..12, any::<bool>())
            .prop_map(|(slot, dag, hours, rerun_all)| Op::Backfill { slot, dag, hours, rerun_all }),
        1 => (0..BACKFILLS).prop_map(Op::SuspendBackfill),
        1 => (0..BACKFILLS).prop_map(Op::ResumeBackfill),
        1 => (0..BACKFILLS).prop_map(Op::DeleteBackfill),
        4 => (any::<u8>(), prop::bool::weighted(0.3)).prop_map(|(pick, fail)| Op::Complete { pick, fail }),
        4 => (1u16..90).prop_map(Op::Advance),
        1 => Just(Op::Crash),
        1 => (0u8..8).prop_map(Op::CrashMidPass),
    ]
}

#[derive(Clone, Debug)]
struct DagModel {
    uid: String,
    created: DateTime<Utc>,
    schedule: u8,
    /// when the current schedule began: the engine learns a schedule when it is told of the
    /// DAG (valid); a change made and undone while the DAG was invalid is no change
    since: DateTime<Utc>,
    told: u8,
    valid: bool,
    suspended: bool,
    triggers: Vec<String>,
}

#[derive(Clone, Debug)]
struct BackfillModel {
    dag: u8,
    /// the DAG object and schedule when it was created (its plan is of that schedule)
    planned_on: Option<(String, u8)>,
    uid: String,
    hours: u8,
    rerun_all: bool,
    suspended: bool,
}

struct World {
    now: DateTime<Utc>,
    dags: BTreeMap<u8, DagModel>,
    /// uids of DAG objects deleted (their runs must not stay running)
    gone: BTreeSet<String>,
    backfills: BTreeMap<u8, BackfillModel>,
    seq: u32,
}

fn dag_name(i: u8) -> String {
    format!("d{i}")
}

fn bf_name(slot: u8) -> String {
    format!("b{slot}")
}

fn schedule_of(m: &DagModel) -> Schedule {
    Schedule::parse(SCHEDULES[m.schedule as usize], Tz::UTC, None).expect("schedule")
}

const BF_START: &str = "2024-01-01T00:00:00Z";

impl World {
    fn next(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    fn info(&self, i: u8) -> Option<DagInfo> {
        let m = self.dags.get(&i)?;
        let yaml = format!(
            "schedule: '{}'\nmaxActiveRuns: 2\nconcurrencyPolicy: {}\nsuspend: {}\nmaxCatchupRuns: 3\ntasks:\n- {{name: a, container: {{image: busybox}}}}\n",
            SCHEDULES[m.schedule as usize], POLICIES[i as usize], m.suspended
        );
        let spec: dag_operator::api::DagSpec = serde_yaml::from_str(&yaml).expect("spec");
        let mut info = DagInfo::from_spec(
            DagKey::new("ns", dag_name(i)),
            &m.uid,
            m.created,
            spec,
            Some(schedule_of(m)),
        );
        info.triggers = m
            .triggers
            .iter()
            .map(|v| TriggerRequest {
                value: v.clone(),
                params: None,
                logical_date: None,
                malformed: None,
                removable: true,
            })
            .collect();
        Some(info)
    }

    fn backfill(&self, slot: u8) -> Option<BackfillInfo> {
        let b = self.backfills.get(&slot)?;
        let start: DateTime<Utc> = BF_START.parse().expect("date");
        let end = start + Duration::hours(b.hours as i64);
        let yaml = format!(
            "dagRef: {{name: {}}}\nstart: {}\nend: {}\nconcurrency: 2\nsuspend: {}\nreprocess: {}\n",
            dag_name(b.dag),
            start.to_rfc3339(),
            end.to_rfc3339(),
            b.suspended,
            if b.rerun_all { "All" } else { "None" }
        );
        Some(BackfillInfo {
            key: BackfillKey::new("ns", bf_name(slot)),
            uid: b.uid.clone(),
            generation: Some(1),
            spec: serde_yaml::from_str(&yaml).expect("backfill"),
        })
    }

    /// What the controllers would tell a freshly started engine.
    fn replay(&self) -> Vec<Command> {
        let mut out = vec![Command::Listed(
            self.dags
                .iter()
                .map(|(i, m)| (DagKey::new("ns", dag_name(*i)), m.uid.clone()))
                .collect::<HashMap<_, _>>(),
        )];
        for (i, m) in &self.dags {
            if m.valid {
                out.push(Command::Upsert(Box::new(self.info(*i).expect("dag"))));
            } else {
                out.push(Command::Invalid(DagKey::new("ns", dag_name(*i))));
            }
        }
        for slot in self.backfills.keys() {
            out.push(Command::UpsertBackfill(Box::new(
                self.backfill(*slot).expect("bf"),
            )));
        }
        out
    }
}

struct Sim {
    world: World,
    pg: PgStore,
    store: Faulty,
    gate: MemoryGate,
    engine: Engine<Faulty>,
    out: mpsc::UnboundedReceiver<Output>,
    /// the latest phase each Backfill reported
    phases: HashMap<String, BackfillPhase>,
    /// the latest scheduled date seen per DAG name, and the run ids seen
    last_scheduled: HashMap<String, DateTime<Utc>>,
    seen: BTreeSet<uuid::Uuid>,
}

async fn engine(
    store: Faulty,
    gate: MemoryGate,
) -> (Engine<Faulty>, mpsc::UnboundedReceiver<Output>) {
    let (tx, out) = mpsc::unbounded_channel();
    let mut e = Engine::with_gate(EngineConfig::default(), store, gate, tx);
    e.load().await.expect("load");
    (e, out)
}

impl Sim {
    async fn new(pg: PgStore) -> Sim {
        let store = Faulty::new(pg.clone());
        let gate = MemoryGate::new(std::time::Duration::from_secs(3600));
        let (engine, out) = engine(store.clone(), gate.clone()).await;
        Sim {
            world: World {
                now: "2025-01-01T00:00:00Z".parse().expect("date"),
                dags: BTreeMap::new(),
                gone: BTreeSet::new(),
                backfills: BTreeMap::new(),
                seq: 0,
            },
            pg,
            store,
            gate,
            engine,
            out,
            phases: HashMap::new(),
            last_scheduled: HashMap::new(),
            seen: BTreeSet::new(),
        }
    }

    fn tell(&mut self, cmd: Command) {
        self.engine.apply(cmd, self.world.now);
    }

    fn upsert(&mut self, i: u8) {
        let now = self.world.now;
        if let Some(m) = self.world.dags.get_mut(&i) {
            if m.schedule != m.told {
                m.told = m.schedule;
                m.since = now;
            }
        }
        if let Some(info) = self.world.info(i) {
            self.tell(Command::Upsert(Box::new(info)));
        }
    }

    /// A new process: a fresh in-process gate, the same database, the world told again.
    async fn restart(&mut self) {
        self.store = Faulty::new(self.pg.clone());
        self.gate = MemoryGate::new(std::time::Duration::from_secs(3600));
        let (engine, out) = engine(self.store.clone(), self.gate.clone()).await;
        self.engine = engine;
        self.out = out;
        for cmd in self.world.replay() {
            self.tell(cmd);
        }
    }

    async fn apply(&mut self, op: &Op) {
        let now = self.world.now;
        match op.clone() {
            Op::Create(i) => {
                if !self.world.dags.contains_key(&i) {
                    let n = self.world.next();
                    self.world.dags.insert(
                        i,
                        DagModel {
                            uid: format!("uid-{i}-{n}"),
                            created: now,
                            schedule: i % SCHEDULES.len() as u8,
                            since: now,
                            told: i % SCHEDULES.len() as u8,
                            valid: true,
                            suspended: false,
                            triggers: Vec::new(),
                        },
                    );
                    self.upsert(i);
                }
            }
            Op::ChangeSchedule(i, s) => {
                if let Some(m) = self.world.dags.get_mut(&i) {
                    m.schedule = s;
                    if m.valid {
                        self.upsert(i);
                    }
                }
            }
            Op::MakeInvalid(i) => {
                if let Some(m) = self.world.dags.get_mut(&i) {
                    m.valid = false;
                    self.tell(Command::Invalid(DagKey::new("ns", dag_name(i))));
                }
            }
            Op::Fix(i) => {
                if let Some(m) = self.world.dags.get_mut(&i) {
                    m.valid = true;
                    self.upsert(i);
                }
            }
            Op::Suspend(i) | Op::Resume(i) => {
                if let Some(m) = self.world.dags.get_mut(&i) {
                    m.suspended = matches!(op, Op::Suspend(_));
                    if m.valid {
                        self.upsert(i);
                    }
                }
            }
            Op::Delete(i) => {
                if let Some(m) = self.world.dags.remove(&i) {
                    self.world.gone.insert(m.uid.clone());
                    self.tell(Command::Deleted {
                        key: DagKey::new("ns", dag_name(i)),
                        uid: m.uid,
                    });
                }
            }
            Op::Trigger(i) => {
                let n = self.world.next();
                if let Some(m) = self.world.dags.get_mut(&i) {
                    m.triggers.push(format!("t{n}"));
                    if m.valid {
                        self.upsert(i);
                    }
                }
            }
            Op::Backfill {
                slot,
                dag,
                hours,
                rerun_all,
            } => {
                if !self.world.backfills.contains_key(&slot) {
                    let n = self.world.next();
                    let planned_on = self
                        .world
                        .dags
                        .get(&dag)
                        .filter(|m| m.valid)
                        .map(|m| (m.uid.clone(), m.schedule));
                    self.world.backfills.insert(
                        slot,
                        BackfillModel {
                            dag,
                            planned_on,
                            uid: format!("bf-{slot}-{n}"),
                            hours,
                            rerun_all,
                            suspended: false,
                        },
                    );
                    let info = self.world.backfill(slot).expect("bf");
                    self.tell(Command::UpsertBackfill(Box::new(info)));
                }
            }
            Op::SuspendBackfill(slot) | Op::ResumeBackfill(slot) => {
                if let Some(b) = self.world.backfills.get_mut(&slot) {
                    b.suspended = matches!(op, Op::SuspendBackfill(_));
                    let info = self.world.backfill(slot).expect("bf");
                    self.tell(Command::UpsertBackfill(Box::new(info)));
                }
            }
            Op::DeleteBackfill(slot) => {
                if self.world.backfills.remove(&slot).is_some() {
                    self.tell(Command::RemoveBackfill(BackfillKey::new(
                        "ns",
                        bf_name(slot),
                    )));
                }
            }
            Op::Complete { pick, fail } => {
                let running = self.pg.running_runs(None).await.expect("running");
                if !running.is_empty() {
                    let run = &running[pick as usize % running.len()];
                    let state = if fail {
                        RunState::Failed
                    } else {
                        RunState::Success
                    };
                    self.end(&[run.id], state).await;
                }
            }
            Op::Advance(minutes) => self.world.now += Duration::minutes(minutes as i64),
            Op::Crash => self.restart().await,
            Op::CrashMidPass(n) => {
                self.store.countdown.store(n as i64, Ordering::SeqCst);
                let _ = self.engine.tick(self.world.now).await;
                self.restart().await;
            }
        }
        let _ = self.engine.tick(self.world.now).await;
    }

    /// Ends runs as the executor would, and tells the engine.
    async fn end(&mut self, ids: &[uuid::Uuid], state: RunState) {
        let changes = Changes {
            run_ends: ids
                .iter()
                .map(|id| RunEnd {
                    id: *id,
                    state,
                    at: self.world.now,
                })
                .collect(),
            ..Default::default()
        };
        self.pg.write_changes(&changes).await.expect("end runs");
        self.tell(Command::RunsEnded(ids.to_vec()));
    }

    fn drain(&mut self) {
        while let Ok(o) = self.out.try_recv() {
            if let Output::Status(EngineStatus::Backfill(key, p)) = o {
                if std::env::var("MODEL_DEBUG").is_ok() {
                    eprintln!("{} {:?} {} {}", key.name, p.phase, p.progress(), p.message);
                }
                self.phases.insert(key.name.clone(), p.phase);
            }
        }
    }

    async fn all_runs(&self) -> Vec<RunRow> {
        self.pg
            .list_runs(&RunFilter::default())
            .await
            .expect("runs")
    }

    /// What must hold after every step.
    async fn check_step(&mut self) {
        self.drain();
        let runs = self.all_runs().await;
        // at most one run per (DAG, logical date)
        let mut identities = BTreeSet::new();
        for r in &runs {
            assert!(
                identities.insert((r.dag.clone(), r.logical_date)),
                "two runs of {} at {}",
                r.dag,
                r.logical_date
            );
        }
        // new scheduled runs: in tick order, ticks of the current schedule, never before the
        // DAG's creation or its schedule's start
        let mut new: Vec<&RunRow> = runs
            .iter()
            .filter(|r| r.run_type == RunType::Scheduled && !self.seen.contains(&r.id))
            .collect();
        new.sort_by_key(|r| r.logical_date);
        for r in new {
            let last = self.last_scheduled.get(&r.dag.name).copied();
            assert!(
                last.is_none_or(|l| r.logical_date > l),
                "scheduled run of {} at {} after one at {:?}: a tick run or skipped came again",
                r.dag,
                r.logical_date,
                last
            );
            self.last_scheduled
                .insert(r.dag.name.clone(), r.logical_date);
            if let Some((_, m)) = self
                .world
                .dags
                .iter()
                .find(|(i, m)| dag_name(**i) == r.dag.name && m.uid == r.dag_uid)
            {
                assert!(
                    r.logical_date >= m.created && r.logical_date >= m.since,
                    "scheduled run of {} at {} before its DAG ({}) or schedule ({}) began",
                    r.dag,
                    r.logical_date,
                    m.created,
                    m.since
                );
                assert!(
                    schedule_of(m).is_tick(r.logical_date),
                    "scheduled run of {} at {} is not a tick of {:?}",
                    r.dag,
                    r.logical_date,
                    SCHEDULES[m.schedule as usize]
                );
            }
        }
        self.seen.extend(runs.iter().map(|r| r.id));
        // triggers: one record per value; each created run is a manual run of the DAG
        let triggers: Vec<(String, String, Option<uuid::Uuid>, String)> =
            sqlx::query_as("SELECT dag_name, value, run_id, outcome FROM dag_triggers")
                .fetch_all(self.pg.pool())
                .await
                .expect("triggers");
        let by_id: HashMap<uuid::Uuid, &RunRow> = runs.iter().map(|r| (r.id, r)).collect();
        let mut trigger_runs = BTreeSet::new();
        for (dag, value, run_id, outcome) in &triggers {
            if outcome == "created" {
                let id =
                    run_id.unwrap_or_else(|| panic!("trigger {value} of {dag} created no run"));
                let run = by_id
                    .get(&id)
                    .unwrap_or_else(|| panic!("trigger {value}'s run is gone"));
                assert_eq!(run.run_type, RunType::Manual);
                assert!(trigger_runs.insert(id), "two trigger values, one run");
            }
        }
        let manual = runs
            .iter()
            .filter(|r| r.run_type == RunType::Manual)
            .count();
        assert_eq!(
            manual,
            trigger_runs.len(),
            "a manual run without its trigger's record"
        );
        // no running run of a deleted DAG once a pass has seen the deletion; and every running
        // run holds its lease
        let running: Vec<&RunRow> = runs
            .iter()
            .filter(|r| r.state == RunState::Running)
            .collect();
        for r in &running {
            assert!(
                !self.world.gone.contains(&r.dag_uid),
                "run {} of deleted DAG {} still running",
                r.logical_date,
                r.dag
            );
        }
        let usage = self.gate.usage(gate_key::GLOBAL_RUNS).await.expect("usage") as usize;
        assert!(
            usage >= running.len(),
            "{} runs running, only {usage} leases: a limit could be exceeded",
            running.len()
        );
        // a Succeeded Backfill: a run for every planned date, every run it made succeeded
        for (slot, b) in &self.world.backfills {
            if self.phases.get(&bf_name(*slot)) != Some(&BackfillPhase::Succeeded) {
                continue;
            }
            let Some(dag) = self.world.dags.get(&b.dag) else {
                continue;
            };
            // planned on this DAG object and schedule (else the plan is of another)
            if b.planned_on.as_ref() != Some(&(dag.uid.clone(), dag.schedule)) {
                continue;
            }
            let start: DateTime<Utc> = BF_START.parse().expect("date");
            let end = start + Duration::hours(b.hours as i64);
            let planned: Vec<DateTime<Utc>> = schedule_of(dag)
                .ticks_after(start - Duration::seconds(1))
                .take_while(|t| *t < end)
                .collect();
            let of_dag: HashMap<DateTime<Utc>, &RunRow> = runs
                .iter()
                .filter(|r| r.dag.name == dag_name(b.dag))
                .map(|r| (r.logical_date, r))
                .collect();
            for date in planned {
                let run = of_dag.get(&date).unwrap_or_else(|| {
                    panic!("{} Succeeded without a run at {date}", bf_name(*slot))
                });
                if run.backfill_name.as_deref() == Some(bf_name(*slot).as_str()) {
                    assert_eq!(
                        run.state,
                        RunState::Success,
                        "{} Succeeded with a run {:?}",
                        bf_name(*slot),
                        run.state
                    );
                }
            }
        }
    }

    /// Lets everything finish: runs end (successfully), time passes, passes run, until
    /// nothing has run for a few rounds.
    async fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..400 {
            self.world.now += Duration::seconds(30);
            let running: Vec<uuid::Uuid> = self
                .pg
                .running_runs(None)
                .await
                .expect("running")
                .iter()
                .map(|r| r.id)
                .collect();
            if running.is_empty() {
                quiet += 1;
                if quiet > 5 {
                    break;
                }
            } else {
                quiet = 0;
                self.end(&running, RunState::Success).await;
            }
            let _ = self.engine.tick(self.world.now).await;
            let _ = self.engine.tick(self.world.now).await;
            self.check_step().await;
        }
    }

    /// What must hold once everything settled.
    async fn check_end(&mut self) {
        self.drain();
        let triggers: BTreeSet<(String, String)> =
            sqlx::query_as("SELECT dag_name, value FROM dag_triggers")
                .fetch_all(self.pg.pool())
                .await
                .expect("triggers")
                .into_iter()
                .collect();
        for (i, m) in &self.world.dags {
            if !m.valid {
                continue;
            }
            for v in &m.triggers {
                assert!(
                    triggers.contains(&(dag_name(*i), v.clone())),
                    "trigger {v} of live DAG {} never handled",
                    dag_name(*i)
                );
            }
        }
        let running = self.pg.running_runs(None).await.expect("running").len();
        let usage = self.gate.usage(gate_key::GLOBAL_RUNS).await.expect("usage") as usize;
        assert_eq!(
            usage,
            running,
            "the gate counts exactly the running runs: {:?}",
            self.gate.holders(gate_key::GLOBAL_RUNS)
        );
        for (slot, b) in &self.world.backfills {
            let dag_live = self.world.dags.get(&b.dag).is_some_and(|m| m.valid);
            if !b.suspended && dag_live {
                let phase = self.phases.get(&bf_name(*slot)).copied();
                assert!(
                    matches!(
                        phase,
                        Some(BackfillPhase::Succeeded) | Some(BackfillPhase::Failed)
                    ),
                    "{} never finished: {phase:?}",
                    bf_name(*slot)
                );
            }
        }
    }
}

async fn play(ops: Vec<Op>) {
    let pg = common::fresh_store("model").await;
    let mut sim = Sim::new(pg).await;
    for op in &ops {
        sim.apply(op).await;
        sim.check_step().await;
    }
    sim.settle().await;
    sim.check_end().await;
}

proptest! {
    // PROPTEST_CASES=500 for a longer search
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_engine_keeps_its_invariants(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(play(ops));
    }
}

/// Counterexamples the model found (shrunk), kept as regression tests.
mod found {
    use super::*;

    fn run(ops: Vec<Op>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(play(ops));
    }

    #[test]
    fn a_backfill_running_across_a_crash_finishes() {
        run(vec![
            Op::Create(1),
            Op::Backfill {
                slot: 0,
                dag: 1,
                hours: 1,
                rerun_all: false,
            },
            Op::Crash,
        ]);
    }

    #[test]
    fn two_backfills_over_one_dag_across_a_crash_mid_pass_finish() {
        run(vec![
            Op::Crash,
            Op::Backfill {
                slot: 0,
                dag: 2,
                hours: 2,
                rerun_all: false,
            },
            Op::Advance(53),
            Op::Backfill {
                slot: 1,
                dag: 2,
                hours: 4,
                rerun_all: false,
            },
            Op::Trigger(2),
            Op::Create(2),
            Op::CrashMidPass(2),
        ]);
    }

    #[test]
    fn a_schedule_changed_and_changed_back_while_invalid_is_no_change() {
        run(vec![
            Op::Create(1),
            Op::MakeInvalid(1),
            Op::ChangeSchedule(1, 2),
            Op::Advance(61),
            Op::ChangeSchedule(1, 1),
            Op::Fix(1),
        ]);
    }

    #[test]
    fn a_trigger_at_a_tick_beside_a_backfill_leaks_no_lease() {
        run(vec![
            Op::Backfill {
                slot: 0,
                dag: 2,
                hours: 1,
                rerun_all: false,
            },
            Op::Create(2),
            Op::Trigger(2),
        ]);
    }
}
