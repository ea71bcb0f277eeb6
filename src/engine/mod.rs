//! The scheduler (SPEC §3, §4): one timer per DAG, catch-up, manual triggers, Backfills, the
//! admission queue, the limits (`--max-concurrent-runs`, `maxActiveRuns`, a Backfill's
//! `concurrency`), overlap policies, starting deadlines, and persistence of what it decides.
//!
//! Where things live:
//! - [`dags`]: a DAG's state — taken up from the record in PostgreSQL (its schedule
//!   position), its next tick, catch-up, suspend, removal and deletion, its running runs;
//! - [`triggers`]: manual triggers, each value handled once (recorded with its run);
//! - [`admit`]: admission — overlap policies, deadlines, the queue, the gate, and the one
//!   transaction that records a pass's decisions;
//! - [`backfill`]: Backfills — planning in windows, their share of the queue, progress.
//!
//! The engine owns time: callers pass `now` to [`Engine::apply`] and [`Engine::tick`], so the
//! same code runs under the production loop ([`Engine::run`]) and under tests with a
//! controllable clock. What it decided is in PostgreSQL before it acts on it: a restart (or a
//! second replica) starts from the record, never from a snapshot. It talks to PostgreSQL
//! through [`RunStore`] and reports what users should see as [`Output`]s.

mod admit;
mod backfill;
mod chains;
mod dags;
mod failures;
mod output;
mod triggers;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::gate::GateScope;
use crate::gate::{Gate, LeaseLedger, MemoryGate};
use crate::key::Subject;
use crate::queue::AdmissionQueue;
use crate::report::Notice;
use crate::store::{
    BackfillKey, BackfillSkip, DagKey, Position, RefusedTrigger, RunStore, StoreError,
};

use self::admit::{LimitKey, Pending};
pub use self::backfill::{BackfillInfo, BackfillPhase, BackfillProgress, PLANNED_DATES_SHOWN};
pub use self::dags::DagInfo;
use self::dags::{ActiveRun, DagState};
pub use self::output::{EngineStatus, EngineTelemetry, Output, SchedulingStatus};
pub use crate::api::TriggerRequest;

/// Operator-wide settings the engine applies.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub default_tz: Tz,
    pub enable_catchup: bool,
    pub max_catchup_runs: u32,
    pub max_concurrent_runs: u32,
    /// `--max-runs-per-namespace`: the cap of a namespace without an annotation of its own
    pub max_runs_per_namespace: Option<u32>,
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
            max_runs_per_namespace: None,
            schedule_interval: Duration::from_secs(10),
            priority_aging: Duration::from_secs(300),
            max_backfill_runs: 1_000_000,
            namespace: None,
            resync_interval: Duration::from_secs(300),
        }
    }
}

/// Changes the controllers hand to the engine.
#[derive(Clone, Debug)]
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
    RemoveBackfill(BackfillKey),
    /// a namespace's cap on running runs, from its annotation (`None`: none)
    NamespaceLimit {
        namespace: String,
        max_running_runs: Option<u32>,
    },
    /// a namespace is gone (or lost its annotation): `--max-runs-per-namespace` applies
    NamespaceDefault(String),
}

/// The scheduler.
pub struct Engine<S: RunStore, G: Gate = MemoryGate> {
    cfg: EngineConfig,
    store: S,
    /// the limits, shared with other replicas when it is Redis
    gate: G,
    gate_ok: bool,
    store_ok: bool,
    /// the leases of the running runs this process knows
    ledger: LeaseLedger,
    out: mpsc::UnboundedSender<Output>,
    /// boxed: a `DagState` is large, and a map's spare capacity would hold it inline
    dags: HashMap<DagKey, Box<DagState>>,
    timers: BTreeSet<(DateTime<Utc>, DagKey)>,
    queue: AdmissionQueue<LimitKey, Pending>,
    /// running runs of DAGs the engine does not schedule (invalid, not known yet), by DAG
    orphans: HashMap<DagKey, Vec<ActiveRun>>,
    /// caps on running runs the namespaces' annotations set (`None`: uncapped)
    namespace_limits: HashMap<String, Option<u32>>,
    /// running runs to cancel (their DAG object is gone), with why
    doomed: HashMap<Uuid, &'static str>,
    /// the DAG objects that exist: as last listed, kept current by upserts and deletions
    listed: Option<HashMap<DagKey, String>>,
    /// decisions to record with the next admission: schedule positions moved (ticks
    /// skipped, schedules changed), triggers refused, Backfill dates skipped
    positions: HashMap<DagKey, Position>,
    refused: Vec<RefusedTrigger>,
    skips: Vec<BackfillSkip>,
    active_total: usize,
    dirty: BTreeSet<DagKey>,
    /// DAGs with `maxConsecutiveFailures` whose runs ended since the last pass
    failure_checks: BTreeSet<DagKey>,
    /// some DAG has `triggeredBy` or `dependsOn` (else no ended run is looked up for them)
    chained: bool,
    /// runs of upstream DAGs that ended since the last pass
    upstream_ended: Vec<Uuid>,
    /// downstream DAGs taken up whose upstreams' newest successes are looked at
    chain_scans: Vec<DagKey>,
    /// `dependsOn`: the newest data interval end an upstream DAG's successful runs cover
    /// (`None`: no success yet); upstreams not read yet are absent
    upstream_done: HashMap<DagKey, Option<DateTime<Utc>>>,
    /// `dependsOn` upstreams named by a DAG and not read yet
    upstream_loads: BTreeSet<DagKey>,
    /// runs whose `dependsOn` wait timed out, recorded failed with the next admission
    dependency_failed: Vec<(admit::Pending, String)>,
    backfills: HashMap<BackfillKey, backfill::BackfillState>,
    last_resync: Option<std::time::Instant>,
    /// a pass left work it capped (a Backfill's walk): the next one comes at once
    more_work: bool,
    /// when each DAG's newest runs succeeded and failed, read at start and told to the
    /// metrics as each DAG is taken up
    last_ends: HashMap<DagKey, crate::store::LastEnds>,
    ends_loaded: bool,
    /// the longest gap between the next ticks, by schedule (shared by DAGs of one schedule)
    schedule_gaps: HashMap<String, Option<i64>>,
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
            // its holds on a session of its own: the ledger checks the gate's count of them
            gate: gate.new_session(),
            gate_ok: true,
            store_ok: true,
            ledger: LeaseLedger::new(),
            out,
            dags: HashMap::new(),
            timers: BTreeSet::new(),
            queue: AdmissionQueue::new(aging),
            orphans: HashMap::new(),
            namespace_limits: HashMap::new(),
            doomed: HashMap::new(),
            listed: None,
            positions: HashMap::new(),
            refused: Vec::new(),
            skips: Vec::new(),
            active_total: 0,
            dirty: BTreeSet::new(),
            failure_checks: BTreeSet::new(),
            chained: false,
            upstream_ended: Vec::new(),
            chain_scans: Vec::new(),
            upstream_done: HashMap::new(),
            upstream_loads: BTreeSet::new(),
            dependency_failed: Vec::new(),
            backfills: HashMap::new(),
            last_resync: None,
            more_work: false,
            last_ends: HashMap::new(),
            ends_loaded: false,
            schedule_gaps: HashMap::new(),
        }
    }

    fn emit(&self, output: Output) {
        if self.out.send(output).is_err() {
            tracing::debug!("engine output dropped: the operator is shutting down");
        }
    }

    fn event(&self, dag: &DagKey, warning: bool, reason: &'static str, message: String) {
        self.emit(Output::Event(Notice {
            subject: Subject::Dag(dag.clone()),
            warning,
            reason,
            message,
        }));
    }

    /// The earliest instant a timer is due, if any.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// How many runs wait in the queue, by class [backfill, scheduled, manual].
    pub fn queue_depth(&self) -> [usize; 3] {
        self.queue.depth_by_class()
    }

    /// The leases are renewed (and checked against the gate) at the next pass, whenever the
    /// last renewal was: what the renewal timer does (tests drive it with their clock).
    pub fn renew_leases_soon(&mut self) {
        self.ledger.renew_soon();
    }

    /// Running runs the engine counts against `--max-concurrent-runs`.
    pub fn active_total(&self) -> usize {
        self.active_total
    }

    /// Applies a change from a controller.
    pub fn apply(&mut self, cmd: Command, now: DateTime<Utc>) {
        match cmd {
            Command::Upsert(info) => self.upsert(*info, now),
            Command::Invalid(key) => self.remove(&key),
            Command::Deleted { key, uid } => self.deleted(&key, &uid),
            Command::Listed(listed) => {
                self.listed = Some(listed);
                self.doom_unlisted();
            }
            Command::RunsEnded(ids) => self.runs_ended(&ids),
            Command::UpsertBackfill(info) => self.upsert_backfill(*info),
            Command::RemoveBackfill(key) => self.remove_backfill(&key),
            Command::NamespaceLimit {
                namespace,
                max_running_runs,
            } => {
                self.namespace_limits.insert(namespace, max_running_runs);
            }
            Command::NamespaceDefault(namespace) => {
                self.namespace_limits.remove(&namespace);
            }
        }
    }

    /// One pass at `now`. Returns how many runs were admitted.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let result = self.pass(now).await;
        self.set_store_ok(result.is_ok());
        self.flush_status();
        result
    }

    /// The steps of a pass; a store error ends it (the next pass retries, nothing is lost:
    /// what is not recorded is planned again).
    async fn pass(&mut self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.more_work = false;
        // 0. leases renewed first: a store error below ends the pass, never the leases
        self.upkeep_leases().await;
        // 1. DAGs taken up: their schedule position and triggers from the record
        self.take_up(now).await?;
        // 1b. DAGs whose runs ended: failed too often in a row? (maxConsecutiveFailures)
        self.check_failures(now).await?;
        // 1c. upstream runs that succeeded: runs of the DAGs triggeredBy them, and what the
        //     DAGs that dependOn them wait for
        self.check_upstreams().await?;
        // 2. timers: due ticks into the queue
        self.fire_timers(now);
        // 3. trigger values not yet recorded: into the queue, or refused
        self.check_triggers(now).await?;
        // 4. runs of deleted DAGs: cancelled
        self.cancel_doomed().await?;
        // 5. leases of the runs ended above given back (renewal is due at most once per interval)
        self.upkeep_leases().await;
        // 6. Backfills: planned in windows, their share of the queue topped up
        self.feed_backfills(now).await?;
        // 7. admission: overlap policies, the queue, the gate, one transaction
        let admitted = self.admit(now).await?;
        // 8. Backfill progress from the record
        self.report_backfills(now).await?;
        Ok(admitted)
    }

    async fn upkeep_leases(&mut self) {
        match self.ledger.upkeep(&self.gate).await {
            Ok(_) => self.set_gate_ok(true),
            Err(e) => {
                if self.gate_ok {
                    tracing::warn!(error = %e, "lease upkeep failed");
                }
                self.set_gate_ok(false);
            }
        }
    }

    fn gate_outcome(&self, scope: GateScope, rejected: bool) {
        self.emit(Output::Telemetry(EngineTelemetry::Gate { scope, rejected }));
    }

    fn set_gate_ok(&mut self, ok: bool) {
        if self.gate_ok != ok {
            self.gate_ok = ok;
            if ok {
                tracing::info!("gate reachable again: admission of runs resumes");
                self.ledger.renew_soon();
            }
            self.emit(Output::Status(EngineStatus::GateHealth(ok)));
        }
    }

    fn set_store_ok(&mut self, ok: bool) {
        if self.store_ok != ok {
            self.store_ok = ok;
            self.emit(Output::Status(EngineStatus::StoreHealth(ok)));
        }
    }

    fn flush_status(&mut self) {
        self.emit(Output::Telemetry(EngineTelemetry::Load {
            queue_depth: self.queue.depth_by_class(),
            active_runs: self.active_total,
        }));
        for key in std::mem::take(&mut self.dirty) {
            if let Some(state) = self.dags.get(&key) {
                if let Some(status) = state.status() {
                    self.emit(Output::Status(EngineStatus::Dag(key, status)));
                }
            }
        }
    }

    /// The production loop: applies commands as they come, and passes at each due timer, at
    /// least every `schedule_interval` and every lease renewal, and after each batch of
    /// commands. Store failures are retried with backoff; the loop never exits on them.
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
            let mut retry = !loaded;
            if loaded {
                if self
                    .last_resync
                    .is_none_or(|t| t.elapsed() >= self.cfg.resync_interval)
                {
                    if let Err(e) = self.resync_active().await {
                        tracing::warn!(error = %e, "resync of running runs failed");
                    }
                }
                match self.tick(Utc::now()).await {
                    Ok(_) => backoff = Duration::from_millis(200),
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler pass failed; will retry");
                        self.emit(Output::Telemetry(EngineTelemetry::PassFailed));
                        retry = true;
                    }
                }
            }
            // leases are renewed on time whatever the schedule interval
            let mut wait = self.cfg.schedule_interval.min(self.gate.renew_interval());
            if let Some(t) = self.next_wake() {
                wait = wait.min((t - Utc::now()).to_std().unwrap_or(Duration::ZERO));
            }
            if retry {
                wait = wait.min(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else if self.more_work {
                wait = Duration::ZERO;
            }
            if !loaded {
                // commands wait until the store told us which runs are running
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

/// `now` to the microsecond: what PostgreSQL keeps of an instant, so a date the engine picks
/// reads back equal (gate holders are named by it).
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// `spec.params` with a JSON object (a trigger's params, as text) merged over it.
pub fn merge_params(
    base: Option<&serde_json::Value>,
    overlay: Option<&str>,
) -> Result<serde_json::Value, ParamsError> {
    let overlay = match overlay {
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v),
            Ok(_) => return Err(ParamsError::NotAnObject),
            Err(e) => return Err(ParamsError::Json(e.to_string())),
        },
        None => None,
    };
    Ok(merge_objects(base, overlay.as_ref()))
}

/// Two params objects merged by top-level key, `overlay` winning; anything but an object
/// counts as empty (the schema allows only objects).
pub fn merge_objects(
    base: Option<&serde_json::Value>,
    overlay: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut merged = match base {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if let Some(serde_json::Value::Object(extra)) = overlay {
        merged.extend(extra.clone());
    }
    serde_json::Value::Object(merged)
}

/// Why params cannot be merged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("params must be a JSON object")]
    NotAnObject,
    #[error("params are not valid JSON: {0}")]
    Json(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_merge_over_spec() {
        let base = serde_json::json!({"a": 1, "b": 2});
        let merged = merge_params(Some(&base), Some(r#"{"b": 3, "c": 4}"#)).unwrap();
        assert_eq!(merged, serde_json::json!({"a": 1, "b": 3, "c": 4}));
        assert!(matches!(
            merge_params(None, Some("{not json")),
            Err(ParamsError::Json(_))
        ));
        assert_eq!(
            merge_params(None, Some("[1]")),
            Err(ParamsError::NotAnObject)
        );
        assert_eq!(merge_params(None, None).unwrap(), serde_json::json!({}));
    }

    #[test]
    fn micros_drops_what_postgresql_drops() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(micros(t).timestamp_subsec_nanos(), 123_456_000);
    }
}
