//! The executor (SPEC §5): runs every ready task try as a Pod and moves task instances through
//! their states in PostgreSQL from what the Pods do. Level-triggered: each pass reads the
//! running runs and their tries from the store and the Pods from a watch cache, so after a
//! restart it re-attaches to running Pods by their deterministic names — none started twice,
//! none forgotten.

pub mod pod;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::api::dag::RetryBackoff;
use crate::api::{DAG, Pool};
use crate::gate::{self, Claim, Gate, GateError, Grant, MemoryGate, key as gate_key};
use crate::graph::{Decision, RunOutcome, TaskState};
use crate::store::{
    DagKey, RunFilter, RunRow, RunState, RunStore, StoreError, TaskRow, TaskUpdate,
};
use crate::telemetry::GateScope;

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub max_running_tasks: usize,
    pub pod_retention: Duration,
    /// how long a Pod may sit Pending with an image-pull or scheduling problem
    pub pending_grace: Duration,
    /// longest gap between passes
    pub interval: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_running_tasks: 128,
            pod_retention: Duration::from_secs(3600),
            pending_grace: Duration::from_secs(300),
            interval: Duration::from_secs(1),
        }
    }
}

/// What the executor reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecOutput {
    /// runs that ended (success, failed): their slots are free
    RunsEnded(Vec<Uuid>),
    /// the newest runs of a DAG changed: (newest first, at most 5; last successful logical date)
    RecentRuns(DagKey, Vec<RunRow>, Option<DateTime<Utc>>),
    /// the Pools a DAG's tasks name that do not exist (empty: all exist), when that changes
    MissingPools(DagKey, Vec<String>),
    /// the usage of Pools that changed
    Pools(Vec<PoolUsage>),
    /// Pools that were deleted: (namespace, name)
    PoolsGone(Vec<(String, String)>),
    /// reachability of the gate changed (false: no task is admitted, fail closed)
    GateHealth(bool),
    /// after each pass: the latest tries of running runs by state, the transitions made
    /// during the pass, and the gate's refusals and errors by scope
    Tasks {
        by_state: Vec<(TaskState, i64)>,
        transitions: Vec<TaskState>,
        gate_refused: Vec<GateScope>,
        gate_errors: Vec<GateScope>,
    },
}

/// What a Pool's status shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub slots: i32,
    /// slots held by running tries
    pub used: i32,
    /// tries waiting for a slot of the pool
    pub queued: i32,
}

/// The gate holder of a task try: unique across replicas and tries.
fn task_holder(row: &TaskRow) -> String {
    format!("{}/{}/{}", row.run_id, row.task_name, row.try_number)
}

/// The semaphores a try holds while it runs, with its weight in each: one slot of
/// `--max-running-tasks`, and `poolSlots` of its Pool.
fn task_keys(namespace: &str, row: &TaskRow) -> Vec<(String, u32)> {
    let mut keys = vec![(gate_key::RUNNING_TASKS.to_string(), 1)];
    if let Some(pool) = &row.pool {
        keys.push((
            gate_key::pool(namespace, pool),
            u32::try_from(row.pool_slots).unwrap_or(1).max(1),
        ));
    }
    keys
}

/// What a Pod says about its try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodVerdict {
    Running,
    Succeeded,
    Failed {
        exit_code: Option<i32>,
        message: String,
    },
    /// Pending with an image-pull or scheduling problem
    Stuck(String),
}

/// Reads a Pod's status.
pub fn verdict(pod: &Pod) -> PodVerdict {
    let Some(status) = pod.status.as_ref() else {
        return PodVerdict::Running;
    };
    let terminated = status.container_statuses.as_ref().and_then(|cs| {
        cs.iter()
            .find_map(|c| c.state.as_ref()?.terminated.as_ref())
    });
    match status.phase.as_deref() {
        Some("Succeeded") => PodVerdict::Succeeded,
        Some("Failed") => PodVerdict::Failed {
            exit_code: terminated.map(|t| t.exit_code),
            message: terminated
                .and_then(|t| t.reason.clone())
                .or_else(|| status.reason.clone())
                .or_else(|| status.message.clone())
                .unwrap_or_else(|| "pod failed".to_string()),
        },
        Some("Pending") => {
            let waiting = status.container_statuses.as_ref().and_then(|cs| {
                cs.iter()
                    .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            });
            if let Some(reason) = waiting.filter(|r| {
                matches!(
                    r.as_str(),
                    "ErrImagePull"
                        | "ImagePullBackOff"
                        | "InvalidImageName"
                        | "CreateContainerConfigError"
                        | "CreateContainerError"
                )
            }) {
                return PodVerdict::Stuck(reason);
            }
            let unschedulable = status.conditions.as_ref().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            });
            if unschedulable {
                PodVerdict::Stuck("Unschedulable".to_string())
            } else {
                PodVerdict::Running
            }
        }
        _ => PodVerdict::Running,
    }
}

/// The delay before try `failed_try + 1`.
pub fn retry_delay(backoff: RetryBackoff, base: i32, max: i32, failed_try: i32) -> Duration {
    let base = base.max(0) as u64;
    let secs = match backoff {
        RetryBackoff::Fixed => base,
        RetryBackoff::Exponential => {
            let exp = (failed_try.max(1) - 1).min(32) as u32;
            base.saturating_mul(1u64 << exp)
        }
    };
    Duration::from_secs(secs.min(max.max(0) as u64))
}

/// When a Pod finished, if it did.
fn finished_at(pod: &Pod) -> Option<DateTime<Utc>> {
    let status = pod.status.as_ref()?;
    if !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status
        .container_statuses
        .as_ref()
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                .filter_map(crate::controller::to_chrono)
                .max()
        })
        .or_else(|| {
            status
                .conditions
                .as_ref()?
                .iter()
                .filter_map(|c| c.last_transition_time.as_ref())
                .filter_map(crate::controller::to_chrono)
                .max()
        })
}

fn class_rank(run: &RunRow) -> u8 {
    match run.run_type {
        crate::store::RunType::Manual => 2,
        crate::store::RunType::Scheduled => 1,
        crate::store::RunType::Backfill => 0,
    }
}

pub struct Executor<S: RunStore, G: Gate = MemoryGate> {
    cfg: ExecutorConfig,
    store: S,
    gate: G,
    /// tries this process holds gate slots for: holder -> (key, weight)
    held: HashMap<String, Vec<(String, u32)>>,
    last_renewal: Option<Instant>,
    gate_ok: bool,
    /// what was last reported, to report changes only
    reported_pools: HashMap<(String, String), PoolUsage>,
    reported_missing: HashMap<DagKey, Vec<String>>,
    /// what this pass did, for the metrics
    transitions: Vec<TaskState>,
    gate_refused: Vec<GateScope>,
    gate_errors: Vec<GateScope>,
    client: kube::Client,
    namespace: Option<String>,
    out: mpsc::UnboundedSender<ExecOutput>,
    /// run ids seen running in the last pass, by DAG (to notice new and ended runs)
    seen: HashMap<DagKey, HashSet<Uuid>>,
}

impl<S: RunStore, G: Gate> Executor<S, G> {
    pub fn new(
        cfg: ExecutorConfig,
        store: S,
        gate: G,
        client: kube::Client,
        namespace: Option<String>,
        out: mpsc::UnboundedSender<ExecOutput>,
    ) -> Self {
        Executor {
            cfg,
            store,
            gate,
            held: HashMap::new(),
            last_renewal: None,
            gate_ok: true,
            reported_pools: HashMap::new(),
            reported_missing: HashMap::new(),
            transitions: Vec::new(),
            gate_refused: Vec::new(),
            gate_errors: Vec::new(),
            client,
            namespace,
            out,
            seen: HashMap::new(),
        }
    }

    fn api<K>(&self, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        match ns.or(self.namespace.as_deref()) {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Deletes the Pods of runs cancelled by concurrencyPolicy Replace.
    pub async fn delete_run_pods(&self, runs: &[(DagKey, Uuid)]) {
        for (dag, id) in runs {
            let pods: Api<Pod> = self.api(Some(&dag.namespace));
            let lp = ListParams::default().labels(&format!("{}={id}", pod::LABEL_RUN));
            if let Err(e) = pods.delete_collection(&DeleteParams::default(), &lp).await {
                tracing::warn!(run = %id, error = %e, "could not delete the pods of a cancelled run");
            }
        }
    }

    /// Runs passes until the process ends: at each Pod or Pool change and every `interval`.
    /// `dags` is the DAG controller's cache (one copy of every DAG in the process).
    pub async fn run(
        mut self,
        dags: Store<DAG>,
        mut cancelled: mpsc::UnboundedReceiver<Vec<(DagKey, Uuid)>>,
    ) {
        let wake = Arc::new(Notify::new());
        let pods_api: Api<Pod> = self.api(None);
        // a task Pod is judged by its status and found by its name and labels: its spec
        // (with the task's environment) is not kept
        let pods = mirror(
            pods_api,
            watcher::Config::default().labels(pod::LABEL_RUN),
            wake.clone(),
            |pod: &mut Pod| pod.spec = None,
        );
        let pools = mirror(
            self.api::<Pool>(None),
            watcher::Config::default(),
            wake.clone(),
            |_: &mut Pool| {},
        );
        let _ = pods.wait_until_ready().await;
        until_ready(&dags).await;
        let _ = pools.wait_until_ready().await;
        loop {
            if let Err(e) = self.pass(&pods, &dags, &pools, Utc::now()).await {
                tracing::warn!(error = %e, "executor pass failed; retrying");
            }
            tokio::select! {
                _ = wake.notified() => {}
                ids = cancelled.recv() => match ids {
                    Some(ids) => self.delete_run_pods(&ids).await,
                    None => return,
                },
                _ = tokio::time::sleep(self.cfg.interval) => {}
            }
        }
    }

    /// One pass over every running run.
    pub async fn pass(
        &mut self,
        pods: &Store<Pod>,
        dags: &Store<DAG>,
        pools: &Store<Pool>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let runs = self.store.running_runs().await?;
        let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
        let rows = self.store.task_instances(&ids).await?;
        // the latest try of each task of each run
        let mut latest: HashMap<Uuid, BTreeMap<String, TaskRow>> = HashMap::new();
        // the first try of each task's latest attempt: retries count from it
        let mut first_try: HashMap<(Uuid, String), (i32, i32)> = HashMap::new();
        for row in rows {
            let first = first_try
                .entry((row.run_id, row.task_name.clone()))
                .or_insert((row.attempt, row.try_number));
            if row.attempt > first.0 || (row.attempt == first.0 && row.try_number < first.1) {
                *first = (row.attempt, row.try_number);
            }
            let tasks = latest.entry(row.run_id).or_default();
            match tasks.get(&row.task_name) {
                Some(existing) if existing.try_number >= row.try_number => {}
                _ => {
                    tasks.insert(row.task_name.clone(), row);
                }
            }
        }
        // running tries: holder -> the slots they hold; and pool usage from the record
        let mut running: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        let mut pool_used: HashMap<(String, String), i32> = HashMap::new();
        let mut pool_queued: HashMap<(String, String), i32> = HashMap::new();
        let mut queued: Vec<(u8, i32, DateTime<Utc>, RunRow, TaskRow)> = Vec::new();
        let mut ended = Vec::new();
        let mut changed: HashSet<DagKey> = HashSet::new();
        let mut now_seen: HashMap<DagKey, HashSet<Uuid>> = HashMap::new();
        for run in &runs {
            now_seen.entry(run.dag.clone()).or_default().insert(run.id);
            let dag_ref = ObjectRef::<DAG>::new(&run.dag.name).within(&run.dag.namespace);
            let Some(dag) = dags.get(&dag_ref) else {
                continue; // deleted DAG: its history stays, nothing more runs
            };
            let Ok(graph) = dag.spec.graph() else {
                continue;
            };
            let Some(tasks) = latest.get_mut(&run.id) else {
                continue;
            };
            // 1. running tries: what do their Pods say?
            for spec in &dag.spec.tasks {
                let Some(row) = tasks.get(&spec.name).cloned() else {
                    continue;
                };
                // tries of this task in the run's current attempt, this one included
                let tries_used = first_try
                    .get(&(run.id, spec.name.clone()))
                    .map_or(row.try_number, |(_, first)| row.try_number - first + 1);
                match TaskState::parse(&row.state) {
                    Some(TaskState::Running) => {
                        if let Some(new) = self
                            .check_running(pods, run, spec, &row, tries_used, now)
                            .await?
                        {
                            self.transitions.extend(TaskState::parse(&new.state));
                            tasks.insert(spec.name.clone(), new);
                        }
                    }
                    Some(TaskState::UpForRetry) => {
                        let delay = retry_delay(
                            spec.retry_backoff,
                            spec.retry_delay_seconds,
                            spec.max_retry_delay_seconds,
                            tries_used,
                        );
                        let due = row.ended_at.is_none_or(|t| {
                            t + chrono::Duration::from_std(delay).unwrap_or_default() <= now
                        });
                        if due {
                            let next = row.try_number + 1;
                            self.store
                                .update_task(&TaskUpdate::new(&row, "up_for_retry", "failed"))
                                .await?;
                            self.store
                                .insert_task_try(
                                    run.id,
                                    &spec.name,
                                    next,
                                    row.pool.as_deref(),
                                    row.pool_slots,
                                )
                                .await?;
                            self.transitions.push(TaskState::Queued);
                            let mut new = row.clone();
                            new.try_number = next;
                            new.state = "queued".into();
                            new.queued_at = Some(now);
                            tasks.insert(spec.name.clone(), new);
                        }
                    }
                    _ => {}
                }
            }
            // 2. the graph: pending tasks become queued, upstream_failed or skipped
            let states: Vec<TaskState> = (0..graph.len())
                .map(|i| {
                    tasks
                        .get(graph.name(i))
                        .and_then(|r| TaskState::parse(&r.state))
                        .unwrap_or(TaskState::Skipped)
                })
                .collect();
            let mut states = states;
            for (i, decision) in graph.evaluate(&states) {
                let Some(row) = tasks.get(graph.name(i)).cloned() else {
                    continue;
                };
                let (to, state) = match decision {
                    Decision::Ready => ("queued", TaskState::Queued),
                    Decision::UpstreamFailed => ("upstream_failed", TaskState::UpstreamFailed),
                    Decision::Skipped => ("skipped", TaskState::Skipped),
                };
                let mut update = TaskUpdate::new(&row, "pending", to);
                update.set_queued_at = decision == Decision::Ready;
                update.set_ended_at = decision != Decision::Ready;
                if self.store.update_task(&update).await? {
                    self.transitions.push(state);
                    states[i] = state;
                    let mut new = row;
                    new.state = to.to_string();
                    new.queued_at = Some(now);
                    tasks.insert(graph.name(i).to_string(), new);
                }
            }
            // 3. the run's outcome
            match graph.outcome(&states) {
                RunOutcome::Running => {}
                outcome => {
                    let state = if outcome == RunOutcome::Success {
                        RunState::Success
                    } else {
                        RunState::Failed
                    };
                    if self.store.finish_run(run.id, state).await? {
                        ended.push(run.id);
                        changed.insert(run.dag.clone());
                    }
                    continue;
                }
            }
            for spec in &dag.spec.tasks {
                if let Some(row) = tasks.get(&spec.name) {
                    match row.state.as_str() {
                        "running" => {
                            running.insert(task_holder(row), task_keys(&run.dag.namespace, row));
                            if let Some(pool) = &row.pool {
                                *pool_used
                                    .entry((run.dag.namespace.clone(), pool.clone()))
                                    .or_default() += row.pool_slots;
                            }
                        }
                        "queued" => queued.push((
                            class_rank(run),
                            spec.priority_weight,
                            row.queued_at.unwrap_or(now),
                            run.clone(),
                            row.clone(),
                        )),
                        _ => {}
                    }
                }
            }
        }
        // 4. slots: give back those of ended tries, hold those of running ones, renew
        let mut gate_error = self.maintain_slots(&running).await.err();
        // 5. admission of queued tries: run class, then priorityWeight, then age; each takes
        // a slot of --max-running-tasks and poolSlots of its Pool, or waits
        queued.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut tasks_full = false;
        for (_, _, _, run, row) in queued {
            let ns = &run.dag.namespace;
            let pool_limit = match &row.pool {
                None => None,
                Some(name) => {
                    *pool_queued.entry((ns.clone(), name.clone())).or_default() += 1;
                    match pools.get(&ObjectRef::<Pool>::new(name).within(ns)) {
                        // waits for the Pool to appear; the DAG reports PoolNotFound
                        None => continue,
                        Some(pool) => Some(u32::try_from(pool.spec.slots).unwrap_or(0)),
                    }
                }
            };
            if gate_error.is_some() || tasks_full {
                continue;
            }
            let dag_ref = ObjectRef::<DAG>::new(&run.dag.name).within(ns);
            let Some(dag) = dags.get(&dag_ref) else {
                continue;
            };
            let Some(spec) = dag.spec.tasks.iter().find(|t| t.name == row.task_name) else {
                continue;
            };
            let holder = task_holder(&row);
            let keys = task_keys(ns, &row);
            match self.take_slots(&holder, &keys, pool_limit).await {
                Ok(Taken::Yes) => {}
                Ok(Taken::NoTaskSlot) => {
                    tasks_full = true;
                    continue;
                }
                Ok(Taken::NoPoolSlot) => continue,
                Err(e) => {
                    gate_error = Some(e);
                    continue;
                }
            }
            let pod = pod::build_pod(&run, spec, row.try_number);
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = self.api(Some(ns));
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                // created before a crash: the same try, re-attached
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "could not create pod; will retry");
                    self.give_back(&holder).await;
                    continue;
                }
            }
            let mut update = TaskUpdate::new(&row, "queued", "running");
            update.pod_name = Some(name);
            update.set_started_at = true;
            if self.store.update_task(&update).await? {
                self.transitions.push(TaskState::Running);
            }
            if let Some(pool) = &row.pool {
                let key = (ns.clone(), pool.clone());
                *pool_used.entry(key.clone()).or_default() += row.pool_slots;
                *pool_queued.entry(key).or_default() -= 1;
            }
        }
        match gate_error {
            Some(e) => {
                if self.gate_ok {
                    tracing::warn!(error = %e, "gate unavailable: no task is admitted until it returns");
                }
                self.set_gate_ok(false);
            }
            None => self.set_gate_ok(true),
        }
        self.report_pools(pools, &pool_used, &pool_queued);
        self.report_missing_pools(dags, pools);
        let mut by_state: HashMap<TaskState, i64> =
            TaskState::ALL.iter().map(|s| (*s, 0)).collect();
        for tasks in latest.values() {
            for row in tasks.values() {
                if let Some(state) = TaskState::parse(&row.state) {
                    *by_state.entry(state).or_default() += 1;
                }
            }
        }
        let _ = self.out.send(ExecOutput::Tasks {
            by_state: TaskState::ALL
                .iter()
                .map(|s| (*s, by_state.get(s).copied().unwrap_or(0)))
                .collect(),
            transitions: std::mem::take(&mut self.transitions),
            gate_refused: std::mem::take(&mut self.gate_refused),
            gate_errors: std::mem::take(&mut self.gate_errors),
        });
        // 6. finished Pods past their retention
        let retention = chrono::Duration::from_std(self.cfg.pod_retention).unwrap_or_default();
        for p in pods.state() {
            if finished_at(&p).is_some_and(|t| t + retention <= now) {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = self.api(Some(&ns));
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        }
        // 7. report
        for (dag, ids) in &now_seen {
            if self.seen.get(dag) != Some(ids) {
                changed.insert(dag.clone());
            }
        }
        for dag in self.seen.keys() {
            if !now_seen.contains_key(dag) {
                changed.insert(dag.clone());
            }
        }
        self.seen = now_seen;
        if !ended.is_empty() {
            let _ = self.out.send(ExecOutput::RunsEnded(ended));
        }
        for dag in changed {
            let filter = RunFilter {
                namespace: Some(dag.namespace.clone()),
                dag_name: Some(dag.name.clone()),
                state: None,
                limit: 5,
            };
            let recent = self.store.list_runs(&filter).await?;
            let last_success = self
                .store
                .list_runs(&RunFilter {
                    state: Some(RunState::Success),
                    limit: 1,
                    ..filter
                })
                .await?
                .first()
                .map(|r| r.logical_date);
            let _ = self
                .out
                .send(ExecOutput::RecentRuns(dag, recent, last_success));
        }
        Ok(())
    }

    /// Gives back the slots of tries that no longer run, takes (without a limit: they run
    /// already) the slots of running tries this process does not hold — after a restart, or
    /// when another replica admitted them — and renews every lease each renew interval.
    async fn maintain_slots(
        &mut self,
        running: &HashMap<String, Vec<(String, u32)>>,
    ) -> Result<(), GateError> {
        let ended: Vec<String> = self
            .held
            .keys()
            .filter(|h| !running.contains_key(*h))
            .cloned()
            .collect();
        for holder in ended {
            if let Some(keys) = self.held.get(&holder) {
                for (key, _) in keys {
                    self.gate.release(key, &holder).await?;
                }
            }
            self.held.remove(&holder);
        }
        let adopted: Vec<(String, String, u32)> = running
            .iter()
            .filter(|(holder, _)| !self.held.contains_key(*holder))
            .flat_map(|(h, keys)| keys.iter().map(move |(k, w)| (k.clone(), h.clone(), *w)))
            .collect();
        gate::reinstate(&self.gate, &adopted).await?;
        for (holder, keys) in running {
            self.held
                .entry(holder.clone())
                .or_insert_with(|| keys.clone());
        }
        if self
            .last_renewal
            .is_some_and(|t| t.elapsed() < self.gate.renew_interval())
        {
            return Ok(());
        }
        let leases: Vec<(String, String, u32)> = self
            .held
            .iter()
            .flat_map(|(h, keys)| keys.iter().map(|(k, w)| (k.clone(), h.clone(), *w)))
            .collect();
        let pairs: Vec<(String, String)> = leases
            .iter()
            .map(|(k, h, _)| (k.clone(), h.clone()))
            .collect();
        let renewed = self.gate.renew_all(&pairs).await?;
        // a lease that lapsed (a long outage): the try still runs, so it holds again
        let lost: Vec<(String, String, u32)> = leases
            .into_iter()
            .zip(renewed)
            .filter(|(_, ok)| !ok)
            .map(|(lease, _)| lease)
            .collect();
        gate::reinstate(&self.gate, &lost).await?;
        self.last_renewal = Some(Instant::now());
        Ok(())
    }

    /// Takes every slot a try needs, or none (one atomic claim).
    async fn take_slots(
        &mut self,
        holder: &str,
        keys: &[(String, u32)],
        pool_limit: Option<u32>,
    ) -> Result<Taken, GateError> {
        let tasks_limit = u32::try_from(self.cfg.max_running_tasks).unwrap_or(u32::MAX);
        let limit_of = |key: &str| {
            if key == gate_key::RUNNING_TASKS {
                (tasks_limit, Taken::NoTaskSlot, GateScope::RunningTasks)
            } else {
                (pool_limit.unwrap_or(0), Taken::NoPoolSlot, GateScope::Pool)
            }
        };
        let claim = Claim {
            holder: holder.to_string(),
            slots: keys
                .iter()
                .map(|(k, w)| (k.clone(), *w, limit_of(k).0))
                .collect(),
        };
        let grant = match self.gate.acquire_all(std::slice::from_ref(&claim)).await {
            Ok(grants) => grants.first().copied(),
            Err(e) => {
                self.gate_errors.push(GateScope::RunningTasks);
                return Err(e);
            }
        };
        match grant {
            Some(Grant::Granted) => {
                self.held.insert(holder.to_string(), keys.to_vec());
                Ok(Taken::Yes)
            }
            Some(Grant::Refused(i)) => {
                let (_, taken, scope) = limit_of(keys.get(i).map_or("", |(k, _)| k.as_str()));
                self.gate_refused.push(scope);
                Ok(taken)
            }
            None => Err(GateError::Backend("no answer to a claim".into())),
        }
    }

    async fn release_keys(&self, holder: &str, keys: &[(String, u32)]) {
        for (key, _) in keys {
            // a failed release is a lease that lapses within one TTL
            let _ = self.gate.release(key, holder).await;
        }
    }

    async fn give_back(&mut self, holder: &str) {
        if let Some(keys) = self.held.remove(holder) {
            self.release_keys(holder, &keys).await;
        }
    }

    fn set_gate_ok(&mut self, ok: bool) {
        if self.gate_ok != ok {
            self.gate_ok = ok;
            if ok {
                tracing::info!("gate reachable again: admission of tasks resumes");
            }
            let _ = self.out.send(ExecOutput::GateHealth(ok));
        }
    }

    /// Reports the usage of every Pool whose usage, slots or generation changed.
    fn report_pools(
        &mut self,
        pools: &Store<Pool>,
        used: &HashMap<(String, String), i32>,
        queued: &HashMap<(String, String), i32>,
    ) {
        let mut changed = Vec::new();
        let mut live = HashSet::new();
        for pool in pools.state() {
            let ns = pool.metadata.namespace.clone().unwrap_or_default();
            let name = pool.metadata.name.clone().unwrap_or_default();
            let key = (ns.clone(), name.clone());
            let usage = PoolUsage {
                namespace: ns,
                name,
                generation: pool.metadata.generation,
                slots: pool.spec.slots,
                used: used.get(&key).copied().unwrap_or(0),
                queued: queued.get(&key).copied().unwrap_or(0).max(0),
            };
            if self.reported_pools.get(&key) != Some(&usage) {
                self.reported_pools.insert(key.clone(), usage.clone());
                changed.push(usage);
            }
            live.insert(key);
        }
        let gone: Vec<(String, String)> = self
            .reported_pools
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        self.reported_pools.retain(|k, _| live.contains(k));
        if !changed.is_empty() {
            let _ = self.out.send(ExecOutput::Pools(changed));
        }
        if !gone.is_empty() {
            let _ = self.out.send(ExecOutput::PoolsGone(gone));
        }
    }

    /// Reports, per DAG, the Pools its tasks name that do not exist, when that changes.
    fn report_missing_pools(&mut self, dags: &Store<DAG>, pools: &Store<Pool>) {
        let mut live = HashSet::new();
        for dag in dags.state() {
            let ns = dag.metadata.namespace.clone().unwrap_or_default();
            let key = DagKey::new(&ns, dag.metadata.name.as_deref().unwrap_or_default());
            let missing: Vec<String> = dag
                .spec
                .tasks
                .iter()
                .filter_map(|t| t.pool.as_ref())
                .filter(|p| pools.get(&ObjectRef::<Pool>::new(p).within(&ns)).is_none())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let before = self.reported_missing.get(&key);
            if before.map_or(!missing.is_empty(), |b| *b != missing) {
                self.reported_missing.insert(key.clone(), missing.clone());
                let _ = self
                    .out
                    .send(ExecOutput::MissingPools(key.clone(), missing));
            }
            live.insert(key);
        }
        self.reported_missing.retain(|k, _| live.contains(k));
    }

    /// Decides a running try from its Pod; returns the row's new state if it changed.
    async fn check_running(
        &self,
        pods: &Store<Pod>,
        run: &RunRow,
        spec: &crate::api::TaskSpec,
        row: &TaskRow,
        tries_used: i32,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskRow>, StoreError> {
        let name = row
            .pod_name
            .clone()
            .unwrap_or_else(|| pod::pod_name(&run.dag.name, &run.id, &spec.name, row.try_number));
        let pod = pods.get(&ObjectRef::<Pod>::new(&name).within(&run.dag.namespace));
        let started = row.started_at.unwrap_or(now);
        let age = now - started;
        let seen = pod.as_deref().map(verdict);
        // a timed-out or stuck Pod is stopped; a finished one stays for its retention
        let stop_pod = matches!(seen, Some(PodVerdict::Running | PodVerdict::Stuck(_)));
        let outcome: Option<Result<(), (Option<i32>, String)>> = match seen {
            Some(PodVerdict::Succeeded) => Some(Ok(())),
            Some(PodVerdict::Failed { exit_code, message }) => Some(Err((exit_code, message))),
            Some(PodVerdict::Stuck(reason))
                if age
                    >= chrono::Duration::from_std(self.cfg.pending_grace).unwrap_or_default() =>
            {
                Some(Err((None, format!("pod stuck pending: {reason}"))))
            }
            Some(_) => match spec.timeout_seconds {
                Some(limit) if age.num_seconds() >= limit => {
                    Some(Err((None, format!("timed out after {limit}s"))))
                }
                _ => None,
            },
            // not in the watch cache: give a fresh Pod a moment to show up, then it is gone
            None if age.num_seconds() >= 10 => {
                Some(Err((None, "pod deleted before it finished".to_string())))
            }
            None => None,
        };
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        let (to, exit_code, message) = match outcome {
            Ok(()) => ("success", Some(0), None),
            Err((code, message)) => {
                let to = if tries_used <= spec.retries {
                    "up_for_retry"
                } else {
                    "failed"
                };
                (to, code, Some(message))
            }
        };
        if to != "success" && stop_pod {
            let api: Api<Pod> = self.api(Some(&run.dag.namespace));
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
        let mut update = TaskUpdate::new(row, "running", to);
        update.exit_code = exit_code;
        update.message = message.clone();
        update.set_ended_at = true;
        if !self.store.update_task(&update).await? {
            return Ok(None);
        }
        let mut new = row.clone();
        new.state = to.to_string();
        new.exit_code = exit_code;
        new.message = message;
        new.ended_at = Some(now);
        Ok(Some(new))
    }
}

/// A watch cache of `api`'s objects kept by a background task, which wakes `wake` at every
/// change (and every watch error, after which it retries with backoff). Each object is passed
/// through `trim` before it is cached, and loses its `managedFields` and kubectl's
/// last-applied annotation: the executor never reads them, and they are often most of an
/// object's size.
fn mirror<K>(
    api: Api<K>,
    cfg: watcher::Config,
    wake: Arc<Notify>,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let mut trim = trim;
    tokio::spawn(async move {
        let stream = watcher(api, cfg)
            .default_backoff()
            .modify(move |obj: &mut K| {
                crate::controller::trim_metadata(obj);
                trim(obj);
            })
            .reflect(writer)
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "watch error (retrying)");
            }
            wake.notify_one();
        }
    });
    store
}

/// Waits until `store` has had its first full list. The DAG cache is shared with the DAG
/// controller, which waits on it too, and kube-runtime wakes only one of several tasks waiting
/// on the same store: so this looks again every 200 ms rather than waiting to be woken.
async fn until_ready<K>(store: &Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// The answer of the gate to a try asking for its slots.
enum Taken {
    Yes,
    /// `--max-running-tasks` is reached: no other try can start either
    NoTaskSlot,
    /// its Pool is full: tries of other Pools may still start
    NoPoolSlot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays() {
        assert_eq!(
            retry_delay(RetryBackoff::Fixed, 30, 3600, 3),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(RetryBackoff::Exponential, 30, 3600, 1),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(RetryBackoff::Exponential, 30, 3600, 3),
            Duration::from_secs(120)
        );
        assert_eq!(
            retry_delay(RetryBackoff::Exponential, 30, 100, 5),
            Duration::from_secs(100)
        );
        assert_eq!(retry_delay(RetryBackoff::Fixed, 0, 3600, 1), Duration::ZERO);
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            verdict(&pod(serde_json::json!({"status": {"phase": "Succeeded"}}))),
            PodVerdict::Succeeded
        );
        let failed = pod(
            serde_json::json!({"status": {"phase": "Failed", "containerStatuses": [
            {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}}),
        );
        assert_eq!(
            verdict(&failed),
            PodVerdict::Failed {
                exit_code: Some(3),
                message: "Error".into()
            }
        );
        let pulling = pod(
            serde_json::json!({"status": {"phase": "Pending", "containerStatuses": [
            {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}),
        );
        assert_eq!(
            verdict(&pulling),
            PodVerdict::Stuck("ImagePullBackOff".into())
        );
        let evicted = pod(serde_json::json!({"status": {"phase": "Failed", "reason": "Evicted"}}));
        assert_eq!(
            verdict(&evicted),
            PodVerdict::Failed {
                exit_code: None,
                message: "Evicted".into()
            }
        );
        assert_eq!(
            verdict(&pod(serde_json::json!({"status": {"phase": "Running"}}))),
            PodVerdict::Running
        );
    }
}
