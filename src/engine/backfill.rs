//! Backfills in the engine (SPEC §2.3, §3.3, §4).
//!
//! A Backfill's ticks in `[start, end)` are planned lazily — counted without materialising
//! them (a big count runs off the engine's task), then walked a window of ticks at a time — and
//! fed into the one admission queue at backfill priority, at most `concurrency` of them queued
//! or running at a time, so scheduled runs keep their place and the queue stays small.
//!
//! Progress is the record: a date is done only when PostgreSQL says so (`backfill_dates`,
//! written in the same transaction as the run it created or re-ran, or as its skip). Dates
//! taken out of the queue (suspend, the DAG removed) go back to the Backfill and are decided
//! again; a restart walks the plan again and passes over the done dates. A finished Backfill is
//! recorded (`backfills.completed_at`) and never planned again: its timestamps and events stay
//! as they were.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::admit::Pending;
use super::{Engine, EngineStatus, Output, merge_objects, micros};
use crate::api::backfill::{BackfillSpec, Reprocess};
use crate::gate::Gate;
use crate::key::Subject;
use crate::queue::RunClass;
use crate::report::{Notice, Problem};
use crate::schedule::Schedule;
use crate::schedule::plan::{BackfillPlan, BackfillTicks};
use crate::store::{
    BackfillCounts, BackfillKey, BackfillRecord, BackfillRef, BackfillSkip, DagKey, DateRun,
    RunRow, RunState, RunStore, RunType, StoreError,
};

/// How many planned dates a status shows.
pub const PLANNED_DATES_SHOWN: usize = 100;

/// Ticks decided per window (one query for the done dates, one for the existing runs).
const WINDOW: usize = 256;
/// Most windows one Backfill walks in one pass (a restart of a big Backfill walks its done
/// dates over several passes, never stalling admissions; the engine passes again at once).
const WINDOWS_PER_PASS: usize = 64;
/// Existing runs a dry run looks at per pass (it counts the dates it would skip).
const DRY_RUN_PAGE: i64 = 10_000;
/// Plans up to this many ticks are counted in the engine's task; bigger ones off it.
const COUNT_INLINE: u64 = 100_000;

/// What the controller knows of a Backfill.
#[derive(Clone, Debug)]
pub struct BackfillInfo {
    /// namespace and name of the Backfill
    pub key: BackfillKey,
    pub uid: String,
    pub generation: Option<i64>,
    pub spec: BackfillSpec,
}

impl BackfillInfo {
    fn dag(&self) -> DagKey {
        DagKey::new(&self.key.namespace, &self.spec.dag_ref.name)
    }

    fn reference(&self) -> BackfillRef {
        BackfillRef {
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// Where a Backfill stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackfillPhase {
    Pending,
    Running,
    Suspended,
    Succeeded,
    Failed,
    Invalid,
}

impl BackfillPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillPhase::Pending => "Pending",
            BackfillPhase::Running => "Running",
            BackfillPhase::Suspended => "Suspended",
            BackfillPhase::Succeeded => "Succeeded",
            BackfillPhase::Failed => "Failed",
            BackfillPhase::Invalid => "Invalid",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            BackfillPhase::Pending,
            BackfillPhase::Running,
            BackfillPhase::Suspended,
            BackfillPhase::Succeeded,
            BackfillPhase::Failed,
            BackfillPhase::Invalid,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    fn finished(self) -> bool {
        matches!(self, BackfillPhase::Succeeded | BackfillPhase::Failed)
    }
}

/// A Backfill's progress as the engine reports it (the status layer renders it).
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillProgress {
    pub generation: Option<i64>,
    pub phase: BackfillPhase,
    /// dates planned, and done with: skipped, created or re-run by state
    pub total: i64,
    pub skipped: i64,
    pub created: i64,
    pub active: i64,
    pub succeeded: i64,
    /// failed or cancelled
    pub failed: i64,
    /// the first planned dates, in admission order
    pub planned_dates: Vec<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// whether it is Ready, why, and the message
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl BackfillProgress {
    /// `done/total`, as the printer column shows.
    pub fn progress(&self) -> String {
        format!(
            "{}/{}",
            self.skipped + self.succeeded + self.failed,
            self.total
        )
    }
}

/// What a date of the plan needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// a new run
    Create,
    /// the existing run again, in place
    Rerun(Uuid),
}

struct Plan {
    ticks: BackfillTicks,
    exhausted: bool,
    total: u64,
    planned: Vec<DateTime<Utc>>,
    /// decided dates waiting for room in the queue
    ahead: VecDeque<(DateTime<Utc>, Need)>,
    /// dry run: dates that would be skipped, and how far the existing runs were looked at
    would_skip: u64,
    dry_cursor: Option<DateTime<Utc>>,
    schedule: Schedule,
}

enum Stage {
    /// for the DAG to be taken up; or it is missing or unscheduled (the problem)
    Waiting(Option<Problem>),
    /// counting a large plan off the engine's task: (schedule it was for, the count)
    Counting(tokio::task::JoinHandle<u64>),
    Invalid(Problem),
    Planning(Box<Plan>),
    /// recorded as finished: never planned again
    Finished(BackfillPhase),
}

pub(super) struct BackfillState {
    info: BackfillInfo,
    /// the record's lifetime, once read
    record: Option<BackfillRecord>,
    stage: Stage,
    /// dates taken out of the queue (suspend, the DAG removed): decided again first
    returned: BTreeSet<DateTime<Utc>>,
    active: HashSet<Uuid>,
    pub(super) queued: usize,
    counts: BackfillCounts,
    dirty: bool,
    last_report: Option<BackfillProgress>,
    /// the first planned dates (also of a finished one, for its status)
    planned: Vec<DateTime<Utc>>,
}

impl BackfillState {
    fn concurrency(&self) -> usize {
        self.info.spec.concurrency.max(1) as usize
    }

    /// Whether the queue must hold this Backfill's entries back.
    pub(super) fn is_full(&self, in_batch: usize) -> bool {
        self.info.spec.suspend || self.active.len() + in_batch >= self.concurrency()
    }

    fn limit(&self) -> u32 {
        self.info.spec.concurrency.max(1) as u32
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    pub(super) fn upsert_backfill(&mut self, info: BackfillInfo) {
        let key = info.key.clone();
        match self.backfills.get_mut(&key) {
            Some(state) if state.info.uid == info.uid => {
                let suspended = info.spec.suspend && !state.info.spec.suspend;
                state.info = info;
                state.dirty = true;
                if suspended {
                    self.drop_backfill_queue(&key);
                }
            }
            _ => {
                // new, or re-created under the name: a new object, a new record; its running
                // runs are those the engine counts (after a restart, adopted from the store)
                self.drop_backfill_queue(&key);
                let dag = info.dag();
                let active: HashSet<Uuid> = self
                    .dags
                    .get(&dag)
                    .map(|s| s.active.as_slice())
                    .into_iter()
                    .chain(self.orphans.get(&dag).map(Vec::as_slice))
                    .flatten()
                    .filter(|r| r.backfill.as_deref() == Some(key.name.as_str()))
                    .map(|r| r.id)
                    .collect();
                self.backfills.insert(
                    key,
                    BackfillState {
                        info,
                        record: None,
                        stage: Stage::Waiting(None),
                        returned: BTreeSet::new(),
                        active,
                        queued: 0,
                        counts: BackfillCounts::default(),
                        dirty: true,
                        last_report: None,
                        planned: Vec::new(),
                    },
                );
            }
        }
    }

    /// The Backfill was deleted: nothing more is admitted; its running runs finish.
    pub(super) fn remove_backfill(&mut self, key: &BackfillKey) {
        self.drop_backfill_queue(key);
        self.backfills.remove(key);
    }

    fn drop_backfill_queue(&mut self, key: &BackfillKey) {
        let dag = match self.backfills.get(key) {
            Some(b) => b.info.dag(),
            None => return,
        };
        let name = key.name.clone();
        self.drop_queued(&dag, |p| p.backfill.as_deref() == Some(name.as_str()));
    }

    fn backfill_mut(&mut self, dag: &DagKey, name: &str) -> Option<&mut BackfillState> {
        self.backfills.get_mut(&dag.backfill(name))
    }

    pub(super) fn backfill_enqueued(&mut self, dag: &DagKey, name: &str) {
        if let Some(state) = self.backfill_mut(dag, name) {
            state.queued += 1;
        }
    }

    /// An entry of Backfill `name` left the queue (admitted, refused and requeued, dropped).
    pub(super) fn backfill_dequeued(&mut self, dag: &DagKey, name: &str) {
        if let Some(state) = self.backfill_mut(dag, name) {
            state.queued = state.queued.saturating_sub(1);
        }
    }

    /// A date dropped from the queue before it was recorded: decided again later.
    pub(super) fn backfill_returned(&mut self, dag: &DagKey, name: &str, date: DateTime<Utc>) {
        if let Some(state) = self.backfill_mut(dag, name) {
            state.returned.insert(date);
            state.dirty = true;
        }
    }

    /// A run of Backfill `name` of `dag` ended (its progress changed).
    pub(super) fn backfill_run_ended(&mut self, dag: &DagKey, name: &str, id: Uuid) {
        if let Some(state) = self.backfill_mut(dag, name) {
            state.active.remove(&id);
            state.dirty = true;
        }
    }

    /// The running runs, read again: each Backfill's running runs.
    pub(super) fn backfills_resynced(&mut self, running: &[RunRow]) {
        for (key, state) in &mut self.backfills {
            let now: HashSet<Uuid> = running
                .iter()
                .filter(|r| {
                    r.dag.namespace == key.namespace
                        && r.backfill_name.as_deref() == Some(key.name.as_str())
                })
                .map(|r| r.id)
                .collect();
            if now != state.active {
                state.active = now;
                state.dirty = true;
            }
        }
    }

    /// A run of Backfill `name` of `dag` was admitted.
    pub(super) fn backfill_run_started(
        &mut self,
        dag: &DagKey,
        name: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) {
        if let Some(state) = self.backfill_mut(dag, name) {
            state.active.insert(id);
            state.dirty = true;
            if let Some(record) = state.record.as_mut() {
                if record.started_at.is_none() {
                    record.started_at = Some(micros(now));
                }
            }
        }
    }

    /// A date could not be created (another run took it first): recorded as skipped.
    pub(super) fn backfill_date_taken(&mut self, dag: &DagKey, name: &str) {
        if let Some(state) = self.backfill_mut(dag, name) {
            state.dirty = true;
        }
    }

    /// A Backfill's record changed (dates recorded): its progress is read again.
    pub(super) fn backfill_progressed(&mut self, key: &BackfillKey) {
        if let Some(state) = self.backfills.get_mut(key) {
            state.dirty = true;
        }
    }

    /// The gate limit of a Backfill's runs.
    pub(super) fn backfill_limit(&self, dag: &DagKey, name: &str) -> u32 {
        self.backfills
            .get(&dag.backfill(name))
            .map_or(1, BackfillState::limit)
    }

    /// Plans what can be planned and tops up each Backfill's share of the queue.
    pub(super) async fn feed_backfills(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let keys: Vec<BackfillKey> = self.backfills.keys().cloned().collect();
        for key in keys {
            self.prepare_backfill(&key).await?;
            self.walk(&key, now).await?;
        }
        Ok(())
    }

    /// Moves a Backfill towards planning: its record read (a finished one stops here), its
    /// DAG found, its plan counted.
    async fn prepare_backfill(&mut self, key: &BackfillKey) -> Result<(), StoreError> {
        let max = self.cfg.max_backfill_runs;
        let Some(state) = self.backfills.get(key) else {
            return Ok(());
        };
        if state.record.is_none() {
            let record = self
                .store
                .backfill_record(&state.info.reference())
                .await?
                .unwrap_or_default();
            let Some(state) = self.backfills.get_mut(key) else {
                return Ok(());
            };
            if record.completed_at.is_some() {
                let phase = record
                    .phase
                    .as_deref()
                    .and_then(BackfillPhase::parse)
                    .unwrap_or(BackfillPhase::Succeeded);
                state.stage = Stage::Finished(phase);
            }
            state.record = Some(record);
            state.dirty = true;
        }
        let Some(state) = self.backfills.get_mut(key) else {
            return Ok(());
        };
        if let Stage::Finished(_) = state.stage {
            // a finished Backfill shows its first planned dates, never plans again
            if state.planned.is_empty() {
                let spec = state.info.spec.clone();
                if let Some(schedule) = self
                    .dags
                    .get(&state.info.dag())
                    .and_then(|d| d.info.schedule.clone())
                {
                    let plan =
                        BackfillPlan::new(&schedule, spec.start, spec.end, spec.order.into());
                    state.planned = plan.iter().take(PLANNED_DATES_SHOWN).collect();
                    state.dirty = true;
                }
            }
            return Ok(());
        }
        match &mut state.stage {
            Stage::Finished(_) | Stage::Invalid(..) | Stage::Planning(_) => return Ok(()),
            Stage::Counting(handle) => {
                if !handle.is_finished() {
                    return Ok(());
                }
                let total = handle.await.unwrap_or(u64::MAX);
                let state = match self.backfills.get_mut(key) {
                    Some(s) => s,
                    None => return Ok(()),
                };
                let schedule = self
                    .dags
                    .get(&state.info.dag())
                    .and_then(|d| d.info.schedule.clone());
                match schedule {
                    Some(schedule) => start_plan(state, &schedule, total, max),
                    None => state.stage = Stage::Waiting(None),
                }
                state.dirty = true;
                return Ok(());
            }
            Stage::Waiting(..) => {}
        }
        let dag = state.info.dag();
        let problem = match self.dags.get(&dag) {
            None => Some(Problem::new(
                "DAGNotFound",
                format!(
                    "waiting for DAG {:?}: it does not exist in namespace {:?} or is invalid",
                    dag.name, dag.namespace
                ),
            )),
            Some(d) if d.info.schedule.is_none() => Some(Problem::new(
                "DAGUnscheduled",
                format!(
                    "DAG {:?} has no schedule: there are no ticks to backfill",
                    dag.name
                ),
            )),
            Some(_) => None,
        };
        let Some(state) = self.backfills.get_mut(key) else {
            return Ok(());
        };
        if let Some(problem) = problem {
            if !matches!(&state.stage, Stage::Waiting(Some(p)) if *p == problem) {
                state.stage = Stage::Waiting(Some(problem));
                state.dirty = true;
            }
            return Ok(());
        }
        let Some(schedule) = self.dags.get(&dag).and_then(|d| d.info.schedule.clone()) else {
            return Ok(());
        };
        let spec = state.info.spec.clone();
        let plan = BackfillPlan::new(&schedule, spec.start, spec.end, spec.order.into());
        let small = plan.count_up_to(COUNT_INLINE);
        if small <= COUNT_INLINE {
            start_plan(state, &schedule, small, max);
        } else {
            // the count of a large plan runs beside the engine, which keeps admitting
            let bound = max.saturating_mul(10);
            let handle = tokio::task::spawn_blocking(move || {
                BackfillPlan::new(&schedule, spec.start, spec.end, spec.order.into())
                    .count_up_to(bound)
            });
            state.stage = Stage::Counting(handle);
        }
        state.dirty = true;
        Ok(())
    }

    /// Decides the next dates of a Backfill's plan (a few windows per pass) and queues what
    /// fits in its share: returned dates first, then new ones in plan order.
    async fn walk(&mut self, key: &BackfillKey, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(state) = self.backfills.get(key) else {
            return Ok(());
        };
        let dry_run = state.info.spec.dry_run;
        let room = state
            .concurrency()
            .saturating_sub(state.active.len() + state.queued);
        if !matches!(state.stage, Stage::Planning(_))
            || (!dry_run && (state.info.spec.suspend || room == 0))
        {
            return Ok(());
        }
        let dag = state.info.dag();
        if !self.dags.get(&dag).is_some_and(|d| d.taken_up) {
            return Ok(());
        }
        let reference = state.info.reference();
        let spec = state.info.spec.clone();
        if dry_run {
            return self.dry_walk(key, &dag, &spec).await;
        }
        let mut windows = 0;
        loop {
            let Some(state) = self.backfills.get_mut(key) else {
                return Ok(());
            };
            let Stage::Planning(plan) = &mut state.stage else {
                return Ok(());
            };
            if plan.ahead.len() >= room {
                break;
            }
            if windows >= WINDOWS_PER_PASS {
                // more next pass, at once
                self.more_work = true;
                break;
            }
            // returned dates first, then the plan's next window
            let window: Vec<DateTime<Utc>> = if !state.returned.is_empty() {
                let dates: Vec<DateTime<Utc>> =
                    state.returned.iter().take(WINDOW).copied().collect();
                for d in &dates {
                    state.returned.remove(d);
                }
                dates
            } else if plan.exhausted {
                break;
            } else {
                let dates: Vec<DateTime<Utc>> = plan.ticks.by_ref().take(WINDOW).collect();
                if dates.len() < WINDOW {
                    plan.exhausted = true;
                }
                dates
            };
            windows += 1;
            if window.is_empty() {
                continue;
            }
            let (lo, hi) = (
                *window.iter().min().unwrap_or(&window[0]),
                *window.iter().max().unwrap_or(&window[0]),
            );
            let store = &self.store;
            let looked_up = async {
                let done = store.backfill_done(&reference, lo, hi).await?;
                let end = hi + chrono::Duration::microseconds(1);
                Ok::<_, StoreError>((done, store.runs_between(&dag, lo, end).await?))
            };
            let (done, existing) = match looked_up.await {
                Ok(found) => found,
                Err(e) => {
                    // not decided: the window's dates are decided again first next pass
                    if let Some(state) = self.backfills.get_mut(key) {
                        state.returned.extend(window);
                    }
                    return Err(e);
                }
            };
            let done: HashSet<DateTime<Utc>> = done.into_iter().collect();
            let existing: HashMap<DateTime<Utc>, DateRun> =
                existing.into_iter().map(|r| (r.logical_date, r)).collect();
            let Some(state) = self.backfills.get_mut(key) else {
                return Ok(());
            };
            let Stage::Planning(plan) = &mut state.stage else {
                return Ok(());
            };
            for date in window {
                if done.contains(&date) {
                    continue;
                }
                match existing.get(&date) {
                    None => plan.ahead.push_back((date, Need::Create)),
                    Some(run) => match decide(&spec, run) {
                        Some(id) => plan.ahead.push_back((date, Need::Rerun(id))),
                        None => self.skips.push(BackfillSkip {
                            backfill: reference.clone(),
                            logical_date: date,
                        }),
                    },
                }
            }
            state.dirty = true;
        }
        self.top_up(key, room, now);
        Ok(())
    }

    /// A dry run creates nothing: it counts the planned dates that already have a run
    /// `reprocess` would leave alone, reading the range's existing runs a page at a time.
    async fn dry_walk(
        &mut self,
        key: &BackfillKey,
        dag: &DagKey,
        spec: &BackfillSpec,
    ) -> Result<(), StoreError> {
        let Some(state) = self.backfills.get(key) else {
            return Ok(());
        };
        let Stage::Planning(plan) = &state.stage else {
            return Ok(());
        };
        let Some(from) = plan.dry_cursor else {
            return Ok(());
        };
        let page = self
            .store
            .runs_page(dag, from, spec.end, DRY_RUN_PAGE)
            .await?;
        let Some(state) = self.backfills.get_mut(key) else {
            return Ok(());
        };
        let Stage::Planning(plan) = &mut state.stage else {
            return Ok(());
        };
        for run in &page {
            if plan.schedule.is_tick(run.logical_date) && decide(spec, run).is_none() {
                plan.would_skip += 1;
            }
        }
        plan.dry_cursor = match page.last() {
            Some(last) if page.len() as i64 == DRY_RUN_PAGE => {
                self.more_work = true;
                Some(last.logical_date + chrono::Duration::microseconds(1))
            }
            _ => {
                plan.exhausted = true;
                None
            }
        };
        state.dirty = true;
        Ok(())
    }

    /// Queues up to `room` decided dates of a Backfill.
    fn top_up(&mut self, key: &BackfillKey, room: usize, now: DateTime<Utc>) {
        let Some(state) = self.backfills.get_mut(key) else {
            return;
        };
        let dag = state.info.dag();
        let Some(dag_state) = self.dags.get(&dag) else {
            return;
        };
        let dag_object = dag_state.info.object.clone();
        let priority = dag_state.info.priority;
        let uid = state.info.uid.clone();
        let Stage::Planning(plan) = &mut state.stage else {
            return;
        };
        let fed: Vec<(DateTime<Utc>, Need)> =
            (0..room).map_while(|_| plan.ahead.pop_front()).collect();
        let params = merge_objects(
            dag_object.spec.params.as_ref(),
            state.info.spec.params.as_ref(),
        );
        for (tick, need) in fed {
            self.enqueue(
                Pending {
                    dag: dag.clone(),
                    logical_date: tick,
                    run_type: RunType::Backfill,
                    params: params.clone(),
                    enqueued_ms: now.timestamp_millis(),
                    trigger: None,
                    backfill: Some(key.name.clone()),
                    backfill_uid: Some(uid.clone()),
                    rerun: match need {
                        Need::Create => None,
                        Need::Rerun(id) => Some(id),
                    },
                    interval: None,
                },
                RunClass::Backfill,
                priority,
            );
        }
    }

    /// Reads the counts of changed Backfills from the record, records lifetimes (started,
    /// finished) and reports status and the events of phase changes.
    pub(super) async fn report_backfills(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let dirty: Vec<BackfillKey> = self
            .backfills
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| k.clone())
            .collect();
        for key in dirty {
            let Some(state) = self.backfills.get(&key) else {
                continue;
            };
            let reference = state.info.reference();
            let counts = if matches!(state.stage, Stage::Planning(_) | Stage::Finished(_)) {
                self.store.backfill_counts(&reference).await?
            } else {
                BackfillCounts::default()
            };
            let pending_skips = self.skips.iter().any(|s| s.backfill == reference);
            let Some(state) = self.backfills.get_mut(&key) else {
                continue;
            };
            state.counts = counts;
            state.dirty = false;
            let mut report = render(state, pending_skips);
            // the lifetime is recorded: started once, finished once
            let record = state.record.clone().unwrap_or_default();
            let mut new_record = record.clone();
            if counts.total() > 0 && new_record.started_at.is_none() {
                new_record.started_at = Some(micros(now));
            }
            if report.phase.finished() && new_record.completed_at.is_none() {
                new_record.completed_at = Some(micros(now));
                new_record.phase = Some(report.phase.as_str().to_string());
            }
            new_record.total = Some(report.total);
            if state.info.spec.dry_run {
                new_record.would_skip = Some(report.skipped);
            }
            if new_record != record {
                if let Err(e) = self.store.save_backfill(&reference, &new_record).await {
                    // not recorded: reported again (and saved) by the next pass
                    if let Some(state) = self.backfills.get_mut(&key) {
                        state.dirty = true;
                    }
                    return Err(e);
                }
            }
            let Some(state) = self.backfills.get_mut(&key) else {
                continue;
            };
            if report.phase.finished() {
                state.stage = Stage::Finished(report.phase);
            }
            report.started_at = new_record.started_at;
            report.completed_at = new_record.completed_at;
            state.record = Some(new_record.clone());
            let before = state.last_report.as_ref().map(|r| r.phase);
            if state.last_report.as_ref() != Some(&report) {
                state.last_report = Some(report.clone());
                self.emit(Output::Status(EngineStatus::Backfill(
                    key.clone(),
                    report.clone(),
                )));
            }
            // events of changes this process saw happen (a restart re-emits none)
            let started = record.started_at.is_none() && new_record.started_at.is_some();
            let finished = record.completed_at.is_none() && new_record.completed_at.is_some();
            let event = match report.phase {
                BackfillPhase::Succeeded if finished => Some((false, "BackfillSucceeded")),
                BackfillPhase::Failed if finished => Some((true, "BackfillFailed")),
                BackfillPhase::Invalid if before != Some(BackfillPhase::Invalid) => {
                    Some((true, "BackfillInvalid"))
                }
                _ if started => Some((false, "BackfillStarted")),
                _ => None,
            };
            if let Some((warning, reason)) = event {
                self.emit(Output::Event(Notice {
                    subject: Subject::Backfill(key.clone()),
                    warning,
                    reason,
                    message: report.message.clone(),
                }));
            }
        }
        Ok(())
    }
}

/// The plan of a Backfill counted `total` ticks: Invalid over `max`, else planning starts.
fn start_plan(state: &mut BackfillState, schedule: &Schedule, total: u64, max: u64) {
    let spec = &state.info.spec;
    if total > max {
        // the exact size when it could be counted quickly
        let size = if total > max.saturating_mul(10) {
            format!("more than {}", max.saturating_mul(10))
        } else {
            total.to_string()
        };
        state.stage = Stage::Invalid(Problem::new(
            "TooManyRuns",
            format!(
                "the range plans {size} runs, over --max-backfill-runs ({max}); \
                 split it into smaller Backfills"
            ),
        ));
        return;
    }
    let plan = BackfillPlan::new(schedule, spec.start, spec.end, spec.order.into());
    state.planned = plan.iter().take(PLANNED_DATES_SHOWN).collect();
    state.stage = Stage::Planning(Box::new(Plan {
        ticks: plan.iter(),
        exhausted: false,
        total,
        planned: state.planned.clone(),
        ahead: VecDeque::new(),
        would_skip: 0,
        dry_cursor: Some(spec.start),
        schedule: schedule.clone(),
    }));
}

/// What `reprocess` says of a date that already has a run (which this Backfill has not done):
/// the run to re-run, or none (skip).
fn decide(spec: &BackfillSpec, run: &DateRun) -> Option<Uuid> {
    match (spec.reprocess, run.state) {
        (_, RunState::Running) => None,
        (Reprocess::None, _) => None,
        (Reprocess::Failed, RunState::Failed) => Some(run.id),
        (Reprocess::Failed, _) => None,
        (Reprocess::All, _) => Some(run.id),
    }
}

/// A Backfill's progress from its stage and counts. `pending_skips`: skips decided but not
/// recorded yet (it is not done before they are).
fn render(state: &BackfillState, pending_skips: bool) -> BackfillProgress {
    let spec = &state.info.spec;
    let c = state.counts;
    let record = state.record.clone().unwrap_or_default();
    let mut p = BackfillProgress {
        generation: state.info.generation,
        phase: BackfillPhase::Pending,
        total: record.total.unwrap_or(0),
        skipped: c.skipped,
        created: c.total(),
        active: c.running,
        succeeded: c.success,
        failed: c.failed + c.cancelled,
        planned_dates: Vec::new(),
        started_at: record.started_at,
        completed_at: record.completed_at,
        ready: true,
        reason: String::new(),
        message: String::new(),
    };
    let (phase, ready, reason, message) = match &state.stage {
        Stage::Waiting(Some(Problem { reason, message })) => (
            BackfillPhase::Invalid,
            false,
            reason.clone(),
            message.clone(),
        ),
        Stage::Waiting(..) | Stage::Counting(_) => (
            BackfillPhase::Pending,
            false,
            "Planning".to_string(),
            "planning the backfill".to_string(),
        ),
        Stage::Invalid(Problem { reason, message }) => (
            BackfillPhase::Invalid,
            false,
            reason.clone(),
            message.clone(),
        ),
        Stage::Finished(phase) => {
            p.planned_dates = state.planned.clone();
            if spec.dry_run {
                p.skipped = record.would_skip.unwrap_or(0);
                (*phase, true, "DryRun".to_string(), dry_run_message(&p))
            } else {
                let (reason, message) = finished_message(*phase, &p);
                (*phase, true, reason, message)
            }
        }
        Stage::Planning(plan) => {
            p.total = plan.total as i64;
            p.planned_dates = plan.planned.clone();
            // done: nothing left to decide or running, and every planned date recorded
            let done = plan.exhausted
                && plan.ahead.is_empty()
                && state.returned.is_empty()
                && state.queued == 0
                && c.running == 0
                && !pending_skips
                && (c.total() + c.skipped) as u64 >= plan.total;
            if spec.dry_run {
                p.skipped = plan.would_skip as i64;
                let (phase, message) = if plan.exhausted {
                    (BackfillPhase::Succeeded, dry_run_message(&p))
                } else {
                    (BackfillPhase::Pending, "dry run: planning".to_string())
                };
                (phase, true, "DryRun".to_string(), message)
            } else if done {
                let phase = if p.failed > 0 {
                    BackfillPhase::Failed
                } else {
                    BackfillPhase::Succeeded
                };
                let (reason, message) = finished_message(phase, &p);
                (phase, true, reason, message)
            } else if spec.suspend {
                (
                    BackfillPhase::Suspended,
                    true,
                    "Suspended".to_string(),
                    format!("suspended at {}: no new runs are admitted", p.progress()),
                )
            } else if c.total() > 0 {
                (
                    BackfillPhase::Running,
                    true,
                    "Running".to_string(),
                    format!(
                        "{} done, {} running, at most {} at once",
                        p.progress(),
                        c.running,
                        spec.concurrency
                    ),
                )
            } else {
                (
                    BackfillPhase::Pending,
                    true,
                    "Pending".to_string(),
                    format!("{} runs planned; waiting for slots", p.total),
                )
            }
        }
    };
    p.phase = phase;
    p.ready = ready;
    p.reason = reason;
    p.message = message;
    p
}

fn dry_run_message(p: &BackfillProgress) -> String {
    format!(
        "dry run: {} runs planned ({} dates already have a run and would be skipped); nothing \
         was created",
        p.total, p.skipped
    )
}

fn finished_message(phase: BackfillPhase, p: &BackfillProgress) -> (String, String) {
    if phase == BackfillPhase::Failed {
        (
            "Failed".to_string(),
            format!(
                "{} of {} runs failed ({} succeeded, {} skipped)",
                p.failed, p.created, p.succeeded, p.skipped
            ),
        )
    } else if p.created == 0 && p.skipped == p.total {
        (
            "Succeeded".to_string(),
            format!("nothing to run: all {} dates skipped", p.total),
        )
    } else {
        (
            "Succeeded".to_string(),
            format!(
                "all {} runs succeeded ({} dates skipped)",
                p.created, p.skipped
            ),
        )
    }
}
