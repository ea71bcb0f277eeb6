//! The executor (SPEC §5): runs every ready task try as a Pod and moves task instances through
//! their states in PostgreSQL from what the Pods do.
//!
//! Event-driven: the running runs and their tries are loaded from PostgreSQL once (at start, as
//! leader) and then kept in memory ([`state`]), changed by what arrives — runs the engine
//! admitted or cancelled, Pod events from a watch, Pool changes — and by time (timeouts,
//! retry delays), so a step touches only the runs something happened to. A resync every few
//! minutes catches anything missed. Each run executes the spec version it was admitted with.
//!
//! A step: decide the runs that changed ([`plan`], pure), write every decision in one
//! transaction, keep the gate leases, admit queued tries under the in-process floor and the
//! gate (one claim pipeline per batch), create their Pods concurrently through a
//! [`PodLauncher`], write what happened, delete what must go, report.

pub mod action;
mod admit;
mod admitting;
pub mod launcher;
pub mod output;
pub mod plan;
pub mod pod;
mod state;
mod step;
pub mod task_action;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use self::admitting::Admitting;
pub use self::launcher::{
    FakeLauncher, FixedPools, KubeLauncher, LaunchError, PodKey, PodLauncher,
};
pub use self::output::{
    EndedTry, ExecOutput, ExecStatus, FailedTry, PoolUsage, RunFinished, TaskTelemetry, TryFinished,
};
pub use self::plan::{PodVerdict, retry_delay};
use self::state::{Live, RunSpec};
use crate::api::DagSpec;
use crate::gate::GateScope;
use crate::gate::{Gate, GateError, LeaseLedger};
use crate::graph::TaskState;
use crate::store::{DagKey, RunRow, RunStore, StoreError, TryKey};

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub max_running_tasks: usize,
    pub pod_retention: Duration,
    /// how long a failed try's Pod is kept (for `kubectl logs` and `describe`)
    pub failed_pod_retention: Duration,
    /// how long a Pod may sit Pending with an image-pull or scheduling problem
    pub pending_grace: Duration,
    /// how long a running try's Pod may stay unseen (missing from a relist) before the try
    /// fails as deleted
    pub unseen_grace: Duration,
    /// Pod creates (and deletes) in flight at once
    pub create_concurrency: usize,
    /// most tries claimed in one pipeline and written in one transaction
    pub admit_batch: usize,
    /// how long a step goes on with an admission before Pod events and actions are taken in
    /// (its creates stay in flight meanwhile)
    pub admit_slice: Duration,
    /// how often everything is read again from PostgreSQL, in case an event was missed
    pub resync_interval: Duration,
    /// the namespace watched (none: all): only its runs are adopted
    pub namespace: Option<String>,
    /// how often the pending run actions (cancel, re-run, mark) are read
    pub action_poll: Duration,
    /// the zone of DAGs that name none (`--timezone`): their Pods' `DS`, `TS`, … are read in it
    pub default_tz: chrono_tz::Tz,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_running_tasks: 128,
            pod_retention: Duration::from_secs(3600),
            failed_pod_retention: Duration::from_secs(3600),
            pending_grace: Duration::from_secs(300),
            unseen_grace: Duration::from_secs(10),
            create_concurrency: 64,
            admit_batch: 256,
            admit_slice: Duration::from_millis(250),
            resync_interval: Duration::from_secs(300),
            namespace: None,
            action_poll: Duration::from_secs(1),
            default_tz: chrono_tz::Tz::UTC,
        }
    }
}

/// A run the engine admitted, with the spec version it executes.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmittedRun {
    pub run: RunRow,
    pub spec: Arc<DagSpec>,
}

/// A run the engine cancelled (concurrencyPolicy Replace, DAG deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelledRun {
    pub dag: DagKey,
    pub run: Uuid,
}

/// What a Pod says, as the executor keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSeen {
    pub key: PodKey,
    /// the try it belongs to (from its labels)
    pub owner: Option<TryKey>,
    pub verdict: PodVerdict,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A change to the task Pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodEvent {
    Applied(PodSeen),
    Deleted(PodSeen),
    /// every task Pod, after a (re)list of the watch
    Listed(Vec<PodSeen>),
}

/// What the executor is told.
#[derive(Clone, Debug)]
pub enum ExecInput {
    /// runs the engine admitted (persisted `running`)
    Admitted(Vec<AdmittedRun>),
    /// runs the engine cancelled (Replace, DAG deleted): their Pods go, their slots free
    Cancelled(Vec<CancelledRun>),
    Pod(PodEvent),
    /// a Pool was created, changed or deleted
    PoolsChanged,
}

/// A Pool's slots, as the executor reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub slots: i32,
}

/// Where the executor reads Pools (a watch cache in the operator, a map in tests).
pub trait PoolDirectory: Send + Sync + 'static {
    fn pools(&self) -> Vec<PoolInfo>;
    fn slots(&self, namespace: &str, name: &str) -> Option<i32>;
}

/// The current spec of a DAG, for runs admitted before spec versions were stored.
pub trait CurrentSpecs: Send + Sync + 'static {
    fn current(&self, dag: &DagKey) -> Option<Arc<DagSpec>>;
}

/// Why a step stopped short (it is retried; nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Gate(#[from] GateError),
}

impl ExecError {
    /// The `error` label of the failed step (`dagop_pass_errors_total{part="executor"}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            ExecError::Store(_) => "store",
            ExecError::Gate(_) => "gate",
        }
    }
}

/// Deletes that failed, waiting for their retry.
#[derive(Debug, Default)]
struct DeletesFailed {
    pods: Vec<PodKey>,
    runs: Vec<CancelledRun>,
    /// when they are tried again
    retry_at: Option<DateTime<Utc>>,
    /// rounds of deletes in a row that had a failure (the backoff)
    rounds: u32,
}

/// What the executor keeps of a task Pod.
#[derive(Clone, Debug)]
struct PodRecord {
    verdict: PodVerdict,
    finished_at: Option<DateTime<Utc>>,
}

pub struct Executor<S: RunStore, G: Gate, L: PodLauncher> {
    cfg: ExecutorConfig,
    store: S,
    gate: G,
    launcher: L,
    pools: Arc<dyn PoolDirectory>,
    current_specs: Option<Arc<dyn CurrentSpecs>>,
    out: mpsc::UnboundedSender<ExecOutput>,
    live: Live,
    /// spec versions in use, by hash
    specs: HashMap<String, Arc<RunSpec>>,
    ledger: LeaseLedger,
    /// runs to decide at the next step
    dirty: BTreeSet<Uuid>,
    /// (when, run): a decision of the run depends on time
    timers: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// runs admitted but not loaded yet
    admitted: Vec<AdmittedRun>,
    /// task Pods the watch reported, and whether the first list arrived
    pods: HashMap<PodKey, PodRecord>,
    pods_listed: bool,
    /// Pods the watch said were deleted while their try was still `queued` here (its create
    /// answered but not written yet): the try, and when
    deleted_early: HashMap<PodKey, (TryKey, DateTime<Utc>)>,
    /// (when, Pod): finished Pods past their retention
    retention: BTreeSet<(DateTime<Utc>, PodKey)>,
    /// Pods to delete, and runs whose Pods all go
    doomed_pods: Vec<PodKey>,
    doomed_runs: Vec<CancelledRun>,
    /// deletes that failed: tried again at their own time, not at every step (and never
    /// holding admission back)
    deletes_failed: DeletesFailed,
    /// something changed that may let a queued try start; no admission before this instant
    admit_dirty: bool,
    admit_after: Option<DateTime<Utc>>,
    /// the admission under way, if its creates are still in flight
    admission: Option<admit::Admission>,
    /// told whether runs wait to be loaded or an admission is under way (writers hold back)
    admitting: Admitting,
    pools_dirty: bool,
    reported_pools: HashMap<crate::key::PoolKey, PoolUsage>,
    /// DAGs whose newest runs changed
    dags_changed: BTreeSet<DagKey>,
    /// DAGs whose Pods the API server refuses: the last message
    refused: HashMap<DagKey, String>,
    gate_ok: bool,
    loaded: bool,
    last_load: Option<DateTime<Utc>>,
    /// when the pending run actions are read next
    next_action_poll: Option<DateTime<Utc>>,
    transitions: Vec<TaskState>,
    gate_refused: Vec<GateScope>,
    gate_errors: Vec<GateScope>,
    runs_finished: Vec<RunFinished>,
    tries_finished: Vec<TryFinished>,
    tries_ended: Vec<EndedTry>,
}

impl<S: RunStore, G: Gate, L: PodLauncher> Executor<S, G, L> {
    pub fn new(
        cfg: ExecutorConfig,
        store: S,
        gate: G,
        launcher: L,
        pools: Arc<dyn PoolDirectory>,
        out: mpsc::UnboundedSender<ExecOutput>,
    ) -> Self {
        Executor {
            cfg,
            store,
            // its holds on a session of its own: the ledger checks the gate's count of them
            gate: gate.new_session(),
            launcher,
            pools,
            current_specs: None,
            out,
            live: Live::default(),
            specs: HashMap::new(),
            ledger: LeaseLedger::new(),
            dirty: BTreeSet::new(),
            timers: BTreeSet::new(),
            admitted: Vec::new(),
            pods: HashMap::new(),
            pods_listed: false,
            deleted_early: HashMap::new(),
            retention: BTreeSet::new(),
            doomed_pods: Vec::new(),
            doomed_runs: Vec::new(),
            deletes_failed: DeletesFailed::default(),
            admit_dirty: true,
            admit_after: None,
            admission: None,
            admitting: Admitting::default(),
            pools_dirty: true,
            reported_pools: HashMap::new(),
            dags_changed: BTreeSet::new(),
            refused: HashMap::new(),
            gate_ok: true,
            loaded: false,
            last_load: None,
            next_action_poll: None,
            transitions: Vec::new(),
            gate_refused: Vec::new(),
            gate_errors: Vec::new(),
            runs_finished: Vec::new(),
            tries_finished: Vec::new(),
            tries_ended: Vec::new(),
        }
    }

    /// Where the specs of runs admitted before spec versions existed come from.
    pub fn with_current_specs(mut self, specs: Arc<dyn CurrentSpecs>) -> Self {
        self.current_specs = Some(specs);
        self
    }

    /// Says on `admitting` whether this executor is admitting, for writers that give way.
    pub fn with_admitting(mut self, admitting: Admitting) -> Self {
        self.admitting = admitting;
        self
    }

    /// Runs handed over and not loaded yet, or an admission under way.
    fn is_admitting(&self) -> bool {
        !self.admitted.is_empty() || self.admission.is_some()
    }

    /// How many runs are running (in memory).
    pub fn running_runs(&self) -> usize {
        self.live.len()
    }

    /// Tries running, as the in-process floor counts them.
    pub fn running_tasks(&self) -> usize {
        self.live.running_tasks()
    }

    /// The earliest instant something is due without any input.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        let timer = self.timers.first().map(|(t, _)| *t);
        let retention = self.retention.first().map(|(t, _)| *t);
        let resync = self
            .last_load
            .map(|t| t + chrono::Duration::from_std(self.cfg.resync_interval).unwrap_or_default());
        [
            timer,
            retention,
            resync,
            self.admit_after,
            self.deletes_failed.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn emit(&self, output: ExecOutput) {
        if self.out.send(output).is_err() {
            tracing::debug!("executor output dropped: the operator is shutting down");
        }
    }

    /// Takes one input into memory; the next [`Executor::step`] acts on it.
    pub fn apply(&mut self, input: ExecInput, now: DateTime<Utc>) {
        match input {
            ExecInput::Admitted(runs) => {
                self.admitted.extend(runs);
            }
            ExecInput::Cancelled(runs) => self.cancelled(runs),
            ExecInput::Pod(event) => self.pod_event(event, now),
            ExecInput::PoolsChanged => {
                self.admit_dirty = true;
                self.pools_dirty = true;
            }
        }
        self.admitting.set(self.is_admitting());
    }

    /// Runs the engine cancelled: out of memory, their slots back, their Pods deleted.
    fn cancelled(&mut self, runs: Vec<CancelledRun>) {
        for CancelledRun { dag, run: id } in runs {
            self.admitted.retain(|a| a.run.id != id);
            if let Some(run) = self.live.remove(&id) {
                for task in &run.tasks {
                    self.ledger.end(&state::holder(&task.key()));
                }
                self.admit_dirty = true;
            }
            self.dirty.remove(&id);
            self.dags_changed.insert(dag.clone());
            self.doomed_runs.push(CancelledRun {
                dag: dag.clone(),
                run: id,
            });
        }
    }

    fn pod_event(&mut self, event: PodEvent, now: DateTime<Utc>) {
        match event {
            PodEvent::Applied(seen) => {
                self.deleted_early.remove(&seen.key);
                self.record_pod(&seen);
                if let Some(owner) = &seen.owner {
                    self.sight(owner, plan::PodSight::Seen(seen.verdict));
                }
            }
            PodEvent::Deleted(seen) => {
                if let Some(record) = self.pods.remove(&seen.key) {
                    if let Some(t) = record.finished_at {
                        self.retention
                            .remove(&(self.retire_at(t, &record.verdict), seen.key.clone()));
                    }
                }
                if let Some(owner) = &seen.owner {
                    if self.is_queued(owner) {
                        // its create's answer is not written yet: the try is told once it is
                        self.deleted_early
                            .insert(seen.key.clone(), (owner.clone(), now));
                    }
                    self.sight(owner, plan::PodSight::Gone { since: now });
                }
            }
            PodEvent::Listed(all) => {
                self.pods.clear();
                self.retention.clear();
                for seen in &all {
                    self.record_pod(seen);
                }
                self.pods_listed = true;
                // every running try's Pod, as the list says
                let running: Vec<(Uuid, usize, PodKey)> = self
                    .live
                    .runs()
                    .flat_map(|r| {
                        r.tasks
                            .iter()
                            .enumerate()
                            .filter(|(_, t)| t.row.state == TaskState::Running)
                            .map(move |(i, t)| (r.run.id, i, pod_key(&r.run, t)))
                    })
                    .collect();
                for (id, index, key) in running {
                    let sight = self.sight_of(&key, now);
                    self.live.set_pod(&id, index, sight);
                    self.dirty.insert(id);
                }
            }
        }
    }

    /// When a finished Pod goes: failed ones may be kept longer.
    fn retire_at(&self, finished: DateTime<Utc>, verdict: &PodVerdict) -> DateTime<Utc> {
        let keep = match verdict {
            PodVerdict::Failed { .. } => self.cfg.failed_pod_retention,
            _ => self.cfg.pod_retention,
        };
        finished + chrono::Duration::from_std(keep).unwrap_or_default()
    }

    fn record_pod(&mut self, seen: &PodSeen) {
        if let Some(old) = self.pods.get(&seen.key) {
            if let Some(t) = old.finished_at {
                let at = self.retire_at(t, &old.verdict);
                self.retention.remove(&(at, seen.key.clone()));
            }
        }
        if let Some(t) = seen.finished_at {
            self.retention
                .insert((self.retire_at(t, &seen.verdict), seen.key.clone()));
        }
        self.pods.insert(
            seen.key.clone(),
            PodRecord {
                verdict: seen.verdict.clone(),
                finished_at: seen.finished_at,
            },
        );
    }

    /// What the watch says of a Pod: its verdict, or unseen since `now`.
    fn sight_of(&self, key: &PodKey, now: DateTime<Utc>) -> plan::PodSight {
        match self.pods.get(key) {
            Some(record) => plan::PodSight::Seen(record.verdict.clone()),
            None => plan::PodSight::Unseen { since: now },
        }
    }

    /// Whether `owner` is the latest try of its task and still `queued` here.
    fn is_queued(&self, owner: &TryKey) -> bool {
        let latest = self.live.get(&owner.run_id).and_then(|run| {
            let index = run.spec.graph.index_of(&owner.task_name)?;
            run.tasks.get(index).map(|t| &t.row)
        });
        admit::still_wanted(latest, owner.try_number)
    }

    /// A Pod of `owner` said something: the run is decided again if the try still runs.
    fn sight(&mut self, owner: &TryKey, sight: plan::PodSight) {
        let Some(run) = self.live.get(&owner.run_id) else {
            return;
        };
        let Some(index) = run.spec.graph.index_of(&owner.task_name) else {
            return;
        };
        let task = &run.tasks[index];
        if task.row.try_number != owner.try_number || task.row.state != TaskState::Running {
            return;
        }
        self.live.set_pod(&owner.run_id, index, sight);
        self.dirty.insert(owner.run_id);
    }

    /// The production loop: takes inputs as they come, and steps after each batch of them
    /// and whenever something falls due. Failures are retried with backoff; it never exits
    /// on them. Ends when the input channel closes.
    pub async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<ExecInput>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut wait = Duration::from_secs(60);
            match self.step(Utc::now()).await {
                // a full batch: more may start at once (inputs that arrived are taken first)
                Ok(true) => wait = Duration::ZERO,
                Ok(false) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, "executor step failed; retrying");
                    self.emit(ExecOutput::StepFailed(e.metric_label()));
                    wait = wait.min(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            if let Some(t) = self.next_wake() {
                wait = wait.min((t - Utc::now()).to_std().unwrap_or(Duration::ZERO));
            }
            // pending run actions are polled (they may arrive at any replica)
            wait = wait.min(self.cfg.action_poll);
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { return };
                    let now = Utc::now();
                    self.apply(input, now);
                    while let Ok(input) = inputs.try_recv() {
                        self.apply(input, now);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The Pod of a task's latest try (the name stored with it, or the one it would get).
fn pod_key(run: &RunRow, task: &state::LiveTask) -> PodKey {
    let name = task.row.pod_name.clone().unwrap_or_else(|| {
        pod::pod_name(
            &run.dag.name,
            &run.id,
            &task.row.task_name,
            task.row.try_number,
        )
    });
    PodKey::new(run.dag.namespace.clone(), name)
}
