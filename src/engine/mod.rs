//! The scheduler (SPEC §3, §4): one timer per DAG, catch-up, the admission queue, the
//! in-process limits (`--max-concurrent-runs`, `maxActiveRuns`), overlap policies, starting
//! deadlines, suspend, manual triggers, and batched persistence of admitted runs.
//!
//! The engine owns time: callers pass `now` to [`Engine::apply`] and [`Engine::tick`], so the
//! same code runs under the production loop ([`Engine::run`]) and under tests with a
//! controllable clock. It talks to PostgreSQL through [`RunStore`] and reports what users
//! should see (status fields, events) as [`Output`]s.

mod backfill;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::api::DAG;
use crate::api::dag::{ConcurrencyPolicy, DagSpec};
use crate::executor::AdmittedRun;
use crate::gate::{self, Claim, Gate, GateError, Grant, MemoryGate, key as gate_key};
use crate::queue::{AdmissionQueue, Entry, EntryId, RunClass};
use crate::schedule::{CatchupPolicy, CatchupRequest, Schedule, catch_up, data_interval};
use crate::store::{DagKey, NewRun, NewTask, Rerun, RunStore, RunType, SpecRow, StoreError};
use crate::telemetry::GateScope;

pub use backfill::{BackfillInfo, BackfillReport, PLANNED_DATES_SHOWN};

/// Operator-wide settings the engine applies.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub default_tz: Tz,
    pub enable_catchup: bool,
    pub max_catchup_runs: u32,
    pub max_concurrent_runs: u32,
    /// longest gap between passes
    pub schedule_interval: Duration,
    pub priority_aging: Duration,
    /// a Backfill planning more runs is Invalid
    pub max_backfill_runs: u64,
    /// the namespace watched (none: all): only its running runs are adopted
    pub namespace: Option<String>,
    /// how often the running runs are read again from PostgreSQL (the executor reports each
    /// run's end; this catches anything missed)
    pub resync_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            default_tz: Tz::UTC,
            enable_catchup: true,
            max_catchup_runs: 50,
            max_concurrent_runs: 100,
            schedule_interval: Duration::from_secs(10),
            priority_aging: Duration::from_secs(300),
            max_backfill_runs: 1_000_000,
            namespace: None,
            resync_interval: Duration::from_secs(300),
        }
    }
}

/// A manual trigger read from the DAG's annotations (SPEC §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerRequest {
    /// the annotation's value
    pub value: String,
    /// the raw `trigger-params` annotation, if any
    pub params: Option<String>,
}

/// What the controller knows of a valid DAG.
#[derive(Clone, Debug)]
pub struct DagInfo {
    pub key: DagKey,
    /// the object as the watch cache holds it (shared, not copied)
    pub object: Arc<DAG>,
    pub schedule: Option<Schedule>,
    pub trigger: Option<TriggerRequest>,
    /// `status.lastHandledTrigger` as last written
    pub last_handled_trigger: Option<String>,
}

/// Changes the controller hands to the engine.
#[derive(Debug)]
pub enum Command {
    Upsert(Box<DagInfo>),
    /// the DAG became invalid: no new runs; its running runs go on with the spec they were
    /// admitted with
    Invalid(DagKey),
    /// the DAG object `uid` was deleted: its running runs are cancelled
    Deleted {
        key: DagKey,
        uid: String,
    },
    /// every DAG that exists (in the watched namespaces), after a (re)list: running runs of
    /// any other DAG object are cancelled
    Listed(HashMap<DagKey, String>),
    /// runs ended (the executor finished them): their slots are free
    RunsEnded(Vec<Uuid>),
    /// a Backfill was created or changed
    UpsertBackfill(Box<BackfillInfo>),
    /// a Backfill was deleted: no more admissions; its running runs finish
    RemoveBackfill(DagKey),
}

/// The scheduling part of a DAG's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulingStatus {
    pub active_runs: i32,
    pub queued_runs: i32,
    pub last_schedule_time: Option<DateTime<Utc>>,
    pub next_schedule_time: Option<DateTime<Utc>>,
    pub last_handled_trigger: Option<String>,
    pub suspended: bool,
}

/// What the engine reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Status(DagKey, SchedulingStatus),
    Event {
        dag: DagKey,
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// reachability of the store changed
    StoreHealth(bool),
    /// reachability of the gate changed (false: admission paused, fail closed)
    GateHealth(bool),
    /// runs were admitted and persisted
    RunsCreated {
        run_type: RunType,
        count: usize,
        delays_secs: Vec<f64>,
    },
    /// runs were admitted and persisted: the executor runs them
    RunsAdmitted(Vec<AdmittedRun>),
    /// runs were cancelled (concurrencyPolicy Replace, DAG deleted): their Pods must go
    RunsCancelled(Vec<(DagKey, Uuid)>),
    /// a Backfill's status changed (key: namespace and Backfill name)
    Backfill(DagKey, BackfillReport),
    /// an event on a Backfill (started, succeeded, failed, invalid)
    BackfillEvent {
        backfill: DagKey,
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// the gate refused a run (`rejected`) or failed to answer, for one limit
    Gate {
        scope: GateScope,
        rejected: bool,
    },
    /// after each pass: queue depth by class [backfill, scheduled, manual] and running runs
    Load {
        queue_depth: [usize; 3],
        active_runs: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum LimitKey {
    Dag(DagKey),
    /// a Backfill's `concurrency` (namespace, Backfill name)
    Backfill(DagKey),
}

#[derive(Clone, Debug)]
struct Pending {
    dag: DagKey,
    logical_date: DateTime<Utc>,
    run_type: RunType,
    params: serde_json::Value,
    enqueued_ms: i64,
    /// the Backfill that planned it
    backfill: Option<String>,
    /// an existing run to re-run in place (Backfill reprocess)
    rerun: Option<Uuid>,
}

struct DagState {
    info: DagInfo,
    /// expression and zone the schedule was parsed from, to notice changes
    fingerprint: Option<(String, Option<String>)>,
    /// ticks before this are never caught up (creation, schedule change)
    not_before: DateTime<Utc>,
    /// latest scheduled tick enqueued or persisted
    last_tick: Option<DateTime<Utc>>,
    /// latest scheduled tick persisted
    last_persisted: Option<DateTime<Utc>>,
    next_tick: Option<DateTime<Utc>>,
    active: Vec<ActiveRun>,
    queued: usize,
    handled_trigger: Option<String>,
    /// the spec version new runs are admitted with (made at the first admission)
    version: Option<Arc<SpecVersion>>,
}

impl DagInfo {
    pub fn new(key: DagKey, object: Arc<DAG>, schedule: Option<Schedule>) -> Self {
        DagInfo {
            key,
            object,
            schedule,
            trigger: None,
            last_handled_trigger: None,
        }
    }

    /// A DAG built from its parts rather than read from the API server (tests, benchmarks).
    pub fn from_spec(
        key: DagKey,
        uid: &str,
        created_at: DateTime<Utc>,
        spec: DagSpec,
        schedule: Option<Schedule>,
    ) -> Self {
        let mut object = DAG::new(&key.name, spec);
        object.metadata.namespace = Some(key.namespace.clone());
        object.metadata.uid = Some(uid.to_string());
        object.metadata.generation = Some(1);
        object.metadata.creation_timestamp = Some(crate::k8s::to_time(created_at));
        DagInfo::new(key, Arc::new(object), schedule)
    }

    pub fn spec(&self) -> &DagSpec {
        &self.object.spec
    }

    pub fn uid(&self) -> &str {
        self.object.metadata.uid.as_deref().unwrap_or_default()
    }

    /// When the DAG was created (ticks before it are never caught up).
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.object
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(crate::k8s::to_chrono)
    }
}

/// A running run, as the engine counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ActiveRun {
    id: Uuid,
    logical_date: DateTime<Utc>,
    /// the DAG object it belongs to (empty: unknown)
    dag_uid: String,
}

/// A spec version runs are admitted with: the DAG's spec as of a generation, its hash, and
/// whether it is stored.
#[derive(Debug)]
struct SpecVersion {
    generation: Option<i64>,
    hash: String,
    spec: Arc<DagSpec>,
    json: Option<serde_json::Value>,
}

impl DagState {
    fn max_active(&self) -> usize {
        self.info.spec().max_active_runs.max(1) as usize
    }
}

/// The scheduler.
pub struct Engine<S: RunStore, G: Gate = MemoryGate> {
    cfg: EngineConfig,
    store: S,
    /// the limits, shared with other replicas when it is Redis
    gate: G,
    gate_ok: bool,
    /// (dag, logical date) of runs whose slots go back at the next pass
    pending_release: Vec<(DagKey, DateTime<Utc>)>,
    last_renew: Option<std::time::Instant>,
    out: mpsc::UnboundedSender<Output>,
    dags: HashMap<DagKey, DagState>,
    timers: BTreeSet<(DateTime<Utc>, DagKey)>,
    queue: AdmissionQueue<LimitKey, Pending>,
    /// running runs of DAGs the engine does not know (yet), by DAG
    orphan_active: HashMap<DagKey, Vec<ActiveRun>>,
    /// running runs to cancel (their DAG object is gone), with why
    doomed: HashMap<Uuid, &'static str>,
    /// the DAG objects that exist, as last listed
    listed: Option<HashMap<DagKey, String>>,
    last_resync: Option<std::time::Instant>,
    /// last persisted scheduled tick per DAG, from the store at start
    known_last_ticks: HashMap<DagKey, DateTime<Utc>>,
    active_total: usize,
    store_ok: bool,
    dirty: BTreeSet<DagKey>,
    backfills: HashMap<DagKey, backfill::BackfillState>,
    /// (dag, logical date) of running Backfill runs -> the Backfill holding a slot for it
    bf_slots: HashMap<(DagKey, DateTime<Utc>), String>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The gate holder of a run: its identity, so replicas admitting the same run share a slot.
fn holder(dag: &DagKey, logical_date: DateTime<Utc>) -> String {
    format!(
        "{}/{}@{}",
        dag.namespace,
        dag.name,
        logical_date.to_rfc3339()
    )
}

impl<S: RunStore> Engine<S, MemoryGate> {
    /// An engine whose limits are held in process (a single active replica).
    pub fn new(cfg: EngineConfig, store: S, out: mpsc::UnboundedSender<Output>) -> Self {
        Engine::with_gate(cfg, store, MemoryGate::new(Duration::from_secs(30)), out)
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    pub fn with_gate(
        cfg: EngineConfig,
        store: S,
        gate: G,
        out: mpsc::UnboundedSender<Output>,
    ) -> Self {
        let aging = i64::try_from(cfg.priority_aging.as_millis()).unwrap_or(i64::MAX);
        Engine {
            cfg,
            store,
            gate,
            gate_ok: true,
            pending_release: Vec::new(),
            last_renew: None,
            out,
            dags: HashMap::new(),
            timers: BTreeSet::new(),
            queue: AdmissionQueue::new(aging),
            orphan_active: HashMap::new(),
            doomed: HashMap::new(),
            listed: None,
            last_resync: None,
            known_last_ticks: HashMap::new(),
            active_total: 0,
            store_ok: true,
            dirty: BTreeSet::new(),
            backfills: HashMap::new(),
            bf_slots: HashMap::new(),
        }
    }

    /// Reads what survived a restart: the last scheduled tick of each DAG and the running runs.
    pub async fn load(&mut self) -> Result<(), StoreError> {
        let last = self.store.last_scheduled_ticks().await?;
        let running = self
            .store
            .running_runs(self.cfg.namespace.as_deref())
            .await?;
        self.known_last_ticks = last.into_iter().collect();
        self.orphan_active.clear();
        self.bf_slots.clear();
        for run in running {
            if let Some(bf) = &run.backfill_name {
                self.bf_slots
                    .insert((run.dag.clone(), run.logical_date), bf.clone());
            }
            self.orphan_active
                .entry(run.dag.clone())
                .or_default()
                .push(ActiveRun {
                    id: run.id,
                    logical_date: run.logical_date,
                    dag_uid: run.dag_uid,
                });
        }
        for (key, state) in &mut self.dags {
            state.active = self.orphan_active.remove(key).unwrap_or_default();
            if let Some(t) = self.known_last_ticks.get(key) {
                state.last_persisted = state.last_persisted.max(Some(*t));
                state.last_tick = state.last_tick.max(Some(*t));
            }
        }
        self.recount_active();
        self.last_resync = Some(std::time::Instant::now());
        self.doom_unlisted();
        Ok(())
    }

    /// Marks for cancellation the running runs of `key` that `doomed` selects.
    fn doom(&mut self, key: &DagKey, why: &'static str, doomed: impl Fn(&ActiveRun) -> bool) {
        let runs = self
            .dags
            .get(key)
            .map(|s| s.active.as_slice())
            .into_iter()
            .chain(self.orphan_active.get(key).map(Vec::as_slice))
            .flatten();
        for run in runs {
            if doomed(run) {
                self.doomed.insert(run.id, why);
            }
        }
    }

    /// Cancels running runs whose DAG object does not exist in the last listing (deleted
    /// while the operator was down, or its namespace deleted), unless the DAG the engine
    /// knows is that object.
    fn doom_unlisted(&mut self) {
        let Some(listed) = self.listed.clone() else {
            return;
        };
        let keys: Vec<DagKey> = self
            .dags
            .keys()
            .chain(self.orphan_active.keys())
            .cloned()
            .collect();
        for key in keys {
            let known = self.dags.get(&key).map(|s| s.info.uid().to_string());
            let exists = listed.get(&key).cloned();
            self.doom(&key, "the DAG was deleted", |run| {
                !run.dag_uid.is_empty()
                    && exists.as_deref() != Some(run.dag_uid.as_str())
                    && known.as_deref() != Some(run.dag_uid.as_str())
            });
        }
    }

    /// Cancels the doomed runs in the store, gives their slots back and tells the executor
    /// (their Pods go). On a store error they stay doomed and are tried again next pass.
    async fn cancel_doomed(&mut self) -> Result<(), StoreError> {
        if self.doomed.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = self.doomed.keys().copied().collect();
        self.store.cancel_runs(&ids).await?;
        let doomed = std::mem::take(&mut self.doomed);
        let mut cancelled: Vec<(DagKey, Uuid)> = Vec::new();
        let mut by_dag: HashMap<DagKey, (usize, &'static str)> = HashMap::new();
        let lists = self
            .dags
            .iter_mut()
            .map(|(k, s)| (k, &mut s.active))
            .chain(self.orphan_active.iter_mut());
        for (key, runs) in lists {
            runs.retain(|run| {
                let Some(why) = doomed.get(&run.id) else {
                    return true;
                };
                self.pending_release.push((key.clone(), run.logical_date));
                cancelled.push((key.clone(), run.id));
                let entry = by_dag.entry(key.clone()).or_insert((0, why));
                entry.0 += 1;
                false
            });
        }
        self.orphan_active.retain(|_, v| !v.is_empty());
        self.recount_active();
        let ids: Vec<Uuid> = cancelled.iter().map(|(_, id)| *id).collect();
        self.backfill_runs_ended(&ids);
        for (key, (count, why)) in by_dag {
            self.dirty.insert(key.clone());
            self.event(
                &key,
                true,
                "RunCancelled",
                format!("{count} running run(s) cancelled: {why}"),
            );
        }
        if !cancelled.is_empty() {
            self.emit(Output::RunsCancelled(cancelled));
        }
        Ok(())
    }

    fn recount_active(&mut self) {
        self.active_total = self.dags.values().map(|d| d.active.len()).sum::<usize>()
            + self.orphan_active.values().map(Vec::len).sum::<usize>();
    }

    fn emit(&self, output: Output) {
        // a closed receiver means the operator is shutting down
        let _ = self.out.send(output);
    }

    fn event(&self, dag: &DagKey, warning: bool, reason: &'static str, message: String) {
        self.emit(Output::Event {
            dag: dag.clone(),
            warning,
            reason,
            message,
        });
    }

    /// The earliest instant a timer is due, if any.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// How many runs wait in the queue, by class [backfill, scheduled, manual].
    pub fn queue_depth(&self) -> [usize; 3] {
        self.queue.depth_by_class()
    }

    pub fn active_total(&self) -> usize {
        self.active_total
    }

    /// Applies a change from the controller.
    pub fn apply(&mut self, cmd: Command, now: DateTime<Utc>) {
        match cmd {
            Command::Upsert(info) => self.upsert(*info, now),
            Command::Invalid(key) => self.remove(&key),
            Command::Deleted { key, uid } => {
                if self.dags.get(&key).is_some_and(|s| s.info.uid() == uid) {
                    self.remove(&key);
                }
                self.doom(&key, "the DAG was deleted", |run| {
                    run.dag_uid == uid || run.dag_uid.is_empty()
                });
            }
            Command::Listed(listed) => {
                self.listed = Some(listed);
                self.doom_unlisted();
            }
            Command::RunsEnded(ids) => self.runs_ended(&ids),
            Command::UpsertBackfill(info) => self.upsert_backfill(*info),
            Command::RemoveBackfill(key) => self.remove_backfill(&key),
        }
    }

    fn remove(&mut self, key: &DagKey) {
        if let Some(state) = self.dags.remove(key) {
            if let Some(t) = state.next_tick {
                self.timers.remove(&(t, key.clone()));
            }
            self.drop_queued(key, |_| true);
            // its running runs still count against the global limit until they end
            if !state.active.is_empty() {
                self.orphan_active.insert(key.clone(), state.active);
            }
        }
    }

    /// Removes queued entries of a DAG matching `pred`; returns them.
    fn drop_queued(&mut self, key: &DagKey, pred: impl Fn(&Pending) -> bool) -> Vec<Pending> {
        let ids: Vec<EntryId> = self
            .queue
            .iter()
            .filter(|(_, e)| e.payload.dag == *key && pred(&e.payload))
            .map(|(id, _)| id)
            .collect();
        let mut dropped = Vec::new();
        for id in ids {
            if let Some(e) = self.queue.remove(id) {
                dropped.push(e.payload);
            }
        }
        for p in &dropped {
            if let Some(bf) = &p.backfill {
                self.backfill_dequeued(&p.dag, bf);
            }
        }
        if let Some(state) = self.dags.get_mut(key) {
            state.queued = state.queued.saturating_sub(dropped.len());
        }
        self.dirty.insert(key.clone());
        dropped
    }

    fn upsert(&mut self, info: DagInfo, now: DateTime<Utc>) {
        let key = info.key.clone();
        let fingerprint = info
            .spec()
            .schedule
            .clone()
            .map(|s| (s, info.spec().timezone.clone()));
        // a DAG re-created under the same name is a new object: runs of the old one end
        let uid = info.uid().to_string();
        self.doom(&key, "the DAG was deleted and created again", |run| {
            !run.dag_uid.is_empty() && run.dag_uid != uid
        });
        let was_suspended;
        match self.dags.get_mut(&key) {
            Some(state) => {
                was_suspended = state.info.spec().suspend;
                if state.fingerprint != fingerprint {
                    // a new schedule never catches up ticks from before the change
                    state.not_before = now;
                    state.fingerprint = fingerprint;
                }
                if state
                    .version
                    .as_ref()
                    .is_some_and(|v| v.generation != info.object.metadata.generation)
                {
                    state.version = None;
                }
                state.info = info;
            }
            None => {
                let active = self.orphan_active.remove(&key).unwrap_or_default();
                let last = self.known_last_ticks.get(&key).copied();
                let handled = info.last_handled_trigger.clone();
                self.dags.insert(
                    key.clone(),
                    DagState {
                        not_before: info.created_at().unwrap_or(now),
                        info,
                        fingerprint,
                        last_tick: last,
                        last_persisted: last,
                        next_tick: None,
                        active,
                        queued: 0,
                        handled_trigger: handled,
                        version: None,
                    },
                );
                was_suspended = false;
            }
        }
        self.dirty.insert(key.clone());
        let Some(state) = self.dags.get(&key) else {
            return;
        };
        let suspended = state.info.spec().suspend;
        if suspended && !was_suspended {
            self.drop_queued(&key, |p| p.run_type == RunType::Scheduled);
        }
        self.handle_trigger(&key, now);
        self.plan_due(&key, now);
    }

    fn handle_trigger(&mut self, key: &DagKey, now: DateTime<Utc>) {
        let Some(state) = self.dags.get_mut(key) else {
            return;
        };
        let Some(trigger) = state.info.trigger.clone() else {
            return;
        };
        if state.handled_trigger.as_deref() == Some(trigger.value.as_str())
            || state.info.last_handled_trigger.as_deref() == Some(trigger.value.as_str())
        {
            return;
        }
        state.handled_trigger = Some(trigger.value.clone());
        self.dirty.insert(key.clone());
        let object = state.info.object.clone();
        let spec = &object.spec;
        if spec.suspend {
            self.event(
                key,
                true,
                "TriggerRefused",
                format!("trigger {:?} refused: the DAG is suspended", trigger.value),
            );
            return;
        }
        let params = match merge_params(spec.params.as_ref(), trigger.params.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                self.event(
                    key,
                    true,
                    "TriggerRefused",
                    format!("trigger {:?} refused: {e}", trigger.value),
                );
                return;
            }
        };
        let logical_date = DateTime::parse_from_rfc3339(&trigger.value)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now);
        self.enqueue(
            Pending {
                dag: key.clone(),
                logical_date,
                run_type: RunType::Manual,
                params,
                enqueued_ms: ms(now),
                backfill: None,
                rerun: None,
            },
            RunClass::Manual,
            spec.priority,
        );
        self.event(
            key,
            false,
            "TriggerHandled",
            format!("manual run queued for {}", logical_date.to_rfc3339()),
        );
    }

    fn enqueue(&mut self, pending: Pending, class: RunClass, priority: i32) {
        let key = pending.dag.clone();
        let enqueued = pending.enqueued_ms;
        let date = pending.logical_date.timestamp();
        let mut keys = vec![LimitKey::Dag(key.clone())];
        if let Some(bf) = &pending.backfill {
            keys.push(backfill::limit_key(&key, bf));
            if let Some(state) = self.backfills.get_mut(&DagKey::new(&key.namespace, bf)) {
                state.queued += 1;
            }
        }
        self.queue.push(
            Entry {
                payload: pending,
                class,
                priority,
                logical_date: date,
                keys,
            },
            enqueued,
        );
        if let Some(state) = self.dags.get_mut(&key) {
            state.queued += 1;
        }
        self.dirty.insert(key);
    }

    /// Enqueues the DAG's due ticks (catch-up bounds applied) and sets its timer.
    fn plan_due(&mut self, key: &DagKey, now: DateTime<Utc>) {
        let cfg = self.cfg.clone();
        let Some(state) = self.dags.get_mut(key) else {
            return;
        };
        if let Some(t) = state.next_tick.take() {
            self.timers.remove(&(t, key.clone()));
        }
        let object = state.info.object.clone();
        let spec = &object.spec;
        let Some(schedule) = state.info.schedule.clone() else {
            self.dirty.insert(key.clone());
            return;
        };
        if spec.suspend {
            self.dirty.insert(key.clone());
            return;
        }
        let not_before = [Some(state.not_before), spec.start_date]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(state.not_before);
        let policy = CatchupPolicy::from_spec(
            spec.catchup.unwrap_or(cfg.enable_catchup),
            spec.max_catchup_runs.unwrap_or(cfg.max_catchup_runs),
        );
        let plan = catch_up(
            &schedule,
            &CatchupRequest {
                after: state.last_tick,
                not_before,
                not_after: spec.end_date,
                now,
                policy,
            },
        );
        if let Some(last) = plan.due.last().copied().or(plan.missed_last) {
            state.last_tick = Some(last);
        }
        let next = schedule
            .next_after(now)
            .filter(|t| spec.end_date.is_none_or(|end| *t <= end));
        state.next_tick = next;
        if let Some(t) = next {
            self.timers.insert((t, key.clone()));
        }
        if plan.missed > 0 {
            let (first, last) = (plan.missed_first, plan.missed_last);
            self.event(
                key,
                true,
                "MissedRuns",
                format!(
                    "{} missed tick(s) from {} to {} were not run (catch-up keeps {})",
                    plan.missed,
                    first.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    last.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    match policy {
                        CatchupPolicy::LatestN(n) => format!("the latest {n}"),
                        CatchupPolicy::LatestOnly => "only the latest".to_string(),
                    }
                ),
            );
        }
        let params = spec.params.clone().unwrap_or(serde_json::json!({}));
        for tick in plan.due {
            self.enqueue(
                Pending {
                    dag: key.clone(),
                    logical_date: tick,
                    run_type: RunType::Scheduled,
                    params: params.clone(),
                    enqueued_ms: ms(tick).min(ms(now)),
                    backfill: None,
                    rerun: None,
                },
                RunClass::Scheduled,
                spec.priority,
            );
        }
        self.dirty.insert(key.clone());
    }

    /// One pass: fires due timers, admits what fits, persists it in one batch, and reports
    /// status changes. On a store failure the admitted runs go back to the queue.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        while let Some((t, key)) = self.timers.first().cloned() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, key.clone()));
            if let Some(state) = self.dags.get_mut(&key) {
                state.next_tick = None;
            }
            self.plan_due(&key, now);
        }
        if let Err(e) = self.cancel_doomed().await {
            self.set_store_ok(false);
            return Err(e);
        }
        self.maintain_leases().await;
        if let Err(e) = self.feed_backfills(now).await {
            self.set_store_ok(false);
            return Err(e);
        }
        let result = self.admit(now).await;
        if result.is_ok() {
            if let Err(e) = self.report_backfills(now).await {
                self.set_store_ok(false);
                return Err(e);
            }
        }
        self.flush_status();
        result
    }

    /// Applies Forbid and Replace before a pass: Forbid drops scheduled ticks while a run is
    /// active; Replace cancels the active runs when a newer scheduled tick waits.
    async fn apply_overlap_policies(&mut self) -> Result<(), StoreError> {
        let mut forbid = Vec::new();
        let mut replace = Vec::new();
        for (key, state) in &self.dags {
            if state.queued == 0 {
                continue;
            }
            match state.info.spec().concurrency_policy {
                ConcurrencyPolicy::Forbid if !state.active.is_empty() => forbid.push(key.clone()),
                ConcurrencyPolicy::Replace => replace.push(key.clone()),
                _ => {}
            }
        }
        for key in forbid {
            for p in self.drop_queued(&key, |p| p.run_type == RunType::Scheduled) {
                self.event(
                    &key,
                    false,
                    "RunSkipped",
                    format!(
                        "tick {} skipped: concurrencyPolicy Forbid and a run is active",
                        p.logical_date.to_rfc3339()
                    ),
                );
            }
        }
        for key in replace {
            let mut waiting = self.drop_queued(&key, |p| p.run_type == RunType::Scheduled);
            waiting.sort_by_key(|p| p.logical_date);
            let Some(newest) = waiting.pop() else {
                continue;
            };
            for older in waiting {
                self.event(
                    &key,
                    false,
                    "RunSkipped",
                    format!(
                        "tick {} skipped: concurrencyPolicy Replace keeps only the newest tick",
                        older.logical_date.to_rfc3339()
                    ),
                );
            }
            let active: Vec<ActiveRun> = self
                .dags
                .get(&key)
                .map(|s| s.active.clone())
                .unwrap_or_default();
            if !active.is_empty() {
                let ids: Vec<Uuid> = active.iter().map(|run| run.id).collect();
                self.store.cancel_runs(&ids).await?;
                for run in &active {
                    self.pending_release.push((key.clone(), run.logical_date));
                }
                if let Some(state) = self.dags.get_mut(&key) {
                    state.active.clear();
                }
                self.recount_active();
                self.event(
                    &key,
                    false,
                    "RunReplaced",
                    format!(
                        "cancelled {} active run(s) for tick {}",
                        ids.len(),
                        newest.logical_date.to_rfc3339()
                    ),
                );
                self.emit(Output::RunsCancelled(
                    ids.into_iter().map(|id| (key.clone(), id)).collect(),
                ));
            }
            let priority = self
                .dags
                .get(&key)
                .map(|s| s.info.spec().priority)
                .unwrap_or_default();
            self.enqueue(newest, RunClass::Scheduled, priority);
        }
        Ok(())
    }

    async fn admit(&mut self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        if let Err(e) = self.apply_overlap_policies().await {
            self.set_store_ok(false);
            return Err(e);
        }
        self.queue.begin_pass();
        let global = self.cfg.max_concurrent_runs as usize;
        let mut batch: Vec<Pending> = Vec::new();
        let mut in_batch: HashMap<DagKey, usize> = HashMap::new();
        let mut bf_in_batch: HashMap<DagKey, usize> = HashMap::new();
        while self.active_total + batch.len() < global {
            let dags = &self.dags;
            let backfills = &self.backfills;
            let popped = self.queue.pop(ms(now), |k| match k {
                LimitKey::Dag(key) => dags.get(key).is_none_or(|s| {
                    s.active.len() + in_batch.get(key).copied().unwrap_or(0) >= s.max_active()
                }),
                LimitKey::Backfill(key) => backfills
                    .get(key)
                    .is_none_or(|b| b.is_full(bf_in_batch.get(key).copied().unwrap_or(0))),
            });
            let Some((_, entry)) = popped else {
                break;
            };
            let p = entry.payload;
            if let Some(bf) = &p.backfill {
                self.backfill_dequeued(&p.dag, bf);
                *bf_in_batch
                    .entry(DagKey::new(&p.dag.namespace, bf))
                    .or_default() += 1;
            }
            let Some(state) = self.dags.get_mut(&p.dag) else {
                continue;
            };
            state.queued = state.queued.saturating_sub(1);
            self.dirty.insert(p.dag.clone());
            if p.run_type == RunType::Scheduled {
                if let Some(deadline) = state.info.spec().starting_deadline_seconds {
                    let late = (now - p.logical_date).num_seconds();
                    if late > deadline {
                        let dag = p.dag.clone();
                        self.event(
                            &dag,
                            true,
                            "RunSkipped",
                            format!(
                                "tick {} skipped: not admitted within startingDeadlineSeconds ({deadline}s; {late}s late)",
                                p.logical_date.to_rfc3339()
                            ),
                        );
                        continue;
                    }
                }
                if state.info.spec().concurrency_policy == ConcurrencyPolicy::Forbid
                    && state.active.len() + in_batch.get(&p.dag).copied().unwrap_or(0) > 0
                {
                    let dag = p.dag.clone();
                    self.event(
                        &dag,
                        false,
                        "RunSkipped",
                        format!(
                            "tick {} skipped: concurrencyPolicy Forbid and a run is active",
                            p.logical_date.to_rfc3339()
                        ),
                    );
                    continue;
                }
            }
            *in_batch.entry(p.dag.clone()).or_default() += 1;
            batch.push(p);
        }
        if batch.is_empty() {
            return Ok(0);
        }
        // the gate has the last word (other replicas share it): a run takes a slot of the
        // global limit and one of its DAG's, or waits
        let (batch, refused, gate_error) = self.acquire_slots(batch).await;
        for p in refused {
            self.requeue(p);
        }
        if let Some(e) = gate_error {
            if self.gate_ok {
                tracing::warn!(error = %e, "gate unavailable: admission paused");
            }
            self.set_gate_ok(false);
        } else {
            self.set_gate_ok(true);
        }
        if batch.is_empty() {
            return Ok(0);
        }
        // the spec version each run executes, stored before the runs that name it
        let specs = self.spec_versions(&batch);
        let stored = match self.store.save_specs(&specs).await {
            Ok(()) => self.persist(&batch).await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(inserted) => {
                self.mark_specs_saved(&specs);
                self.admitted(now, batch, inserted).await
            }
            Err(e) => {
                // nothing was admitted: slots back, entries back, keeping their age
                for p in batch {
                    self.pending_release.push((p.dag.clone(), p.logical_date));
                    self.requeue(p);
                }
                self.set_store_ok(false);
                Err(e)
            }
        }
    }

    /// Makes sure every DAG of the batch has its current spec version; returns the versions
    /// not stored yet.
    fn spec_versions(&mut self, batch: &[Pending]) -> Vec<SpecRow> {
        let mut unsaved = Vec::new();
        for p in batch {
            let Some(state) = self.dags.get_mut(&p.dag) else {
                continue;
            };
            if state.version.is_none() {
                let spec = Arc::new(state.info.spec().clone());
                match spec.content_hash() {
                    Ok((hash, json)) => {
                        state.version = Some(Arc::new(SpecVersion {
                            generation: state.info.object.metadata.generation,
                            hash,
                            spec,
                            json: Some(json),
                        }));
                    }
                    Err(e) => tracing::error!(dag = %p.dag, error = %e, "cannot hash the spec"),
                }
            }
            if let Some(v) = &state.version {
                if let Some(json) = &v.json {
                    if !unsaved.iter().any(|s: &SpecRow| s.hash == v.hash) {
                        unsaved.push(SpecRow {
                            hash: v.hash.clone(),
                            spec: json.clone(),
                        });
                    }
                }
            }
        }
        unsaved
    }

    /// Forgets the JSON of versions now stored (they are never sent again).
    fn mark_specs_saved(&mut self, saved: &[SpecRow]) {
        if saved.is_empty() {
            return;
        }
        for state in self.dags.values_mut() {
            if let Some(v) = &state.version {
                if v.json.is_some() && saved.iter().any(|s| s.hash == v.hash) {
                    state.version = Some(Arc::new(SpecVersion {
                        generation: v.generation,
                        hash: v.hash.clone(),
                        spec: v.spec.clone(),
                        json: None,
                    }));
                }
            }
        }
    }

    /// Inserts the batch's new runs and re-runs its reprocessed ones; returns what was
    /// created or re-started.
    async fn persist(&self, batch: &[Pending]) -> Result<Vec<crate::store::RunRow>, StoreError> {
        let runs: Vec<NewRun> = batch
            .iter()
            .filter(|p| p.rerun.is_none())
            .filter_map(|p| self.dags.get(&p.dag).map(|s| new_run(s, p)))
            .collect();
        let reruns: Vec<Rerun> = batch
            .iter()
            .filter_map(|p| {
                let id = p.rerun?;
                let state = self.dags.get(&p.dag)?;
                let run = new_run(state, p);
                Some(Rerun {
                    id,
                    backfill_name: p.backfill.clone()?,
                    params: run.params,
                    spec_hash: run.spec_hash,
                    tasks: run.tasks,
                })
            })
            .collect();
        let mut inserted = self.store.insert_runs(&runs).await?;
        inserted.extend(self.store.rerun_runs(&reruns).await?);
        Ok(inserted)
    }

    /// Books what the store created: active runs, Backfill slots and progress, metrics, and
    /// the runs handed to the executor.
    async fn admitted(
        &mut self,
        now: DateTime<Utc>,
        batch: Vec<Pending>,
        inserted: Vec<crate::store::RunRow>,
    ) -> Result<usize, StoreError> {
        {
            {
                self.set_store_ok(true);
                // Backfill dates another run took first count as skipped; their Backfill
                // slot goes back (the run's own slots belong to whoever runs it)
                let created: std::collections::HashSet<(DagKey, DateTime<Utc>)> = inserted
                    .iter()
                    .map(|r| (r.dag.clone(), r.logical_date))
                    .collect();
                for p in &batch {
                    if let Some(bf) = &p.backfill {
                        if !created.contains(&(p.dag.clone(), p.logical_date)) {
                            self.backfill_date_taken(&p.dag, bf);
                            let key = gate_key::backfill_runs(&p.dag.namespace, bf);
                            let _ = self
                                .gate
                                .release(&key, &holder(&p.dag, p.logical_date))
                                .await;
                        }
                    }
                }
                for run in &inserted {
                    if let Some(bf) = &run.backfill_name {
                        self.bf_slots
                            .insert((run.dag.clone(), run.logical_date), bf.clone());
                        self.backfill_run_started(&run.dag, bf, run.id);
                    }
                }
                let mut created: HashMap<RunType, (usize, Vec<f64>)> = HashMap::new();
                for run in &inserted {
                    let Some(state) = self.dags.get_mut(&run.dag) else {
                        continue;
                    };
                    state.active.push(ActiveRun {
                        id: run.id,
                        logical_date: run.logical_date,
                        dag_uid: run.dag_uid.clone(),
                    });
                    if run.run_type == RunType::Scheduled {
                        state.last_persisted = state.last_persisted.max(Some(run.logical_date));
                    }
                    let delay = (now - run.logical_date).num_milliseconds() as f64 / 1000.0;
                    // a re-run in place (Backfill reprocess) is backfill work whatever it was
                    let rerun = run.attempt > 1;
                    let run_type = if rerun {
                        RunType::Backfill
                    } else {
                        run.run_type
                    };
                    let slot = created.entry(run_type).or_default();
                    slot.0 += 1;
                    if run_type == RunType::Scheduled {
                        slot.1.push(delay.max(0.0));
                    }
                }
                self.recount_active();
                for (run_type, (count, delays_secs)) in created {
                    self.emit(Output::RunsCreated {
                        run_type,
                        count,
                        delays_secs,
                    });
                }
                let count = inserted.len();
                let admitted: Vec<AdmittedRun> = inserted
                    .into_iter()
                    .filter_map(|run| {
                        let spec = self.dags.get(&run.dag)?.version.as_ref()?.spec.clone();
                        Some(AdmittedRun { run, spec })
                    })
                    .collect();
                if !admitted.is_empty() {
                    self.emit(Output::RunsAdmitted(admitted));
                }
                Ok(count)
            }
        }
    }

    fn requeue(&mut self, p: Pending) {
        if p.backfill.is_some()
            && !self.backfills.contains_key(&DagKey::new(
                &p.dag.namespace,
                p.backfill.as_deref().unwrap_or_default(),
            ))
        {
            return; // its Backfill is gone
        }
        let Some(priority) = self.dags.get(&p.dag).map(|s| s.info.spec().priority) else {
            return;
        };
        let class = match p.run_type {
            RunType::Manual => RunClass::Manual,
            RunType::Scheduled => RunClass::Scheduled,
            RunType::Backfill => RunClass::Backfill,
        };
        self.enqueue(p, class, priority);
    }

    /// Takes a global, a per-DAG and (for a Backfill's run) a per-Backfill slot for each run,
    /// all or none per run, in one round trip; returns (admitted, refused, error). After a
    /// gate error nothing is admitted: fail closed.
    async fn acquire_slots(
        &mut self,
        batch: Vec<Pending>,
    ) -> (Vec<Pending>, Vec<Pending>, Option<GateError>) {
        let global = self.cfg.max_concurrent_runs;
        let claims: Vec<Claim> = batch
            .iter()
            .map(|p| {
                let dag_limit = self.dags.get(&p.dag).map_or(1, |s| s.max_active() as u32);
                let mut slots = vec![
                    (gate_key::GLOBAL_RUNS.to_string(), 1, global),
                    (
                        gate_key::dag_runs(&p.dag.namespace, &p.dag.name),
                        1,
                        dag_limit,
                    ),
                ];
                if let Some(bf) = &p.backfill {
                    slots.push((
                        gate_key::backfill_runs(&p.dag.namespace, bf),
                        1,
                        self.backfill_limit(&p.dag, bf),
                    ));
                }
                Claim {
                    holder: holder(&p.dag, p.logical_date),
                    slots,
                }
            })
            .collect();
        let grants = match self.gate.acquire_all(&claims).await {
            Ok(grants) => grants,
            Err(e) => {
                self.gate_outcome(GateScope::GlobalRuns, false);
                return (Vec::new(), batch, Some(e));
            }
        };
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for (p, grant) in batch.into_iter().zip(grants) {
            match grant {
                Grant::Granted => admitted.push(p),
                Grant::Refused(i) => {
                    let scope = match i {
                        0 => GateScope::GlobalRuns,
                        1 => GateScope::DagRuns,
                        _ => GateScope::BackfillRuns,
                    };
                    self.gate_outcome(scope, true);
                    refused.push(p);
                }
            }
        }
        (admitted, refused, None)
    }

    /// Gives back the slots of ended runs and renews the leases of running ones (every third
    /// of the lease TTL); a lease the gate lost is registered again.
    async fn maintain_leases(&mut self) {
        for (dag, date) in std::mem::take(&mut self.pending_release) {
            let h = holder(&dag, date);
            let bf = self.bf_slots.remove(&(dag.clone(), date));
            let released = async {
                if let Some(bf) = &bf {
                    self.gate
                        .release(&gate_key::backfill_runs(&dag.namespace, bf), &h)
                        .await?;
                }
                self.gate.release(gate_key::GLOBAL_RUNS, &h).await?;
                self.gate
                    .release(&gate_key::dag_runs(&dag.namespace, &dag.name), &h)
                    .await
            };
            if released.await.is_err() {
                // the lease runs out by itself within one TTL
                self.set_gate_ok(false);
            }
        }
        if self
            .last_renew
            .is_some_and(|t| t.elapsed() < self.gate.renew_interval())
        {
            return;
        }
        let runs: Vec<(DagKey, DateTime<Utc>)> = self
            .dags
            .iter()
            .flat_map(|(k, s)| s.active.iter().map(move |r| (k.clone(), r.logical_date)))
            .chain(
                self.orphan_active
                    .iter()
                    .flat_map(|(k, v)| v.iter().map(move |r| (k.clone(), r.logical_date))),
            )
            .collect();
        let mut leases = Vec::with_capacity(runs.len() * 2);
        for (dag, date) in &runs {
            let h = holder(dag, *date);
            if let Some(bf) = self.bf_slots.get(&(dag.clone(), *date)) {
                leases.push((gate_key::backfill_runs(&dag.namespace, bf), h.clone()));
            }
            leases.push((gate_key::GLOBAL_RUNS.to_string(), h.clone()));
            leases.push((gate_key::dag_runs(&dag.namespace, &dag.name), h));
        }
        match self.gate.renew_all(&leases).await {
            Ok(kept) => {
                // lost (e.g. Redis restarted, or this process restarted): count them again,
                // over the limit if need be
                let lost: Vec<(String, String, u32)> = leases
                    .iter()
                    .zip(kept)
                    .filter(|(_, ok)| !ok)
                    .map(|((key, h), _)| (key.clone(), h.clone(), 1))
                    .collect();
                if let Err(e) = gate::reinstate(&self.gate, &lost).await {
                    tracing::warn!(error = %e, "could not re-register lost leases");
                }
                self.last_renew = Some(std::time::Instant::now());
                self.set_gate_ok(true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                self.set_gate_ok(false);
            }
        }
    }

    fn gate_outcome(&self, scope: GateScope, rejected: bool) {
        self.emit(Output::Gate { scope, rejected });
    }

    fn set_gate_ok(&mut self, ok: bool) {
        if self.gate_ok != ok {
            self.gate_ok = ok;
            if ok {
                tracing::info!("gate reachable again: admission of runs resumes");
            }
            self.emit(Output::GateHealth(ok));
        }
    }

    fn set_store_ok(&mut self, ok: bool) {
        if self.store_ok != ok {
            self.store_ok = ok;
            self.emit(Output::StoreHealth(ok));
        }
    }

    /// Marks runs as no longer active (they ended). Unknown ids are ignored.
    pub fn runs_ended(&mut self, ids: &[Uuid]) {
        for (key, runs) in self
            .dags
            .iter()
            .map(|(k, s)| (k, &s.active))
            .chain(self.orphan_active.iter())
        {
            for run in runs {
                if ids.contains(&run.id) {
                    self.pending_release.push((key.clone(), run.logical_date));
                }
            }
        }
        for state in self.dags.values_mut() {
            let before = state.active.len();
            state.active.retain(|run| !ids.contains(&run.id));
            if state.active.len() != before {
                self.dirty.insert(state.info.key.clone());
            }
        }
        for runs in self.orphan_active.values_mut() {
            runs.retain(|run| !ids.contains(&run.id));
        }
        self.orphan_active.retain(|_, v| !v.is_empty());
        self.recount_active();
        self.backfill_runs_ended(ids);
    }

    /// Re-reads the running runs from the store (runs ended by the executor or by hand).
    pub async fn resync_active(&mut self) -> Result<(), StoreError> {
        let running = self
            .store
            .running_runs(self.cfg.namespace.as_deref())
            .await?;
        let mut by_dag: HashMap<DagKey, Vec<ActiveRun>> = HashMap::new();
        let running_ids: std::collections::HashSet<Uuid> = running.iter().map(|r| r.id).collect();
        for run in &running {
            if let Some(bf) = &run.backfill_name {
                self.bf_slots
                    .entry((run.dag.clone(), run.logical_date))
                    .or_insert_with(|| bf.clone());
            }
        }
        let ended: Vec<Uuid> = self
            .backfills
            .values()
            .flat_map(|b| b.active_ids())
            .filter(|id| !running_ids.contains(id))
            .collect();
        if !ended.is_empty() {
            self.backfill_runs_ended(&ended);
        }
        for run in running {
            by_dag.entry(run.dag.clone()).or_default().push(ActiveRun {
                id: run.id,
                logical_date: run.logical_date,
                dag_uid: run.dag_uid,
            });
        }
        for (key, state) in &mut self.dags {
            let now_active = by_dag.remove(key).unwrap_or_default();
            for run in &state.active {
                if !now_active.iter().any(|r| r.id == run.id) {
                    self.pending_release.push((key.clone(), run.logical_date));
                }
            }
            if now_active != state.active {
                state.active = now_active;
                self.dirty.insert(key.clone());
            }
        }
        self.orphan_active = by_dag;
        self.recount_active();
        self.last_resync = Some(std::time::Instant::now());
        self.doom_unlisted();
        Ok(())
    }

    fn flush_status(&mut self) {
        self.emit(Output::Load {
            queue_depth: self.queue.depth_by_class(),
            active_runs: self.active_total,
        });
        let dirty = std::mem::take(&mut self.dirty);
        for key in dirty {
            if let Some(state) = self.dags.get(&key) {
                let status = SchedulingStatus {
                    active_runs: state.active.len() as i32,
                    queued_runs: state.queued as i32,
                    last_schedule_time: state.last_persisted,
                    next_schedule_time: state.next_tick,
                    last_handled_trigger: state.handled_trigger.clone(),
                    suspended: state.info.spec().suspend,
                };
                self.emit(Output::Status(key, status));
            }
        }
    }

    /// The production loop: applies commands as they come, and passes at each due timer, at
    /// least every `schedule_interval`, and after each batch of commands. Store failures are
    /// retried with backoff; the loop never exits on them.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = Duration::from_millis(200);
        let mut loaded = false;
        loop {
            if !loaded {
                match self.load().await {
                    Ok(()) => {
                        loaded = true;
                        self.set_store_ok(true);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store unavailable; retrying");
                        self.set_store_ok(false);
                    }
                }
            }
            let now = Utc::now();
            let mut retry = false;
            if loaded {
                if self
                    .last_resync
                    .is_none_or(|t| t.elapsed() >= self.cfg.resync_interval)
                {
                    if let Err(e) = self.resync_active().await {
                        tracing::warn!(error = %e, "resync of running runs failed");
                    }
                }
                match self.tick(now).await {
                    Ok(_) => backoff = Duration::from_millis(200),
                    Err(e) => {
                        tracing::warn!(error = %e, "admission failed; will retry");
                        retry = true;
                    }
                }
            } else {
                retry = true;
            }
            let mut wait = self.cfg.schedule_interval;
            if let Some(t) = self.next_wake() {
                let until = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                wait = wait.min(until);
            }
            if retry {
                wait = wait.min(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            if !loaded {
                // commands wait until the store told us where each DAG stands
                tokio::time::sleep(wait).await;
                continue;
            }
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let now = Utc::now();
                    self.apply(cmd, now);
                    // take everything already waiting before the next pass
                    while let Ok(cmd) = commands.try_recv() {
                        self.apply(cmd, now);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn new_run(state: &DagState, p: &Pending) -> NewRun {
    let spec = state.info.spec();
    let interval = data_interval(
        state.info.schedule.as_ref(),
        p.logical_date,
        spec.start_date,
    );
    NewRun {
        dag: p.dag.clone(),
        dag_uid: state.info.uid().to_string(),
        run_type: p.run_type,
        backfill_name: p.backfill.clone(),
        logical_date: p.logical_date,
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        priority: spec.priority,
        params: p.params.clone(),
        spec_hash: state.version.as_ref().map(|v| v.hash.clone()),
        tasks: spec
            .tasks
            .iter()
            .map(|t| NewTask {
                task_name: t.name.clone(),
                pool: t.pool.clone(),
                pool_slots: t.pool_slots,
            })
            .collect(),
    }
}

/// `spec.params` with the trigger's JSON object merged over it (top-level keys).
pub fn merge_params(
    base: Option<&serde_json::Value>,
    overlay: Option<&str>,
) -> Result<serde_json::Value, String> {
    let mut merged = match base {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if let Some(text) = overlay {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(extra)) => merged.extend(extra),
            Ok(_) => return Err("trigger-params must be a JSON object".to_string()),
            Err(e) => return Err(format!("trigger-params is not valid JSON: {e}")),
        }
    }
    Ok(serde_json::Value::Object(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_merge_over_spec() {
        let base = serde_json::json!({"a": 1, "b": 2});
        let merged = merge_params(Some(&base), Some(r#"{"b": 3, "c": 4}"#)).unwrap();
        assert_eq!(merged, serde_json::json!({"a": 1, "b": 3, "c": 4}));
        assert!(merge_params(None, Some("{not json")).is_err());
        assert!(merge_params(None, Some("[1]")).is_err());
        assert_eq!(merge_params(None, None).unwrap(), serde_json::json!({}));
    }
}
