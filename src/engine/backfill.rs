//! Backfills in the engine (SPEC §2.3, §3.3, §4): a Backfill's ticks in `[start, end)` are
//! planned lazily (never materialised: a year of minutely ticks is walked, not stored) and fed
//! into the one admission queue at backfill priority, at most `concurrency` of them queued or
//! running at a time, so scheduled runs keep their place and the queue stays small. Aging in
//! the queue lifts backfill runs that wait long, so neither side starves.
//!
//! What has been done is read back from PostgreSQL, never remembered only in memory: after a
//! restart the plan is walked again, dates whose run this Backfill created are passed over, and
//! the counts come from the store.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Engine, LimitKey, Output, Pending, ms};
use crate::api::BackfillStatus;
use crate::api::backfill::{BackfillPhase, BackfillSpec, Reprocess};
use crate::gate::Gate;
use crate::queue::RunClass;
use crate::schedule::plan::{BackfillPlan, BackfillTicks};
use crate::store::{BackfillCounts, DagKey, DateRun, RunState, RunStore, RunType, StoreError};

/// How many planned dates a status shows.
pub const PLANNED_DATES_SHOWN: usize = 100;

/// What the controller knows of a Backfill.
#[derive(Clone, Debug)]
pub struct BackfillInfo {
    /// namespace and name of the Backfill
    pub key: DagKey,
    pub generation: Option<i64>,
    pub spec: BackfillSpec,
}

impl BackfillInfo {
    fn dag(&self) -> DagKey {
        DagKey::new(&self.key.namespace, &self.spec.dag_ref.name)
    }
}

/// A Backfill's status as the engine sees it; the status writer adds the conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillReport {
    pub status: BackfillStatus,
    /// the `Ready` condition: (status, reason, message)
    pub ready: (bool, String, String),
}

struct Plan {
    ticks: BackfillTicks,
    exhausted: bool,
    total: u64,
    skipped: u64,
    planned: Vec<DateTime<Utc>>,
    /// runs that existed in the range when planning began, by logical date
    existing: HashMap<i64, DateRun>,
}

pub(super) struct BackfillState {
    info: BackfillInfo,
    plan: Option<Plan>,
    /// (reason, message) while the Backfill cannot be planned
    invalid: Option<(String, String)>,
    counts: BackfillCounts,
    active: HashSet<Uuid>,
    pub(super) queued: usize,
    dirty: bool,
    last_report: Option<BackfillReport>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
}

impl BackfillState {
    fn concurrency(&self) -> usize {
        self.info.spec.concurrency.max(1) as usize
    }

    /// Whether the queue must hold this Backfill's entries back.
    pub(super) fn is_full(&self, in_batch: usize) -> bool {
        self.info.spec.suspend || self.active.len() + in_batch >= self.concurrency()
    }

    pub(super) fn active_ids(&self) -> Vec<Uuid> {
        self.active.iter().copied().collect()
    }

    pub(super) fn limit(&self) -> u32 {
        self.info.spec.concurrency.max(1) as u32
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    pub(super) fn upsert_backfill(&mut self, info: BackfillInfo) {
        let key = info.key.clone();
        match self.backfills.get_mut(&key) {
            Some(state) => {
                let suspended = info.spec.suspend && !state.info.spec.suspend;
                state.info = info;
                state.dirty = true;
                if suspended {
                    self.drop_backfill_queue(&key);
                }
            }
            None => {
                self.backfills.insert(
                    key,
                    BackfillState {
                        info,
                        plan: None,
                        invalid: None,
                        counts: BackfillCounts::default(),
                        active: HashSet::new(),
                        queued: 0,
                        dirty: true,
                        last_report: None,
                        started_at: None,
                        completed_at: None,
                    },
                );
            }
        }
    }

    /// The Backfill was deleted: nothing more is admitted; its running runs finish.
    pub(super) fn remove_backfill(&mut self, key: &DagKey) {
        self.drop_backfill_queue(key);
        self.backfills.remove(key);
    }

    fn drop_backfill_queue(&mut self, key: &DagKey) {
        let dag = match self.backfills.get(key) {
            Some(b) => b.info.dag(),
            None => return,
        };
        let name = key.name.clone();
        self.drop_queued(&dag, |p| p.backfill.as_deref() == Some(name.as_str()));
    }

    /// Runs of a Backfill ended.
    pub(super) fn backfill_runs_ended(&mut self, ids: &[Uuid]) {
        for state in self.backfills.values_mut() {
            let before = state.active.len();
            state.active.retain(|id| !ids.contains(id));
            if state.active.len() != before {
                state.dirty = true;
            }
        }
    }

    /// A run of Backfill `name` of `dag` was admitted.
    pub(super) fn backfill_run_started(&mut self, dag: &DagKey, name: &str, id: Uuid) {
        if let Some(state) = self.backfills.get_mut(&DagKey::new(&dag.namespace, name)) {
            state.active.insert(id);
            state.dirty = true;
        }
    }

    /// An entry of Backfill `name` left the queue (admitted, refused and requeued, dropped).
    pub(super) fn backfill_dequeued(&mut self, dag: &DagKey, name: &str) {
        if let Some(state) = self.backfills.get_mut(&DagKey::new(&dag.namespace, name)) {
            state.queued = state.queued.saturating_sub(1);
        }
    }

    /// A date could not be created (another run took it first): it counts as skipped.
    pub(super) fn backfill_date_taken(&mut self, dag: &DagKey, name: &str) {
        if let Some(state) = self.backfills.get_mut(&DagKey::new(&dag.namespace, name)) {
            if let Some(plan) = state.plan.as_mut() {
                plan.skipped += 1;
            }
            state.dirty = true;
        }
    }

    /// Plans what can be planned and tops up each Backfill's share of the queue.
    pub(super) async fn feed_backfills(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let keys: Vec<DagKey> = self.backfills.keys().cloned().collect();
        for key in keys {
            self.prepare_backfill(&key).await?;
            self.top_up(&key, now);
        }
        Ok(())
    }

    async fn prepare_backfill(&mut self, key: &DagKey) -> Result<(), StoreError> {
        let max = self.cfg.max_backfill_runs;
        let Some(state) = self.backfills.get_mut(key) else {
            return Ok(());
        };
        if state.plan.is_some() {
            return Ok(());
        }
        let dag = state.info.dag();
        let spec = state.info.spec.clone();
        let problem = match self.dags.get(&dag) {
            None => Some((
                "DAGNotFound".to_string(),
                format!(
                    "waiting for DAG {:?}: it does not exist in namespace {:?} or is invalid",
                    dag.name, dag.namespace
                ),
            )),
            Some(d) if d.info.schedule.is_none() => Some((
                "DAGUnscheduled".to_string(),
                format!(
                    "DAG {:?} has no schedule: there are no ticks to backfill",
                    dag.name
                ),
            )),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            if state.invalid.as_ref() != Some(&problem) {
                state.invalid = Some(problem);
                state.dirty = true;
            }
            return Ok(());
        }
        let Some(schedule) = self.dags.get(&dag).and_then(|d| d.info.schedule.clone()) else {
            return Ok(());
        };
        let plan = BackfillPlan::new(&schedule, spec.start, spec.end, spec.order.into());
        let total = plan.count_up_to(max);
        if total > max {
            // the exact size, when it can be counted quickly
            let size = plan.count_up_to(max.saturating_mul(10));
            let size = if size > max.saturating_mul(10) {
                format!("more than {}", max.saturating_mul(10))
            } else {
                size.to_string()
            };
            state.invalid = Some((
                "TooManyRuns".to_string(),
                format!(
                    "the range plans {size} runs, over --max-backfill-runs ({max}); \
                     split it into smaller Backfills"
                ),
            ));
            state.dirty = true;
            return Ok(());
        }
        let existing: HashMap<i64, DateRun> = self
            .store
            .runs_between(&dag, spec.start, spec.end)
            .await?
            .into_iter()
            .map(|r| (r.logical_date.timestamp(), r))
            .collect();
        let Some(state) = self.backfills.get_mut(key) else {
            return Ok(());
        };
        state.active = existing
            .values()
            .filter(|r| {
                r.state == RunState::Running && r.backfill_name.as_deref() == Some(&key.name)
            })
            .map(|r| r.id)
            .collect();
        let planned: Vec<DateTime<Utc>> = plan.iter().take(PLANNED_DATES_SHOWN).collect();
        let mut skipped = 0;
        let mut ticks = plan.iter();
        let mut exhausted = false;
        if spec.dry_run {
            // what would be skipped, without creating anything
            for tick in ticks.by_ref() {
                if let Some(run) = existing.get(&tick.timestamp()) {
                    if decide(&spec, &key.name, run) == Decision::Skip {
                        skipped += 1;
                    }
                }
            }
            exhausted = true;
        }
        state.invalid = None;
        state.plan = Some(Plan {
            ticks,
            exhausted,
            total,
            skipped,
            planned,
            existing,
        });
        state.dirty = true;
        Ok(())
    }

    /// Queues the Backfill's next dates while fewer than `concurrency` are queued or running.
    fn top_up(&mut self, key: &DagKey, now: DateTime<Utc>) {
        let Some(state) = self.backfills.get_mut(key) else {
            return;
        };
        let spec = state.info.spec.clone();
        if spec.suspend || spec.dry_run {
            return;
        }
        let dag = state.info.dag();
        let Some(dag_state) = self.dags.get(&dag) else {
            return;
        };
        let dag_object = dag_state.info.object.clone();
        let dag_spec = &dag_object.spec;
        let room = state
            .concurrency()
            .saturating_sub(state.active.len() + state.queued);
        let Some(plan) = state.plan.as_mut() else {
            return;
        };
        let mut fed = Vec::new();
        while fed.len() < room && !plan.exhausted {
            let Some(tick) = plan.ticks.next() else {
                plan.exhausted = true;
                state.dirty = true;
                break;
            };
            let rerun = match plan.existing.get(&tick.timestamp()) {
                None => None,
                Some(run) => match decide(&spec, &key.name, run) {
                    Decision::Done => continue,
                    Decision::Skip => {
                        plan.skipped += 1;
                        state.dirty = true;
                        continue;
                    }
                    Decision::Rerun => Some(run.id),
                },
            };
            fed.push((tick, rerun));
        }
        let mut params = match dag_spec.params.as_ref() {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(serde_json::Value::Object(extra)) = spec.params.as_ref() {
            params.extend(extra.clone());
        }
        let params = serde_json::Value::Object(params);
        for (tick, rerun) in fed {
            self.enqueue(
                Pending {
                    dag: dag.clone(),
                    logical_date: tick,
                    run_type: RunType::Backfill,
                    params: params.clone(),
                    enqueued_ms: ms(now),
                    backfill: Some(key.name.clone()),
                    rerun,
                },
                RunClass::Backfill,
                dag_spec.priority,
            );
        }
    }

    /// Reads the counts of changed Backfills from the store and reports their status and the
    /// events of phase changes.
    pub(super) async fn report_backfills(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let dirty: Vec<DagKey> = self
            .backfills
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| k.clone())
            .collect();
        for key in dirty {
            let Some(state) = self.backfills.get(&key) else {
                continue;
            };
            let dag = state.info.dag();
            let counts = if state.plan.is_some() {
                self.store.backfill_counts(&dag, &key.name).await?
            } else {
                BackfillCounts::default()
            };
            let Some(state) = self.backfills.get_mut(&key) else {
                continue;
            };
            state.counts = counts;
            state.dirty = false;
            let report = render(state, now);
            let before = state.last_report.as_ref().and_then(|r| r.status.phase);
            let after = report.status.phase;
            state.started_at = report.status.started_at;
            state.completed_at = report.status.completed_at;
            if state.last_report.as_ref() != Some(&report) {
                state.last_report = Some(report.clone());
                self.emit(Output::Backfill(key.clone(), report.clone()));
            }
            if before != after {
                if let Some((warning, reason)) = match after {
                    Some(BackfillPhase::Running) => Some((false, "BackfillStarted")),
                    Some(BackfillPhase::Succeeded) => Some((false, "BackfillSucceeded")),
                    Some(BackfillPhase::Failed) => Some((true, "BackfillFailed")),
                    Some(BackfillPhase::Invalid) => Some((true, "BackfillInvalid")),
                    _ => None,
                } {
                    self.emit(Output::BackfillEvent {
                        backfill: key.clone(),
                        warning,
                        reason,
                        message: report.ready.2.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The gate limit of a Backfill's runs.
    pub(super) fn backfill_limit(&self, dag: &DagKey, name: &str) -> u32 {
        self.backfills
            .get(&DagKey::new(&dag.namespace, name))
            .map_or(1, BackfillState::limit)
    }
}

/// The queue key of a Backfill's entries.
pub(super) fn limit_key(dag: &DagKey, name: &str) -> LimitKey {
    LimitKey::Backfill(DagKey::new(&dag.namespace, name))
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// this Backfill created or re-ran it already
    Done,
    Skip,
    Rerun,
}

/// What `reprocess` says of a date that already has a run.
fn decide(spec: &BackfillSpec, backfill: &str, run: &DateRun) -> Decision {
    if run.backfill_name.as_deref() == Some(backfill) {
        return Decision::Done;
    }
    match (spec.reprocess, run.state) {
        (_, RunState::Running) => Decision::Skip,
        (Reprocess::None, _) => Decision::Skip,
        (Reprocess::Failed, RunState::Failed) => Decision::Rerun,
        (Reprocess::Failed, _) => Decision::Skip,
        (Reprocess::All, _) => Decision::Rerun,
    }
}

fn render(state: &BackfillState, now: DateTime<Utc>) -> BackfillReport {
    let spec = &state.info.spec;
    let c = state.counts;
    let mut status = BackfillStatus {
        observed_generation: state.info.generation,
        started_at: state.started_at,
        completed_at: state.completed_at,
        ..Default::default()
    };
    if let Some((reason, message)) = &state.invalid {
        status.phase = Some(BackfillPhase::Invalid);
        return BackfillReport {
            status,
            ready: (false, reason.clone(), message.clone()),
        };
    }
    let Some(plan) = &state.plan else {
        status.phase = Some(BackfillPhase::Pending);
        return BackfillReport {
            status,
            ready: (false, "Planning".into(), "planning the backfill".into()),
        };
    };
    let total = plan.total as i64;
    let skipped = plan.skipped as i64;
    let finished = skipped + c.success + c.failed + c.cancelled;
    status.total_runs = total;
    status.skipped_runs = skipped;
    status.created_runs = c.total();
    status.active_runs = c.running;
    status.succeeded_runs = c.success;
    status.failed_runs = c.failed + c.cancelled;
    status.progress = Some(format!("{finished}/{total}"));
    status.planned_dates = plan.planned.clone();
    let done = plan.exhausted && state.queued == 0 && c.running == 0;
    let (phase, ready, reason, message) = if spec.dry_run {
        (
            BackfillPhase::Succeeded,
            true,
            "DryRun",
            format!(
                "dry run: {total} runs planned ({skipped} dates already have a run and would \
                 be skipped); nothing was created"
            ),
        )
    } else if done {
        if status.failed_runs > 0 {
            (
                BackfillPhase::Failed,
                true,
                "Failed",
                format!(
                    "{} of {} runs failed ({} succeeded, {skipped} skipped)",
                    status.failed_runs,
                    c.total(),
                    c.success
                ),
            )
        } else {
            (
                BackfillPhase::Succeeded,
                true,
                "Succeeded",
                format!("all {} runs succeeded ({skipped} dates skipped)", c.total()),
            )
        }
    } else if spec.suspend {
        (
            BackfillPhase::Suspended,
            true,
            "Suspended",
            format!("suspended at {finished}/{total}: no new runs are admitted"),
        )
    } else if c.total() > 0 {
        (
            BackfillPhase::Running,
            true,
            "Running",
            format!(
                "{finished}/{total} done, {} running, at most {} at once",
                c.running, spec.concurrency
            ),
        )
    } else {
        (
            BackfillPhase::Pending,
            true,
            "Pending",
            format!("{total} runs planned; waiting for slots"),
        )
    };
    status.phase = Some(phase);
    if matches!(phase, BackfillPhase::Running) || (c.total() > 0 && status.started_at.is_none()) {
        status.started_at = status.started_at.or(Some(now));
    }
    if matches!(phase, BackfillPhase::Succeeded | BackfillPhase::Failed) {
        status.completed_at = status.completed_at.or(Some(now));
    } else {
        status.completed_at = None;
    }
    BackfillReport {
        status,
        ready: (ready, reason.to_string(), message),
    }
}
