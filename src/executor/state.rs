//! What the executor knows of running work, in memory: every running run with the spec it
//! was admitted with and the latest try of each task, the queued tries in admission order,
//! and the counts the metrics, the Pools and the in-process floor need — all kept current by
//! each change, so nothing is recounted by walking every run.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::plan::{PodSight, TaskRules, TryView};
use super::pod::DagClock;
use crate::api::DagSpec;
use crate::gate::{Hold, key as gate_key};
use crate::graph::{TaskGraph, TaskState};
use crate::key::PoolKey;
use crate::queue::RunClass;
use crate::store::{RunRow, TaskRow, TryKey};

/// A DAG spec version as the executor runs it.
#[derive(Debug)]
pub struct RunSpec {
    pub spec: Arc<DagSpec>,
    pub graph: TaskGraph,
    pub rules: Vec<TaskRules>,
    /// its zone and schedule, for the Pods' template variables
    pub clock: DagClock,
}

impl RunSpec {
    /// Fails when the graph is invalid (never for a spec the engine admitted). `default_tz`
    /// is the operator's `--timezone`.
    pub fn new(
        spec: Arc<DagSpec>,
        default_tz: chrono_tz::Tz,
    ) -> Result<Self, crate::graph::GraphError> {
        let graph = spec.graph()?;
        let rules = (0..graph.len())
            .map(|i| {
                spec.tasks
                    .iter()
                    .find(|t| t.name == graph.name(i))
                    .map(TaskRules::from)
                    .unwrap_or(TaskRules {
                        retries: 0,
                        retry_delay_seconds: 0,
                        retry_backoff: Default::default(),
                        max_retry_delay_seconds: 0,
                        timeout_seconds: None,
                    })
            })
            .collect();
        let clock = DagClock::of(&spec, default_tz);
        Ok(RunSpec {
            spec,
            graph,
            rules,
            clock,
        })
    }

    pub fn task(&self, index: usize) -> Option<&crate::api::TaskSpec> {
        let name = self.graph.name(index);
        self.spec.tasks.iter().find(|t| t.name == name)
    }
}

/// The latest try of one task of a running run.
#[derive(Clone, Debug)]
pub struct LiveTask {
    pub row: TaskRow,
    /// tries of the task in the run's current attempt, this one included
    pub used: i32,
    /// what its Pod says (while running)
    pub pod: PodSight,
}

impl LiveTask {
    pub fn view(&self) -> TryView {
        TryView {
            state: self.row.state,
            used: self.used,
            started_at: self.row.started_at,
            ended_at: self.row.ended_at,
            pod: self.pod.clone(),
        }
    }

    pub fn key(&self) -> TryKey {
        TryKey::of(&self.row)
    }
}

/// A running run.
#[derive(Debug)]
pub struct LiveRun {
    pub run: RunRow,
    pub spec: Arc<RunSpec>,
    /// by task index in the spec's graph
    pub tasks: Vec<LiveTask>,
}

impl LiveRun {
    /// Builds a run from its stored tries. A task of the spec without a try (a run pinned to
    /// a spec newer than its tries) counts as skipped; tries of tasks the spec lacks are left
    /// out.
    pub fn new(run: RunRow, spec: Arc<RunSpec>, rows: Vec<TaskRow>, now: DateTime<Utc>) -> Self {
        let mut latest: HashMap<String, TaskRow> = HashMap::new();
        // the first try of each task's latest attempt: retries count from it
        let mut first: HashMap<String, (i32, i32)> = HashMap::new();
        for row in rows {
            let f = first
                .entry(row.task_name.clone())
                .or_insert((row.attempt, row.try_number));
            if row.attempt > f.0 || (row.attempt == f.0 && row.try_number < f.1) {
                *f = (row.attempt, row.try_number);
            }
            match latest.get(&row.task_name) {
                Some(l) if l.try_number >= row.try_number => {}
                _ => {
                    latest.insert(row.task_name.clone(), row);
                }
            }
        }
        let tasks = (0..spec.graph.len())
            .map(|i| {
                let name = spec.graph.name(i);
                match latest.remove(name) {
                    Some(row) => {
                        let used = first
                            .get(name)
                            .map_or(1, |(_, f)| row.try_number - f + 1)
                            .max(1);
                        LiveTask {
                            row,
                            used,
                            pod: PodSight::Unseen { since: now },
                        }
                    }
                    None => LiveTask {
                        row: TaskRow {
                            run_id: run.id,
                            task_name: name.to_string(),
                            try_number: 1,
                            state: TaskState::Skipped,
                            pool: None,
                            pool_slots: 1,
                            pod_name: None,
                            exit_code: None,
                            message: Some("not in the run's tries".into()),
                            queued_at: None,
                            started_at: None,
                            ended_at: None,
                            attempt: run.attempt,
                        },
                        used: 1,
                        pod: PodSight::Gone { since: now },
                    },
                }
            })
            .collect();
        LiveRun { run, spec, tasks }
    }

    pub fn views(&self) -> Vec<TryView> {
        self.tasks.iter().map(LiveTask::view).collect()
    }

    pub fn class(&self) -> RunClass {
        RunClass::from(self.run.run_type)
    }
}

/// The gate holder of a try: unique across replicas and tries.
pub fn holder(key: &TryKey) -> String {
    key.to_string()
}

/// The semaphores a try holds while it runs: one slot of `--max-running-tasks`, and
/// `poolSlots` of its Pool.
pub fn holds(namespace: &str, row: &TaskRow) -> Vec<Hold> {
    let mut holds = vec![Hold::new(gate_key::RUNNING_TASKS, 1)];
    if let Some(pool) = &row.pool {
        holds.push(Hold::new(gate_key::pool(namespace, pool), weight(row)));
    }
    holds
}

/// A try's weight in its Pool.
pub fn weight(row: &TaskRow) -> u32 {
    u32::try_from(row.pool_slots).unwrap_or(1).max(1)
}

/// A queued try's place in line: run class, then `priorityWeight`, then age.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct InLine {
    class: Reverse<RunClass>,
    weight: Reverse<i32>,
    since: DateTime<Utc>,
    pub run: Uuid,
    pub task: usize,
}

/// Every running run, and what is derived from them.
#[derive(Debug, Default)]
pub struct Live {
    runs: HashMap<Uuid, LiveRun>,
    line: BTreeSet<InLine>,
    by_state: HashMap<TaskState, i64>,
    running_tasks: usize,
    pool_used: HashMap<PoolKey, i64>,
    pool_queued: HashMap<PoolKey, i64>,
    /// a Pool's counts changed since the last [`Live::take_pools_touched`]
    pools_touched: bool,
}

impl Live {
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn get(&self, id: &Uuid) -> Option<&LiveRun> {
        self.runs.get(id)
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.runs.keys().copied().collect()
    }

    pub fn runs(&self) -> impl Iterator<Item = &LiveRun> {
        self.runs.values()
    }

    /// Tries by state (the latest of each task of each running run).
    pub fn by_state(&self, state: TaskState) -> i64 {
        self.by_state.get(&state).copied().unwrap_or(0)
    }

    /// Tries running (each holds a slot of `--max-running-tasks`).
    pub fn running_tasks(&self) -> usize {
        self.running_tasks
    }

    /// Slots of a Pool held by running tries.
    pub fn pool_used(&self, pool: &PoolKey) -> i64 {
        self.pool_used.get(pool).copied().unwrap_or(0)
    }

    /// Tries waiting for a slot of a Pool.
    pub fn pool_queued(&self, pool: &PoolKey) -> i64 {
        self.pool_queued.get(pool).copied().unwrap_or(0)
    }

    /// Whether a Pool's counts changed since the last call.
    pub fn take_pools_touched(&mut self) -> bool {
        std::mem::take(&mut self.pools_touched)
    }

    /// Queued tries in admission order.
    pub fn line(&self) -> impl Iterator<Item = &InLine> {
        self.line.iter()
    }

    pub fn insert(&mut self, run: LiveRun) {
        let id = run.run.id;
        if let Some(old) = self.runs.remove(&id) {
            self.forget(&old);
        }
        for index in 0..run.tasks.len() {
            self.count(&run, index, 1);
        }
        self.runs.insert(id, run);
    }

    pub fn remove(&mut self, id: &Uuid) -> Option<LiveRun> {
        let run = self.runs.remove(id)?;
        self.forget(&run);
        Some(run)
    }

    fn forget(&mut self, run: &LiveRun) {
        for index in 0..run.tasks.len() {
            self.count(run, index, -1);
        }
    }

    /// Replaces the latest try of a task (a new state, or the next try).
    pub fn set_try(&mut self, id: &Uuid, index: usize, row: TaskRow, used: i32, pod: PodSight) {
        let Some(run) = self.runs.remove(id) else {
            return;
        };
        let mut run = run;
        if index < run.tasks.len() {
            self.count(&run, index, -1);
            run.tasks[index] = LiveTask { row, used, pod };
            self.count(&run, index, 1);
        }
        self.runs.insert(*id, run);
    }

    /// What a running try's Pod says (changes no count).
    pub fn set_pod(&mut self, id: &Uuid, index: usize, pod: PodSight) {
        if let Some(task) = self.runs.get_mut(id).and_then(|r| r.tasks.get_mut(index)) {
            task.pod = pod;
        }
    }

    /// Adds (`sign` 1) or removes (-1) what task `index` of `run` contributes to the counts.
    fn count(&mut self, run: &LiveRun, index: usize, sign: i64) {
        let Some(task) = run.tasks.get(index) else {
            return;
        };
        let row = &task.row;
        *self.by_state.entry(row.state).or_default() += sign;
        let pool = row
            .pool
            .as_ref()
            .map(|p| PoolKey::new(&run.run.dag.namespace, p));
        match row.state {
            TaskState::Running => {
                self.running_tasks = (self.running_tasks as i64 + sign).max(0) as usize;
                if let Some(pool) = pool {
                    *self.pool_used.entry(pool).or_default() += sign * i64::from(weight(row));
                    self.pools_touched = true;
                }
            }
            TaskState::Queued => {
                let place = InLine {
                    class: Reverse(run.class()),
                    weight: Reverse(run.spec.task(index).map_or(1, |t| t.priority_weight)),
                    since: row.queued_at.unwrap_or(run.run.created_at),
                    run: run.run.id,
                    task: index,
                };
                if sign > 0 {
                    self.line.insert(place);
                } else {
                    self.line.remove(&place);
                }
                if let Some(pool) = pool {
                    *self.pool_queued.entry(pool).or_default() += sign;
                    self.pools_touched = true;
                }
            }
            _ => {}
        }
    }
}
