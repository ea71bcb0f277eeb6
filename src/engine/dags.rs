//! A DAG in the scheduler: taken up from the record (its schedule position), its next tick
//! and catch-up, suspend, removal (invalid) and deletion, and its running runs.
//!
//! A DAG's position — the latest scheduled tick decided (a run created, or the tick skipped)
//! and when its current schedule began — lives in PostgreSQL (`dag_positions`), written in
//! the same transaction as the decision. Whatever takes a DAG off the schedule (an invalid
//! spec, a restart, deletion and re-creation), planning starts again from the record, so no
//! tick already run or skipped is created again, and a schedule changed meanwhile never
//! creates past ticks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::admit::Pending;
use super::{Engine, EngineTelemetry, Output, SchedulingStatus};
use crate::api::dag::{AutoSuspension, ConcurrencyPolicy, DagSpec};
use crate::api::{DAG, TriggerRequest};
use crate::executor::CancelledRun;
use crate::gate::{Gate, Hold, key as gate_key};
use crate::queue::{EntryId, RunClass};
use crate::schedule::{CatchupPolicy, CatchupRequest, Schedule, catch_up};
use crate::store::{DagKey, DagRecord, Position, RunRow, RunStore, RunType, StoreError};

/// Schedules whose longest gap between ticks is remembered (then the memory starts afresh).
const GAP_CACHE_SIZE: usize = 4096;

/// What the controller knows of a valid DAG.
#[derive(Clone, Debug)]
pub struct DagInfo {
    pub key: DagKey,
    /// the object as the watch cache holds it (shared, not copied)
    pub object: Arc<DAG>,
    pub schedule: Option<Schedule>,
    /// the manual triggers its annotations ask for
    pub triggers: Vec<TriggerRequest>,
    /// what its runs are queued at: `spec.priority` under its namespace's ceiling
    pub priority: i32,
}

impl DagInfo {
    pub fn new(key: DagKey, object: Arc<DAG>, schedule: Option<Schedule>) -> Self {
        let triggers =
            crate::api::trigger::requests(&object.metadata.annotations.clone().unwrap_or_default());
        let priority = object.spec.priority;
        DagInfo {
            key,
            object,
            schedule,
            triggers,
            priority,
        }
    }

    /// Runs queued at `priority` instead of `spec.priority` (the namespace's ceiling).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
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

    /// Its last suspension of itself, as its status records it.
    pub fn auto_suspension(&self) -> Option<&AutoSuspension> {
        self.object
            .status
            .as_ref()
            .and_then(|s| s.auto_suspension.as_ref())
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

    /// The schedule and zone a position is of: `<schedule>|<zone>`.
    fn schedule_key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.spec().schedule_exprs().join("\n"),
            self.spec().exclude.join("\n"),
            self.schedule
                .as_ref()
                .map(|s| s.timezone().name())
                .unwrap_or_default()
        )
    }
}

/// A running run, as the engine counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ActiveRun {
    pub id: Uuid,
    pub logical_date: DateTime<Utc>,
    /// the DAG object it belongs to (empty: unknown)
    pub dag_uid: String,
    /// the Backfill that planned it
    pub backfill: Option<String>,
}

impl ActiveRun {
    pub fn of(run: &RunRow) -> Self {
        ActiveRun {
            id: run.id,
            logical_date: run.logical_date,
            dag_uid: run.dag_uid.clone(),
            backfill: run.backfill_name.clone(),
        }
    }
}

/// The gate holder of a run: its identity, so replicas admitting the same run share a slot.
pub(super) fn holder(dag: &DagKey, logical_date: DateTime<Utc>) -> String {
    format!(
        "{}/{}@{}",
        dag.namespace,
        dag.name,
        logical_date.to_rfc3339()
    )
}

/// The semaphores a run holds: `--max-concurrent-runs`, its namespace's cap, its DAG's
/// `maxActiveRuns` and, for a Backfill's run, the Backfill's `concurrency`.
pub(super) fn holds(dag: &DagKey, backfill: Option<&str>) -> Vec<Hold> {
    let mut holds = vec![
        Hold::new(gate_key::GLOBAL_RUNS, 1),
        Hold::new(gate_key::namespace_runs(&dag.namespace), 1),
        Hold::new(gate_key::dag_runs(&dag.namespace, &dag.name), 1),
    ];
    if let Some(bf) = backfill {
        holds.push(Hold::new(gate_key::backfill_runs(&dag.namespace, bf), 1));
    }
    holds
}

/// A spec version runs are admitted with: the DAG's spec as of a generation, its hash, and
/// its JSON while it is not stored yet.
#[derive(Debug)]
pub(super) struct SpecVersion {
    pub generation: Option<i64>,
    pub hash: String,
    pub spec: Arc<DagSpec>,
    pub unsaved: Option<serde_json::Value>,
}

pub(super) struct DagState {
    pub info: DagInfo,
    /// its record was read: until then nothing of it is planned
    pub taken_up: bool,
    /// the schedule key of the position
    pub schedule_key: String,
    /// when the current schedule began (creation, or the change to it)
    pub since: DateTime<Utc>,
    /// the latest scheduled tick decided (created or skipped), recorded or about to be
    pub decided: Option<DateTime<Utc>>,
    /// the latest scheduled tick in the queue or decided (planning goes on after it)
    pub planned: Option<DateTime<Utc>>,
    pub next_tick: Option<DateTime<Utc>>,
    pub active: Vec<ActiveRun>,
    pub queued: usize,
    /// of which scheduled ticks, by tick (BufferOne lets one wait)
    pub waiting: BTreeSet<DateTime<Utc>>,
    /// BufferOne: the tick waiting in the buffer once the position moved past it (a newer
    /// tick skipped); recorded with the position, queued again when it was dropped (a
    /// restart, a suspension, the DAG invalid for a while) until it is decided
    pub buffered: Option<DateTime<Utc>>,
    pub last_trigger: Option<String>,
    /// trigger values known recorded, and those in the queue or being refused now
    pub handled: HashSet<String>,
    pub in_flight: HashSet<String>,
    /// values of the annotations not looked up in the record yet
    pub unchecked: bool,
    /// the schedule changed before the record was read (since then, `since` is the change)
    pub changed_before_take_up: bool,
    /// the last logical date given to a trigger without one
    pub last_manual: Option<DateTime<Utc>>,
    /// the spec version new runs are admitted with (made at the first admission)
    pub version: Option<Arc<SpecVersion>>,
    /// its last suspension of itself (from its status, or decided here since)
    pub auto: Option<AutoSuspension>,
    /// runs its upstreams' successes ask for (`triggeredBy`), until recorded
    pub upstream: Vec<super::chains::UpstreamRequest>,
    /// its expected interval between runs, and what it was computed from
    interval: Option<KnownInterval>,
}

/// A DAG's expected interval between runs, and the schedule it was computed from.
#[derive(Clone, Debug)]
struct KnownInterval {
    /// schedule, start and end dates, jitter
    of: String,
    secs: Option<f64>,
}

impl DagState {
    fn new(info: DagInfo, now: DateTime<Utc>) -> Self {
        let info_auto = info.auto_suspension().cloned();
        DagState {
            schedule_key: info.schedule_key(),
            since: info.created_at().unwrap_or(now),
            info,
            taken_up: false,
            decided: None,
            planned: None,
            next_tick: None,
            active: Vec::new(),
            queued: 0,
            waiting: BTreeSet::new(),
            buffered: None,
            last_trigger: None,
            handled: HashSet::new(),
            in_flight: HashSet::new(),
            unchecked: true,
            changed_before_take_up: false,
            last_manual: None,
            version: None,
            auto: info_auto,
            upstream: Vec::new(),
            interval: None,
        }
    }

    /// The expected interval between its scheduled runs, in seconds: the longest gap between
    /// its next ticks (from `startDate`, up to `endDate`) plus its jitter. `None` when
    /// suspended (by its spec or by itself), unscheduled (trigger-only) or out of ticks.
    /// Computed again only when the schedule changes; `gaps` shares the (up to 10 000 tick)
    /// walk between DAGs of the same schedule.
    pub fn expected_interval(
        &mut self,
        now: DateTime<Utc>,
        gaps: &mut HashMap<String, Option<i64>>,
    ) -> Option<f64> {
        if self.info.spec().suspend || self.auto_suspended() {
            return None;
        }
        let spec = self.info.spec();
        let schedule_of = format!(
            "{}|{:?}|{:?}",
            self.info.schedule_key(),
            spec.start_date,
            spec.end_date
        );
        let of = format!("{schedule_of}|{:?}", spec.jitter);
        if let Some(known) = &self.interval
            && known.of == of
        {
            return known.secs;
        }
        let gap = match gaps.get(&schedule_of) {
            Some(gap) => *gap,
            None => {
                let after = spec.start_date.map_or(now, |start| start.max(now));
                let gap = self
                    .info
                    .schedule
                    .as_ref()
                    .and_then(|s| s.longest_gap(after, spec.end_date));
                if gaps.len() >= GAP_CACHE_SIZE {
                    gaps.clear();
                }
                gaps.insert(schedule_of, gap);
                gap
            }
        };
        let jitter = spec.jitter_duration().unwrap_or_default().as_secs_f64();
        let secs = gap.map(|gap| gap as f64 + jitter);
        self.interval = Some(KnownInterval { of, secs });
        secs
    }

    /// When the scheduled run of `tick` starts: the tick plus its jitter delay.
    pub fn release(&self, tick: DateTime<Utc>) -> DateTime<Utc> {
        let jitter = self.info.spec().jitter_duration().unwrap_or_default();
        if jitter.is_zero() {
            return tick;
        }
        let delay = crate::schedule::jitter_delay(&self.info.key.to_string(), tick, jitter);
        tick + chrono::Duration::from_std(delay).unwrap_or_default()
    }

    /// Suspended by itself (`maxConsecutiveFailures`) and its spec unchanged since.
    pub fn auto_suspended(&self) -> bool {
        self.auto
            .as_ref()
            .is_some_and(|a| Some(a.generation) == self.info.object.metadata.generation)
    }

    pub fn max_active(&self) -> usize {
        if self.info.spec().concurrency_policy == ConcurrencyPolicy::BufferOne {
            return 1;
        }
        self.info.spec().max_active_runs.max(1) as usize
    }

    /// BufferOne: a run is active and another scheduled one waits already.
    fn buffer_full(&self) -> bool {
        self.info.spec().concurrency_policy == ConcurrencyPolicy::BufferOne
            && self.active.len() + self.waiting.len() >= 2
    }

    /// Ticks before this are never caught up: the DAG's creation, its current schedule's
    /// start, its `startDate`.
    fn not_before(&self) -> DateTime<Utc> {
        let created = self.info.created_at().unwrap_or(self.since);
        [Some(created), Some(self.since), self.info.spec().start_date]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.since)
    }

    /// Its scheduled tick `tick` was decided (a run created, or skipped): the position moves
    /// to it, and a buffered tick decided is no longer buffered. Whether anything changed.
    pub fn decide(&mut self, tick: DateTime<Utc>) -> bool {
        let unbuffered = self.buffered == Some(tick);
        if unbuffered {
            self.buffered = None;
        }
        let moved = self.decided < Some(tick);
        if moved {
            self.decided = Some(tick);
        }
        unbuffered || moved
    }

    pub fn position(&self) -> Position {
        Position {
            dag: self.info.key.clone(),
            dag_uid: self.info.uid().to_string(),
            schedule: self.schedule_key.clone(),
            since: self.since,
            last_tick: self.decided,
            buffered: self.buffered,
        }
    }

    /// The scheduling part of its status, once taken up.
    pub fn status(&self) -> Option<SchedulingStatus> {
        self.taken_up.then(|| SchedulingStatus {
            active_runs: self.active.len() as i32,
            queued_runs: self.queued as i32,
            last_schedule_time: self.decided,
            next_schedule_time: self.next_tick,
            last_handled_trigger: self.last_trigger.clone(),
            suspended: self.info.spec().suspend,
            auto_suspension: self.auto.clone(),
            auto_suspended: self.auto_suspended(),
        })
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    /// Reads the running runs of the watched namespace(s) (at start and at each resync): they
    /// count against the limits and hold their leases.
    /// The first time, also reads when each DAG's newest runs succeeded and failed: told to
    /// the metrics as each DAG is taken up (so a restart does not empty those gauges).
    pub async fn load(&mut self) -> Result<(), StoreError> {
        if !self.ends_loaded {
            let ends = self.store.last_ends(self.cfg.namespace.as_deref()).await?;
            self.last_ends = ends.into_iter().map(|e| (e.dag.clone(), e)).collect();
            self.ends_loaded = true;
        }
        self.resync_active().await
    }

    /// Re-reads the running runs from the store (runs ended by the executor or by hand, runs
    /// another process started).
    pub async fn resync_active(&mut self) -> Result<(), StoreError> {
        let running = self
            .store
            .running_runs(self.cfg.namespace.as_deref())
            .await?;
        let mut by_dag: HashMap<DagKey, Vec<ActiveRun>> = HashMap::new();
        for run in &running {
            by_dag
                .entry(run.dag.clone())
                .or_default()
                .push(ActiveRun::of(run));
        }
        let running_ids: HashSet<Uuid> = running.iter().map(|r| r.id).collect();
        // runs no longer running: their leases go back
        let ended: Vec<Uuid> = self
            .dags
            .values()
            .flat_map(|s| s.active.iter())
            .chain(self.orphans.values().flatten())
            .map(|r| r.id)
            .filter(|id| !running_ids.contains(id))
            .collect();
        self.runs_ended(&ended);
        for (key, runs) in &by_dag {
            for run in runs {
                self.ledger.adopt(
                    &holder(key, run.logical_date),
                    holds(key, run.backfill.as_deref()),
                );
            }
        }
        for (key, state) in &mut self.dags {
            let now_active = by_dag.remove(key).unwrap_or_default();
            if now_active != state.active {
                state.active = now_active;
                self.dirty.insert(key.clone());
            }
        }
        self.orphans = by_dag;
        self.recount_active();
        self.backfills_resynced(&running);
        self.last_resync = Some(std::time::Instant::now());
        self.doom_unlisted();
        Ok(())
    }

    pub(super) fn recount_active(&mut self) {
        self.active_total = self.dags.values().map(|d| d.active.len()).sum::<usize>()
            + self.orphans.values().map(Vec::len).sum::<usize>();
    }

    pub(super) fn upsert(&mut self, info: DagInfo, now: DateTime<Utc>) {
        let key = info.key.clone();
        self.upsert_state(info, now);
        self.report_interval(&key, now);
    }

    /// Tells the metrics a DAG's expected interval between runs (none: it has none now).
    pub(super) fn report_interval(&mut self, key: &DagKey, now: DateTime<Utc>) {
        let gaps = &mut self.schedule_gaps;
        let secs = self
            .dags
            .get_mut(key)
            .and_then(|s| s.expected_interval(now, gaps));
        self.emit(Output::Telemetry(EngineTelemetry::ScheduleInterval {
            dag: key.clone(),
            secs,
        }));
    }

    fn upsert_state(&mut self, info: DagInfo, now: DateTime<Utc>) {
        let key = info.key.clone();
        // a DAG re-created under the same name is a new object: the old one's runs end, and
        // the new one is taken up afresh
        let uid = info.uid().to_string();
        // the object exists: the listing is kept current between relists (a DAG created since
        // and then made invalid is not taken for a deleted one)
        if let Some(listed) = self.listed.as_mut() {
            listed.insert(key.clone(), uid.clone());
        }
        self.doom(&key, "the DAG was deleted and created again", |run| {
            !run.dag_uid.is_empty() && run.dag_uid != uid
        });
        if self.dags.get(&key).is_some_and(|s| s.info.uid() != uid) {
            self.remove(&key);
        }
        if info.spec().upstream_dags().next().is_some() {
            self.chained = true;
            self.want_upstreams(&key, info.spec());
        }
        let Some(state) = self.dags.get_mut(&key) else {
            if !info.spec().triggered_by.is_empty() {
                self.chain_scans.push(key.clone());
            }
            let mut state = DagState::new(info, now);
            state.active = self.orphans.remove(&key).unwrap_or_default();
            self.dags.insert(key.clone(), Box::new(state));
            self.dirty.insert(key);
            return;
        };
        let was_suspended = state.info.spec().suspend;
        let schedule_key = info.schedule_key();
        if state
            .version
            .as_ref()
            .is_some_and(|v| v.generation != info.object.metadata.generation)
        {
            state.version = None;
        }
        // the record in the status may be newer than ours (after a restart)
        if let Some(a) = info.auto_suspension()
            && state
                .auto
                .as_ref()
                .is_none_or(|mine| mine.through < a.through)
        {
            state.auto = Some(a.clone());
        }
        state.info = info;
        state.unchecked = true;
        self.dirty.insert(key.clone());
        if !state.taken_up {
            if state.schedule_key != schedule_key {
                state.schedule_key = schedule_key;
                state.since = now;
                state.changed_before_take_up = true;
            }
            return;
        }
        if state.schedule_key != schedule_key {
            // a new schedule never catches up ticks from before the change, and ticks of the
            // old one still waiting are not run under the new one
            state.schedule_key = schedule_key;
            state.since = now;
            state.planned = state.decided;
            // BufferOne's waiting tick is the old schedule's: skipped with the others below
            state.buffered = None;
            self.positions.insert(key.clone(), state.position());
            for p in self.drop_queued(&key, |p| p.run_type == RunType::Scheduled) {
                self.event(
                    &key,
                    false,
                    "RunSkipped",
                    format!(
                        "tick {} skipped: the schedule changed before it was admitted",
                        p.logical_date.to_rfc3339()
                    ),
                );
            }
        }
        let Some(state) = self.dags.get_mut(&key) else {
            return;
        };
        let suspended = state.info.spec().suspend;
        if suspended && !was_suspended {
            self.stop_planning(&key);
        }
        self.plan_due(&key, now);
    }

    /// The DAG suspended itself: its record in memory, in its status, and no more ticks.
    pub(super) fn auto_suspend(
        &mut self,
        key: &DagKey,
        suspension: AutoSuspension,
        now: DateTime<Utc>,
    ) {
        if let Some(state) = self.dags.get_mut(key) {
            state.auto = Some(suspension);
            if let Some(t) = state.next_tick.take() {
                self.timers.remove(&(t, key.clone()));
            }
        }
        self.stop_planning(key);
        self.dirty.insert(key.clone());
        self.report_interval(key, now);
    }

    /// Suspended: queued ticks go back to the record's position, so resuming catches them up
    /// (with maxCatchupRuns and a MissedRuns event), as after a restart.
    fn stop_planning(&mut self, key: &DagKey) {
        self.drop_queued(key, |p| p.run_type == RunType::Scheduled);
        if let Some(state) = self.dags.get_mut(key) {
            state.planned = state.decided;
        }
    }

    /// Takes up the DAGs upserted since the last pass: reads their record (position, last
    /// scheduled run, last trigger) in one query and plans them.
    pub(super) async fn take_up(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let keys: Vec<DagKey> = self
            .dags
            .iter()
            .filter(|(_, s)| !s.taken_up)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let records = self.store.dag_records(&keys).await?;
        for record in records {
            self.take_up_one(record, now);
        }
        Ok(())
    }

    fn take_up_one(&mut self, record: DagRecord, now: DateTime<Utc>) {
        let key = record.dag.clone();
        let pending = self.positions.get(&key).cloned();
        let Some(state) = self.dags.get_mut(&key) else {
            return;
        };
        let uid = state.info.uid().to_string();
        // decisions not written yet count as recorded (the next admission writes them)
        let position = match (record.position, pending) {
            (_, Some(p)) if p.dag_uid == uid => Some(p),
            (p, _) => p,
        };
        match position.filter(|p| p.dag_uid == uid) {
            Some(p) => {
                state.decided = p.last_tick.max(record.last_scheduled);
                // a run of the buffered tick decided it
                state.buffered = p
                    .buffered
                    .filter(|b| record.last_scheduled.is_none_or(|last| *b > last));
                if p.schedule == state.schedule_key {
                    state.since = p.since;
                } else {
                    // changed while the scheduler did not look (invalid, operator down)
                    if !state.changed_before_take_up {
                        state.since = now;
                    }
                    self.positions.insert(key.clone(), state.position());
                }
            }
            None => {
                // never recorded (an object new to the scheduler): from its creation; runs of
                // an earlier object of the name are before it anyway
                state.decided = record.last_scheduled;
                self.positions.insert(key.clone(), state.position());
            }
        }
        let state = match self.dags.get_mut(&key) {
            Some(s) => s,
            None => return,
        };
        state.planned = state.decided;
        state.last_trigger = record.last_trigger;
        state.taken_up = true;
        if state.info.spec().max_consecutive_failures.is_some() {
            // its runs may have failed in a row before a suspension reached its status (a
            // crash, a new leader): checked before its ticks are admitted
            self.failure_checks.insert(key.clone());
        }
        if let Some(ends) = self.last_ends.remove(&key) {
            self.emit(Output::Telemetry(EngineTelemetry::LastEnds(ends)));
        }
        let Some(state) = self.dags.get_mut(&key) else {
            return;
        };
        state.unchecked = true;
        self.dirty.insert(key.clone());
        self.plan_due(&key, now);
    }

    /// The DAG left the schedule (invalid): queued entries go, its running runs go on.
    pub(super) fn remove(&mut self, key: &DagKey) {
        self.drop_queued(key, |_| true);
        if let Some(state) = self.dags.remove(key) {
            self.emit(Output::Telemetry(EngineTelemetry::ScheduleInterval {
                dag: key.clone(),
                secs: None,
            }));
            if let Some(t) = state.next_tick {
                self.timers.remove(&(t, key.clone()));
            }
            if !state.active.is_empty() {
                self.orphans.insert(key.clone(), state.active);
            }
        }
    }

    /// The DAG object `uid` was deleted: off the schedule, its running runs cancelled.
    pub(super) fn deleted(&mut self, key: &DagKey, uid: &str) {
        if let Some(listed) = self.listed.as_mut() {
            if listed.get(key).is_some_and(|u| u == uid) {
                listed.remove(key);
            }
        }
        if self.dags.get(key).is_some_and(|s| s.info.uid() == uid) {
            self.remove(key);
        }
        self.doom(key, "the DAG was deleted", |run| {
            run.dag_uid == uid || run.dag_uid.is_empty()
        });
    }

    /// Removes queued entries of a DAG matching `pred`; returns them. A Backfill's entries go
    /// back to their Backfill (planned again, never lost).
    pub(super) fn drop_queued(
        &mut self,
        key: &DagKey,
        pred: impl Fn(&Pending) -> bool,
    ) -> Vec<Pending> {
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
            self.dequeued(p);
            if let Some(bf) = &p.backfill {
                self.backfill_returned(&p.dag, bf, p.logical_date);
            }
        }
        self.dirty.insert(key.clone());
        dropped
    }

    /// Marks for cancellation the running runs of `key` that `doomed` selects.
    pub(super) fn doom(
        &mut self,
        key: &DagKey,
        why: &'static str,
        doomed: impl Fn(&ActiveRun) -> bool,
    ) {
        let runs = self
            .dags
            .get(key)
            .map(|s| s.active.as_slice())
            .into_iter()
            .chain(self.orphans.get(key).map(Vec::as_slice))
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
    pub(super) fn doom_unlisted(&mut self) {
        let Some(listed) = self.listed.clone() else {
            return;
        };
        let keys: Vec<DagKey> = self
            .dags
            .keys()
            .chain(self.orphans.keys())
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
    pub(super) async fn cancel_doomed(&mut self) -> Result<(), StoreError> {
        if self.doomed.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = self.doomed.keys().copied().collect();
        self.store.cancel_runs(&ids).await?;
        let doomed = std::mem::take(&mut self.doomed);
        let mut cancelled: Vec<CancelledRun> = Vec::new();
        let mut by_dag: HashMap<DagKey, (usize, &'static str)> = HashMap::new();
        for (key, runs) in self
            .dags
            .iter()
            .map(|(k, s)| (k, &s.active))
            .chain(self.orphans.iter())
        {
            for run in runs {
                if let Some(why) = doomed.get(&run.id) {
                    cancelled.push(CancelledRun {
                        dag: key.clone(),
                        run: run.id,
                    });
                    by_dag.entry(key.clone()).or_insert((0, why)).0 += 1;
                }
            }
        }
        let ids: Vec<Uuid> = cancelled.iter().map(|c| c.run).collect();
        self.runs_ended(&ids);
        for (key, (count, why)) in by_dag {
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

    /// Marks runs as no longer active (they ended): their leases go back. Unknown ids are
    /// ignored.
    pub fn runs_ended(&mut self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let ids: HashSet<&Uuid> = ids.iter().collect();
        let mut of_backfills: Vec<(DagKey, String, Uuid)> = Vec::new();
        // the runs that ended, by DAG (failures and upstreams are looked at for them)
        let mut ended: HashMap<DagKey, Vec<Uuid>> = HashMap::new();
        for (key, runs) in self
            .dags
            .iter_mut()
            .map(|(k, s)| (k.clone(), &mut s.active))
            .chain(self.orphans.iter_mut().map(|(k, v)| (k.clone(), v)))
        {
            let before = runs.len();
            runs.retain(|run| {
                if ids.contains(&run.id) {
                    ended.entry(key.clone()).or_default().push(run.id);
                    self.ledger.end(&holder(&key, run.logical_date));
                    if let Some(bf) = &run.backfill {
                        of_backfills.push((key.clone(), bf.clone(), run.id));
                    }
                    false
                } else {
                    true
                }
            });
            if runs.len() != before {
                self.dirty.insert(key);
            }
        }
        self.orphans.retain(|_, v| !v.is_empty());
        self.recount_active();
        for (key, ids) in ended {
            if self.is_upstream(&key) {
                self.upstream_ended.extend(ids);
            }
            if self
                .dags
                .get(&key)
                .is_some_and(|s| s.info.spec().max_consecutive_failures.is_some())
            {
                self.failure_checks.insert(key);
            }
        }
        for (dag, bf, id) in of_backfills {
            self.backfill_run_ended(&dag, &bf, id);
        }
    }

    pub(super) fn fire_timers(&mut self, now: DateTime<Utc>) {
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
    }

    /// Enqueues the DAG's due ticks after its planned position (catch-up bounds applied) and
    /// sets its timer.
    pub(super) fn plan_due(&mut self, key: &DagKey, now: DateTime<Utc>) {
        let cfg = self.cfg.clone();
        let Some(state) = self.dags.get_mut(key) else {
            return;
        };
        if let Some(t) = state.next_tick.take() {
            self.timers.remove(&(t, key.clone()));
        }
        self.dirty.insert(key.clone());
        let object = state.info.object.clone();
        let spec = &object.spec;
        let priority = state.info.priority;
        let Some(schedule) = state.info.schedule.clone() else {
            return;
        };
        if !state.taken_up || spec.suspend || state.auto_suspended() {
            return;
        }
        // the buffered tick, dropped from the queue (suspended, invalid, a restart): first
        if let Some(tick) = state.buffered.filter(|t| !state.waiting.contains(t)) {
            let params = spec.params.clone().unwrap_or(serde_json::json!({}));
            self.enqueue(
                Pending::scheduled(key.clone(), tick, params, now),
                RunClass::Scheduled,
                priority,
            );
        }
        let Some(state) = self.dags.get_mut(key) else {
            return;
        };
        let policy = CatchupPolicy::from_spec(
            spec.catchup.unwrap_or(cfg.enable_catchup),
            spec.max_catchup_runs.unwrap_or(cfg.max_catchup_runs),
        );
        let plan = catch_up(
            &schedule,
            &CatchupRequest {
                after: state.planned,
                not_before: state.not_before(),
                not_after: spec.end_date,
                now,
                policy,
            },
        );
        // jitter: a due tick whose delayed start has not come waits, and the ticks after it
        // with it (they are planned in order); the timer wakes at its start
        let mut due = plan.due;
        let mut held = None;
        if let Some(i) = due.iter().position(|t| state.release(*t) > now) {
            held = Some(state.release(due[i]));
            due.truncate(i);
        }
        if let Some(last) = due.last().copied().or(plan.missed_last) {
            state.planned = state.planned.max(Some(last));
        }
        let next = schedule
            .next_after(now)
            .filter(|t| spec.end_date.is_none_or(|end| *t <= end))
            .map(|t| state.release(t));
        let wake = match (held, next) {
            (Some(h), Some(n)) => Some(h.min(n)),
            (h, n) => h.or(n),
        };
        state.next_tick = wake;
        if let Some(t) = wake {
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
        for tick in due {
            if let Some(state) = self.dags.get_mut(key).filter(|s| s.buffer_full()) {
                // the waiting tick stays in the buffer as the position moves past it
                if state.buffered.is_none() {
                    state.buffered = state.waiting.first().copied();
                }
                self.skip_tick(
                    key,
                    tick,
                    false,
                    "concurrencyPolicy BufferOne: a run is active and another waits",
                );
                continue;
            }
            self.enqueue(
                Pending::scheduled(key.clone(), tick, params.clone(), now),
                RunClass::Scheduled,
                priority,
            );
        }
    }

    /// A scheduled tick was decided without a run (skipped): the position moves past it.
    pub(super) fn tick_decided(&mut self, key: &DagKey, tick: DateTime<Utc>) {
        if let Some(state) = self.dags.get_mut(key) {
            if state.decide(tick) {
                self.positions.insert(key.clone(), state.position());
            }
        }
    }
}
