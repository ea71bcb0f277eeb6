//! One executor step: load what is new, decide the runs that changed and write the decisions
//! in one transaction, keep the leases, admit, delete, report.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use uuid::Uuid;

use super::output::retry_notice;
use super::plan::{self, Patience, PodSight, Step};
use super::state::{self, LiveRun, RunSpec};
use super::{
    EndedTry, ExecError, ExecOutput, ExecStatus, Executor, PodKey, PodLauncher, PoolUsage,
    RunFinished, TaskTelemetry, TryFinished, pod_key,
};
use crate::gate::Gate;
use crate::graph::{RunOutcome, TaskState};
use crate::key::PoolKey;
use crate::report::Notice;
use crate::store::{
    Applied, Changes, NextTry, RunEnd, RunRow, RunState, RunStore, SpecRow, Stamp, TaskMove,
    TaskRow,
};

/// What a written decision changes in memory once it took effect: task `task` of run `run`
/// is now `row` (with `used` tries), its Pod as given.
enum Effect {
    Try {
        run: Uuid,
        task: usize,
        row: TaskRow,
        used: i32,
        pod: PodSight,
        /// the Pod to delete once this is written
        stop: Option<PodKey>,
    },
}

/// A task that has no running try moves `from` → `to` (queued, or ended without running):
/// the move to write and what it changes in memory once written.
fn not_started(
    run: &LiveRun,
    id: Uuid,
    task: usize,
    from: TaskState,
    to: TaskState,
    now: DateTime<Utc>,
) -> (TaskMove, Effect) {
    let live = &run.tasks[task];
    let mut m = TaskMove::new(live.key(), from, to, now);
    let mut row = live.row.clone();
    row.state = to;
    if to == TaskState::Queued {
        m.stamp = Stamp::Queued;
        row.queued_at = Some(now);
    } else {
        m.stamp = Stamp::Ended;
        row.ended_at = Some(now);
    }
    let effect = Effect::Try {
        run: id,
        task,
        row,
        used: live.used,
        pod: PodSight::Gone { since: now },
        stop: None,
    };
    (m, effect)
}

/// The decisions of one step at `now`: the changes to write, and beside each (index for
/// index) what it changes in memory once written.
struct Decisions {
    now: DateTime<Utc>,
    changes: Changes,
    move_effects: Vec<Effect>,
    retry_effects: Vec<Effect>,
    /// tries that end, by the index of their move: reported once it is written
    try_ends: Vec<(usize, TryFinished, Option<Notice>, EndedTry)>,
    /// (when, run): a decision of the run depends on time
    wakes: Vec<(DateTime<Utc>, Uuid)>,
    /// runs ended by their runTimeoutSeconds, with it
    timed_out: HashMap<Uuid, i64>,
}

impl Decisions {
    fn new(now: DateTime<Utc>) -> Self {
        Decisions {
            now,
            changes: Changes::default(),
            move_effects: Vec::new(),
            retry_effects: Vec::new(),
            try_ends: Vec::new(),
            wakes: Vec::new(),
            timed_out: HashMap::new(),
        }
    }

    /// Plans one run and adds its steps, and its end if it ended.
    fn add_run(&mut self, run: &LiveRun, patience: Patience) {
        let id = run.run.id;
        let deadline = plan::RunDeadline::of(run.run.started_at, run.spec.spec.run_timeout_seconds);
        let decided = plan::plan_run_within(
            &run.spec.graph,
            &run.spec.rules,
            &run.views(),
            patience,
            deadline,
            self.now,
        );
        if let Some(limit) = decided.timed_out {
            self.timed_out.insert(id, limit);
        }
        if let Some(t) = decided.wake_at {
            self.wakes.push((t, id));
        }
        for step in decided.steps {
            self.add_step(run, step);
        }
        let state = match decided.outcome {
            RunOutcome::Running => None,
            RunOutcome::Success => Some(RunState::Success),
            RunOutcome::Failed => Some(RunState::Failed),
        };
        if let Some(state) = state {
            self.changes.run_ends.push(RunEnd {
                id,
                state,
                at: self.now,
            });
        }
    }

    fn add_step(&mut self, run: &LiveRun, step: Step) {
        let (id, now) = (run.run.id, self.now);
        match step {
            Step::Ended {
                task,
                to,
                exit_code,
                message,
                stop_pod,
            } => self.end_try(run, task, to, exit_code, message, stop_pod),
            Step::Retry { task } => self.retry(run, task),
            Step::Abandoned { task, from } => {
                let (m, effect) = not_started(run, id, task, from, TaskState::Skipped, now);
                self.move_effects.push(effect);
                self.changes.moves.push(m);
            }
            Step::Decided { task, to } => {
                let (m, effect) = not_started(run, id, task, TaskState::Pending, to, now);
                self.move_effects.push(effect);
                self.changes.moves.push(m);
            }
        }
    }

    /// The running try of task `task` ends in `to` (its Pod stopped when `stop_pod`); the
    /// end is reported once written, with a `TaskRetrying` event when another try follows.
    fn end_try(
        &mut self,
        run: &LiveRun,
        task: usize,
        to: TaskState,
        exit_code: Option<i32>,
        message: Option<String>,
        stop_pod: bool,
    ) {
        let now = self.now;
        let live = &run.tasks[task];
        let secs = live.row.started_at.map_or(0.0, |s| {
            ((now - s).num_milliseconds() as f64 / 1000.0).max(0.0)
        });
        let retrying = (to == TaskState::UpForRetry).then(|| {
            retry_notice(
                &run.run.dag,
                &live.row.task_name,
                live.row.try_number,
                exit_code.or(live.row.exit_code),
                message.as_deref().or(live.row.message.as_deref()),
                run.spec.rules[task].retry_delay(live.used),
            )
        });
        self.try_ends.push((
            self.changes.moves.len(),
            TryFinished { state: to, secs },
            retrying,
            EndedTry {
                key: live.key(),
                pod: pod_key(&run.run, live),
            },
        ));
        let mut m = TaskMove::new(live.key(), TaskState::Running, to, now);
        m.stamp = Stamp::Ended;
        m.exit_code = exit_code;
        m.message = message.clone();
        let mut row = live.row.clone();
        row.state = to;
        row.ended_at = Some(now);
        row.exit_code = exit_code.or(row.exit_code);
        row.message = message.or(row.message);
        self.move_effects.push(Effect::Try {
            run: run.run.id,
            task,
            row,
            used: live.used,
            pod: live.pod.clone(),
            stop: stop_pod.then(|| pod_key(&run.run, live)),
        });
        self.changes.moves.push(m);
    }

    /// Task `task` gets its next try, queued now.
    fn retry(&mut self, run: &LiveRun, task: usize) {
        let now = self.now;
        let live = &run.tasks[task];
        let mut row = live.row.clone();
        row.try_number += 1;
        row.state = TaskState::Queued;
        row.queued_at = Some(now);
        row.started_at = None;
        row.ended_at = None;
        row.pod_name = None;
        row.exit_code = None;
        row.message = None;
        self.retry_effects.push(Effect::Try {
            run: run.run.id,
            task,
            row,
            used: live.used + 1,
            pod: PodSight::Gone { since: now },
            stop: None,
        });
        self.changes.retries.push(NextTry {
            key: live.key(),
            at: now,
        });
    }
}

impl<S: RunStore, G: Gate, L: PodLauncher> Executor<S, G, L> {
    /// One step at `now`. Returns true when work is left that needs no new input (a full
    /// admission batch, runs to decide again): the caller steps again at once.
    pub async fn step(&mut self, now: DateTime<Utc>) -> Result<bool, ExecError> {
        if !self.pods_listed {
            // a try's Pod is judged only once the watch has listed what exists
            return Ok(false);
        }
        let resync_due = self.last_load.is_none_or(|t| {
            t + chrono::Duration::from_std(self.cfg.resync_interval).unwrap_or_default() <= now
        });
        if !self.loaded || resync_due {
            self.load(now).await?;
        }
        self.load_admitted(now).await?;
        self.carry_out_actions(now).await?;
        self.decide(now).await?;
        let gate_result = self.ledger.upkeep(&self.gate).await;
        if let Err(e) = &gate_result {
            self.gate_down(e);
        }
        // an admission under way goes on (its creates are in flight) even without the gate
        let more = if gate_result.is_ok() || self.admission.is_some() {
            self.admit(now).await?
        } else {
            false
        };
        self.delete_doomed(now).await;
        self.admitting.set(self.is_admitting());
        self.report().await?;
        // decisions that follow from the ones just written (a task became ready) come next
        Ok(more || !self.dirty.is_empty())
    }

    /// Reads every running run of the watched namespace from PostgreSQL and makes memory
    /// agree: runs that ended elsewhere leave, runs not known join, known ones take the
    /// stored tries. Running tries' slots are adopted (registered over any limit: they run).
    pub(super) async fn load(&mut self, now: DateTime<Utc>) -> Result<(), ExecError> {
        let rows = self
            .store
            .running_runs(self.cfg.namespace.as_deref())
            .await?;
        let running: HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
        for id in self.live.ids() {
            if !running.contains(&id) {
                if let Some(run) = self.live.remove(&id) {
                    for task in &run.tasks {
                        self.ledger.end(&state::holder(&task.key()));
                    }
                    self.dags_changed.insert(run.run.dag.clone());
                }
            }
        }
        self.add_runs(rows, HashMap::new(), now).await?;
        // what is remembered of Pods deleted early concerns only tries still queued
        let early = std::mem::take(&mut self.deleted_early);
        self.deleted_early = early
            .into_iter()
            .filter(|(_, (owner, _))| self.is_queued(owner))
            .collect();
        self.loaded = true;
        self.last_load = Some(now);
        Ok(())
    }

    /// Runs the engine admitted since the last step.
    async fn load_admitted(&mut self, now: DateTime<Utc>) -> Result<(), ExecError> {
        if self.admitted.is_empty() {
            return Ok(());
        }
        let admitted = std::mem::take(&mut self.admitted);
        let mut given: HashMap<String, Arc<crate::api::DagSpec>> = HashMap::new();
        let mut rows = Vec::with_capacity(admitted.len());
        for a in &admitted {
            if let Some(hash) = &a.run.spec_hash {
                given.entry(hash.clone()).or_insert_with(|| a.spec.clone());
            }
            rows.push(a.run.clone());
        }
        if let Err(e) = self.add_runs(rows, given, now).await {
            self.admitted = admitted;
            return Err(e);
        }
        Ok(())
    }

    /// Puts runs (with their stored tries) into memory, replacing what is known of them.
    pub(super) async fn add_runs(
        &mut self,
        runs: Vec<RunRow>,
        given: HashMap<String, Arc<crate::api::DagSpec>>,
        now: DateTime<Utc>,
    ) -> Result<(), ExecError> {
        if runs.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
        let mut tries: HashMap<Uuid, Vec<TaskRow>> = HashMap::new();
        for row in self.store.task_instances(&ids).await? {
            tries.entry(row.run_id).or_default().push(row);
        }
        self.resolve_specs(&runs, given).await?;
        for run in runs {
            let Some(spec) = run
                .spec_hash
                .as_ref()
                .and_then(|h| self.specs.get(h))
                .cloned()
            else {
                // no spec version and no DAG to read one from: the engine cancels such runs
                continue;
            };
            let rows = tries.remove(&run.id).unwrap_or_default();
            let id = run.id;
            self.dags_changed.insert(run.dag.clone());
            let mut live = LiveRun::new(run, spec, rows, now);
            for task in &mut live.tasks {
                if task.row.state == TaskState::Running {
                    let key = pod_key(&live.run, task);
                    task.pod = self.sight_of(&key, now);
                    self.ledger.adopt(
                        &state::holder(&task.key()),
                        state::holds(&live.run.dag.namespace, &task.row),
                    );
                }
            }
            self.live.insert(live);
            self.dirty.insert(id);
        }
        self.admit_dirty = true;
        Ok(())
    }

    /// Makes sure every run names a spec version held in memory: given by the engine, read
    /// from PostgreSQL, or — for runs admitted before versions existed — the DAG's current
    /// spec, pinned to the run.
    pub(super) async fn resolve_specs(
        &mut self,
        runs: &[RunRow],
        given: HashMap<String, Arc<crate::api::DagSpec>>,
    ) -> Result<(), ExecError> {
        for (hash, spec) in given {
            if !self.specs.contains_key(&hash) {
                self.add_spec(hash, spec);
            }
        }
        let wanted: Vec<String> = runs
            .iter()
            .filter_map(|r| r.spec_hash.clone())
            .filter(|h| !self.specs.contains_key(h))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for row in self.store.specs(&wanted).await? {
            match serde_json::from_value::<crate::api::DagSpec>(row.spec) {
                Ok(spec) => self.add_spec(row.hash, Arc::new(spec)),
                Err(e) => tracing::error!(hash = %row.hash, error = %e, "stored spec unreadable"),
            }
        }
        // runs from before spec versions: pin the DAG's current spec
        let mut legacy: HashMap<crate::store::DagKey, Vec<Uuid>> = HashMap::new();
        for run in runs.iter().filter(|r| r.spec_hash.is_none()) {
            legacy.entry(run.dag.clone()).or_default().push(run.id);
        }
        if legacy.is_empty() {
            return Ok(());
        }
        let Some(current) = self.current_specs.clone() else {
            return Ok(());
        };
        for (dag, ids) in legacy {
            let Some(spec) = current.current(&dag) else {
                continue;
            };
            let Ok((hash, json)) = spec.content_hash() else {
                continue;
            };
            self.store
                .save_specs(&[SpecRow {
                    hash: hash.clone(),
                    spec: json,
                }])
                .await?;
            self.store.pin_spec(&ids, &hash).await?;
            self.add_spec(hash, spec);
        }
        Ok(())
    }

    fn add_spec(&mut self, hash: String, spec: Arc<crate::api::DagSpec>) {
        match RunSpec::new(spec, self.cfg.default_tz) {
            Ok(s) => {
                self.specs.insert(hash, Arc::new(s));
            }
            Err(e) => tracing::error!(%hash, error = %e, "spec version with an invalid graph"),
        }
    }

    /// Decides the runs that changed or fell due, writes every decision in one transaction,
    /// then changes memory to match.
    async fn decide(&mut self, now: DateTime<Utc>) -> Result<(), ExecError> {
        self.fire_timers(now);
        if self.dirty.is_empty() {
            return Ok(());
        }
        let decisions = self.plan_dirty(now);
        let applied = self.write_decisions(&decisions.changes).await?;
        self.apply_decisions(decisions, applied);
        Ok(())
    }

    /// Runs whose timer fell due are decided again.
    fn fire_timers(&mut self, now: DateTime<Utc>) {
        while let Some((t, id)) = self.timers.first().copied() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, id));
            self.dirty.insert(id);
        }
    }

    /// Plans every run to decide (pure per run), gathering the changes to write.
    fn plan_dirty(&mut self, now: DateTime<Utc>) -> Decisions {
        let patience = Patience {
            stuck: self.cfg.pending_grace,
            unseen: self.cfg.unseen_grace,
        };
        let mut decisions = Decisions::new(now);
        for id in std::mem::take(&mut self.dirty) {
            if let Some(run) = self.live.get(&id) {
                decisions.add_run(run, patience);
            }
        }
        decisions
    }

    /// Writes the decisions in one transaction. When it fails nothing changed: the same runs
    /// are decided again next time.
    async fn write_decisions(&mut self, changes: &Changes) -> Result<Applied, ExecError> {
        match self.store.write_changes(changes).await {
            Ok(applied) => Ok(applied),
            Err(e) => {
                self.dirty
                    .extend(changes.moves.iter().map(|m| m.key.run_id));
                self.dirty
                    .extend(changes.retries.iter().map(|r| r.key.run_id));
                self.dirty.extend(changes.run_ends.iter().map(|r| r.id));
                Err(e.into())
            }
        }
    }

    /// Changes memory as the written decisions say, and reports what took effect.
    fn apply_decisions(&mut self, decisions: Decisions, applied: Applied) {
        let Decisions {
            changes,
            move_effects,
            retry_effects,
            try_ends,
            wakes,
            timed_out,
            now: _,
        } = decisions;
        for (t, id) in wakes {
            self.timers.insert((t, id));
        }
        for (index, finished, notice, ended) in try_ends {
            if applied.moves.get(index).copied().unwrap_or(false) {
                self.tries_finished.push(finished);
                self.tries_ended.push(ended);
                if let Some(n) = notice {
                    self.emit(ExecOutput::Event(n));
                }
            }
        }
        let tries = move_effects
            .into_iter()
            .zip(applied.moves)
            .chain(retry_effects.into_iter().zip(applied.retries));
        for (effect, took) in tries {
            if took {
                self.take_effect(effect);
            }
        }
        self.end_runs(&changes.run_ends, applied.run_ends, &timed_out);
    }

    /// Runs whose end was written (`took`) or not (the run was not running any more: another
    /// replica ended it, or it was cancelled; either way it is over here too) leave memory;
    /// the ones this step ended are reported.
    fn end_runs(&mut self, ends: &[RunEnd], took: Vec<bool>, timed_out: &HashMap<Uuid, i64>) {
        let mut ended = Vec::new();
        for (end, took) in ends.iter().zip(took) {
            if let Some(run) = self.live.remove(&end.id) {
                for task in &run.tasks {
                    self.ledger.end(&state::holder(&task.key()));
                }
                self.dags_changed.insert(run.run.dag.clone());
                if took {
                    let mut finished = RunFinished::of(&run, end.state, end.at);
                    finished.timed_out_after = timed_out.get(&end.id).copied();
                    self.emit(ExecOutput::Event(finished.notice()));
                    self.runs_finished.push(finished);
                }
            }
            self.dirty.remove(&end.id);
            ended.push(end.id);
        }
        if !ended.is_empty() {
            self.emit(ExecOutput::RunsEnded(ended));
        }
    }

    /// Changes memory as a written decision says.
    fn take_effect(&mut self, effect: Effect) {
        match effect {
            Effect::Try {
                run,
                task,
                row,
                used,
                pod,
                stop,
            } => {
                let before = self
                    .live
                    .get(&run)
                    .and_then(|r| r.tasks.get(task))
                    .map(|t| (t.key(), t.row.state));
                if let Some((key, TaskState::Running)) = &before {
                    if row.state != TaskState::Running {
                        // the try ended: its slots go back, something else may start
                        self.ledger.end(&state::holder(key));
                        self.admit_dirty = true;
                    }
                }
                if row.state == TaskState::Queued {
                    self.admit_dirty = true;
                }
                self.transitions.push(row.state);
                self.live.set_try(&run, task, row, used, pod);
                self.doomed_pods.extend(stop);
                // the next decision of the run may follow at once (e.g. a task became ready)
                self.dirty.insert(run);
            }
        }
    }

    /// Deletes stopped Pods, the Pods of cancelled runs, and finished Pods past their
    /// retention, many at a time; failed deletes are tried again at their own time, backing
    /// off ([`plan::delete_retry_delay`]) while they keep failing.
    async fn delete_doomed(&mut self, now: DateTime<Utc>) {
        while let Some((t, key)) = self.retention.first().cloned() {
            if t > now {
                break;
            }
            self.retention.remove(&(t, key.clone()));
            self.doomed_pods.push(key);
        }
        let mut pods = std::mem::take(&mut self.doomed_pods);
        let mut runs = std::mem::take(&mut self.doomed_runs);
        let retrying = self.deletes_failed.retry_at.is_some_and(|t| t <= now);
        if retrying {
            self.deletes_failed.retry_at = None;
            pods.append(&mut self.deletes_failed.pods);
            runs.append(&mut self.deletes_failed.runs);
        }
        if pods.is_empty() && runs.is_empty() {
            return;
        }
        let limit = self.cfg.create_concurrency.max(1);
        let deletes = pods.into_iter().map(|key| {
            let launcher = self.launcher.clone();
            async move {
                let result = launcher.delete(&key).await;
                result.err().map(|e| {
                    tracing::warn!(pod = %key, error = %e, "could not delete a pod; will retry");
                    key
                })
            }
        });
        let failed_pods: Vec<PodKey> = futures::stream::iter(deletes)
            .buffer_unordered(limit)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        let deletes = runs.into_iter().map(|run| {
            let launcher = self.launcher.clone();
            async move {
                let result = launcher.delete_run(&run.dag.namespace, run.run).await;
                result.err().map(|e| {
                    tracing::warn!(run = %run.run, error = %e, "could not delete a run's pods; will retry");
                    run
                })
            }
        });
        let failed_runs: Vec<super::CancelledRun> = futures::stream::iter(deletes)
            .buffer_unordered(limit)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        let failed = &mut self.deletes_failed;
        if failed_pods.is_empty() && failed_runs.is_empty() {
            if retrying {
                failed.rounds = 0;
            }
            return;
        }
        failed.pods.extend(failed_pods);
        failed.runs.extend(failed_runs);
        // one retry time for all of them, set by the first failure after the last retry:
        // later failures wait for it rather than pushing it on
        if failed.retry_at.is_none() {
            failed.rounds = failed.rounds.saturating_add(1);
            let delay = plan::delete_retry_delay(failed.rounds);
            failed.retry_at = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
        }
    }

    /// Reports what changed: the newest runs of DAGs whose runs changed, Pools, task counts.
    async fn report(&mut self) -> Result<(), ExecError> {
        if !self.dags_changed.is_empty() {
            let dags: Vec<_> = std::mem::take(&mut self.dags_changed).into_iter().collect();
            match self.store.recent_runs(&dags, 5).await {
                Ok(recent) => {
                    for r in recent {
                        self.emit(ExecOutput::Status(ExecStatus::RecentRuns(r)));
                    }
                }
                Err(e) => {
                    self.dags_changed.extend(dags);
                    return Err(e.into());
                }
            }
        }
        if self.live.take_pools_touched() || std::mem::take(&mut self.pools_dirty) {
            self.report_pools();
        }
        let tasks = ExecOutput::Telemetry(TaskTelemetry {
            by_state: TaskState::ALL
                .iter()
                .map(|s| (*s, self.live.by_state(*s)))
                .collect(),
            transitions: std::mem::take(&mut self.transitions),
            gate_refused: std::mem::take(&mut self.gate_refused),
            gate_errors: std::mem::take(&mut self.gate_errors),
            runs_finished: std::mem::take(&mut self.runs_finished),
            tries_finished: std::mem::take(&mut self.tries_finished),
        });
        self.emit(tasks);
        if !self.tries_ended.is_empty() {
            let ended = std::mem::take(&mut self.tries_ended);
            self.emit(ExecOutput::TriesEnded(ended));
        }
        Ok(())
    }

    /// Reports the usage of every Pool whose usage, slots or generation changed.
    fn report_pools(&mut self) {
        let mut changed = Vec::new();
        let mut live = HashSet::new();
        for pool in self.pools.pools() {
            let key = PoolKey::new(pool.namespace, pool.name);
            let usage = PoolUsage {
                used: self.live.pool_used(&key) as i32,
                queued: self.live.pool_queued(&key).max(0) as i32,
                key: key.clone(),
                generation: pool.generation,
                slots: pool.slots,
            };
            if self.reported_pools.get(&key) != Some(&usage) {
                self.reported_pools.insert(key.clone(), usage.clone());
                changed.push(usage);
            }
            live.insert(key);
        }
        let gone: Vec<PoolKey> = self
            .reported_pools
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        self.reported_pools.retain(|k, _| live.contains(k));
        if !changed.is_empty() {
            self.emit(ExecOutput::Status(ExecStatus::Pools(changed)));
        }
        if !gone.is_empty() {
            self.emit(ExecOutput::Status(ExecStatus::PoolsGone(gone)));
        }
    }
}
