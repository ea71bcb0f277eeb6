//! Executor tests: the real executor against a real PostgreSQL (a fresh database per test),
//! the in-process gate and a fake cluster (`FakeLauncher`) that the test drives; time is
//! passed in by each test. The e2e tests run the same executor against the API server.

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dag_operator::api::DagSpec;
use dag_operator::executor::action::{decide, latest_of_run};
use dag_operator::executor::{
    AdmittedRun, Admitting, CancelledRun, ExecInput, ExecOutput, ExecStatus, Executor,
    ExecutorConfig, FakeLauncher, FixedPools, LaunchError, PodKey, PodVerdict, pod,
};
use dag_operator::gate::{Gate, MemoryGate, key as gate_key};
use dag_operator::key::Subject;
use dag_operator::report::Notice;
use dag_operator::store::{
    ActionKind, ActionOutcome, Changes, DagKey, NewAction, NewRun, NewTask, PgStore, RunChange,
    RunRow, RunState, RunStore, RunType, SpecRow, StoreError, TaskRow, TaskState, TaskTarget,
};
use tokio::sync::mpsc;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC3339")
}

fn t0() -> DateTime<Utc> {
    utc("2025-03-01T00:00:00Z")
}

fn spec(tasks: &str) -> Arc<DagSpec> {
    Arc::new(serde_yaml::from_str(&format!("tasks:\n{tasks}")).expect("valid spec"))
}

/// The executor, its inputs (what the fake cluster says) and outputs.
struct Harness<S: RunStore = PgStore> {
    exec: Executor<S, MemoryGate, FakeLauncher>,
    inputs: mpsc::UnboundedReceiver<ExecInput>,
    out: mpsc::UnboundedReceiver<ExecOutput>,
    cluster: FakeLauncher,
    gate: MemoryGate,
    pools: FixedPools,
    store: S,
    /// what the executor tells the writers that give way to its creates
    admitting: Admitting,
}

impl<S: RunStore + Clone> Harness<S> {
    fn with(store: S, cfg: ExecutorConfig, gate: MemoryGate) -> Self {
        let (tx, _) = mpsc::unbounded_channel();
        let cluster = FakeLauncher::new(tx);
        Self::on(store, cfg, gate, cluster, FixedPools::default())
    }

    /// An executor on `cluster`, whose watch starts with a list of its Pods.
    fn on(
        store: S,
        cfg: ExecutorConfig,
        gate: MemoryGate,
        cluster: FakeLauncher,
        pools: FixedPools,
    ) -> Self {
        let (tx, inputs) = mpsc::unbounded_channel();
        let (out_tx, out) = mpsc::unbounded_channel();
        let exec = Executor::new(
            cfg,
            store.clone(),
            gate.clone(),
            cluster.clone(),
            Arc::new(pools.clone()),
            out_tx,
        );
        let admitting = Admitting::default();
        let exec = exec.with_admitting(admitting.clone());
        cluster.watch(tx);
        Harness {
            exec,
            inputs,
            out,
            cluster,
            gate,
            pools,
            store,
            admitting,
        }
    }

    /// Takes everything the fake cluster said, steps, and again until nothing new arrives.
    async fn settle(&mut self, now: DateTime<Utc>) -> Result<(), String> {
        for _ in 0..20 {
            let any = self.take_inputs(now);
            let more = self.exec.step(now).await.map_err(|e| e.to_string())?;
            if !more && !any && self.inputs.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Takes in what the fake cluster said, without stepping; whether anything arrived.
    fn take_inputs(&mut self, now: DateTime<Utc>) -> bool {
        let mut any = false;
        while let Ok(input) = self.inputs.try_recv() {
            self.exec.apply(input, now);
            any = true;
        }
        any
    }

    async fn step(&mut self, now: DateTime<Utc>) {
        self.settle(now).await.expect("step");
    }

    /// The process restarts: a new executor on the same database and cluster, with `gate`.
    fn restart(self, cfg: ExecutorConfig, gate: MemoryGate) -> Self {
        Self::on(self.store, cfg, gate, self.cluster, self.pools)
    }

    fn outputs(&mut self) -> Vec<ExecOutput> {
        std::iter::from_fn(|| self.out.try_recv().ok()).collect()
    }

    /// What happens to the Pod of `task` try `n` of `run`; false if it does not exist.
    fn pod_does(&self, run: &RunRow, task: &str, n: i32, verdict: PodVerdict) -> bool {
        self.cluster.set(&pod_key(run, task, n), verdict)
    }

    async fn tries(&self, run: &RunRow) -> Vec<TaskRow> {
        self.store.task_instances(&[run.id]).await.expect("tries")
    }

    async fn run_state(&self, run: &RunRow) -> RunState {
        self.store
            .list_runs(&dag_operator::store::RunFilter {
                namespace: Some(run.dag.namespace.clone()),
                dag_name: Some(run.dag.name.clone()),
                state: None,
                limit: 0,
            })
            .await
            .expect("runs")
            .into_iter()
            .find(|r| r.id == run.id)
            .map(|r| r.state)
            .expect("the run")
    }
}

impl Harness<PgStore> {
    fn new(store: PgStore, cfg: ExecutorConfig) -> Self {
        Harness::with(
            store,
            cfg,
            MemoryGate::new(std::time::Duration::from_secs(30)),
        )
    }
}

fn pod_key(run: &RunRow, task: &str, n: i32) -> PodKey {
    PodKey::new(
        run.dag.namespace.clone(),
        pod::pod_name(&run.dag.name, &run.id, task, n),
    )
}

/// Stores a run of `dag` at `date` with its spec version, as the engine does, and hands it
/// to the executor.
async fn admit<S: RunStore + Clone>(
    h: &mut Harness<S>,
    dag: &str,
    date: DateTime<Utc>,
    spec: Arc<DagSpec>,
) -> RunRow {
    let (hash, json) = spec.content_hash().expect("hash");
    h.store
        .save_specs(&[SpecRow {
            hash: hash.clone(),
            spec: json,
        }])
        .await
        .expect("save spec");
    let run = NewRun {
        dag: DagKey::new("ns", dag),
        dag_uid: format!("uid-{dag}"),
        run_type: RunType::Manual,
        backfill_name: None,
        backfill_uid: None,
        trigger: None,
        logical_date: date,
        data_interval_start: date,
        data_interval_end: date,
        priority: 0,
        params: serde_json::json!({}),
        spec_hash: Some(hash),
        tasks: spec
            .tasks
            .iter()
            .map(|t| NewTask {
                task_name: t.name.clone(),
                pool: t.pool.clone(),
                pool_slots: t.pool_slots,
            })
            .collect(),
    };
    let row = h.store.insert_runs(&[run]).await.expect("insert").remove(0);
    h.exec.apply(
        ExecInput::Admitted(vec![AdmittedRun {
            run: row.clone(),
            spec,
        }]),
        date,
    );
    row
}

/// A one-task run whose Pod's create the API server answers after `latency_ms`.
async fn one_slow_task(h: &mut Harness, latency_ms: u64) -> RunRow {
    h.cluster
        .answer_after(std::time::Duration::from_millis(latency_ms));
    admit(h, "slow", t0(), spec("- {name: a, container: {image: x}}")).await
}

fn state_of(tries: &[TaskRow], task: &str, n: i32) -> TaskState {
    tries
        .iter()
        .find(|t| t.task_name == task && t.try_number == n)
        .map(|t| t.state)
        .unwrap_or_else(|| panic!("no try {n} of {task}: {tries:?}"))
}

#[tokio::test]
async fn a_chain_runs_in_order_and_the_run_succeeds() {
    let store = common::fresh_store("exec_chain").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let run = admit(
        &mut h,
        "chain",
        t0(),
        spec("- {name: a, container: {image: x}}\n- {name: b, dependsOn: [a], container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(h.cluster.created(), 1, "only a starts");
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Running);
    assert_eq!(state_of(&tries, "b", 1), TaskState::Pending);
    assert!(h.pod_does(&run, "a", 1, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(1)).await;
    assert!(h.pod_does(&run, "b", 1, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(2)).await;
    assert_eq!(h.run_state(&run).await, RunState::Success);
    let outputs = h.outputs();
    assert!(
        outputs.contains(&ExecOutput::RunsEnded(vec![run.id])),
        "{outputs:?}"
    );
    assert_eq!(h.exec.running_runs(), 0);
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
}

/// A try's `started_at` is when its Pod's create was answered, not when the step that
/// launched it began (a batch of creates can take a second).
#[tokio::test]
async fn a_try_starts_when_the_api_server_answers_its_create() {
    let store = common::fresh_store("exec_started_at").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let run = one_slow_task(&mut h, 300).await;
    h.step(t0()).await;
    let tries = h.tries(&run).await;
    let started = tries
        .iter()
        .find(|t| t.task_name == "a")
        .and_then(|t| t.started_at)
        .expect("try a started");
    assert!(
        started >= t0() + Duration::milliseconds(300),
        "started_at {started} is before the create was answered (step at {})",
        t0()
    );
}

#[tokio::test]
async fn trigger_rules_run_handlers_and_the_run_still_fails() {
    let store = common::fresh_store("exec_rules").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let run = admit(
        &mut h,
        "rules",
        t0(),
        spec(
            "- {name: a, container: {image: x}}\n\
             - {name: b, dependsOn: [a], container: {image: x}}\n\
             - {name: notify, dependsOn: [a, b], triggerRule: OneFailed, container: {image: x}}\n\
             - {name: cleanup, dependsOn: [b], triggerRule: AllDone, container: {image: x}}\n\
             - {name: watch, dependsOn: [b], triggerRule: Always, container: {image: x}}",
        ),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(h.cluster.created(), 2, "a and the Always task start");
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "watch", 1), TaskState::Running);
    assert_eq!(state_of(&tries, "notify", 1), TaskState::Pending);
    let failed = PodVerdict::Failed {
        exit_code: Some(1),
        message: "Error".into(),
    };
    assert!(h.pod_does(&run, "a", 1, failed));
    assert!(h.pod_does(&run, "watch", 1, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(1)).await;
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "b", 1), TaskState::UpstreamFailed);
    assert_eq!(state_of(&tries, "notify", 1), TaskState::Running);
    assert_eq!(state_of(&tries, "cleanup", 1), TaskState::Running);
    assert_eq!(h.run_state(&run).await, RunState::Running);
    assert!(h.pod_does(&run, "notify", 1, PodVerdict::Succeeded));
    assert!(h.pod_does(&run, "cleanup", 1, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(2)).await;
    assert_eq!(h.run_state(&run).await, RunState::Failed);
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
}

#[tokio::test]
async fn a_failed_try_is_retried_after_its_delay_and_the_retry_is_one_write() {
    let store = common::fresh_store("exec_retry").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let run = admit(
        &mut h,
        "flaky",
        t0(),
        spec("- {name: a, retries: 1, retryDelaySeconds: 30, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    h.pod_does(
        &run,
        "a",
        1,
        PodVerdict::Failed {
            exit_code: Some(2),
            message: "Error".into(),
        },
    );
    h.step(t0() + Duration::seconds(1)).await;
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::UpForRetry);
    assert_eq!(tries.len(), 1, "no retry before the delay");
    // the executor asks to be woken when the retry is due
    assert_eq!(h.exec.next_wake(), Some(t0() + Duration::seconds(31)));
    h.step(t0() + Duration::seconds(31)).await;
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Failed);
    assert_eq!(state_of(&tries, "a", 2), TaskState::Running);
    assert!(h.pod_does(&run, "a", 2, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(32)).await;
    assert_eq!(h.run_state(&run).await, RunState::Success);
}

#[tokio::test]
async fn a_failed_try_with_retries_left_tells_task_retrying_with_the_next_try() {
    let store = common::fresh_store("exec_retry_event").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let run = admit(
        &mut h,
        "wobbly",
        t0(),
        spec("- {name: load, retries: 2, retryDelaySeconds: 30, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    h.outputs();
    assert!(h.pod_does(
        &run,
        "load",
        1,
        PodVerdict::Failed {
            exit_code: Some(3),
            message: "Error".into(),
        },
    ));
    h.step(t0() + Duration::seconds(1)).await;
    let outputs = h.outputs();
    let retrying: Vec<&Notice> = outputs
        .iter()
        .filter_map(|o| match o {
            ExecOutput::Event(n) if n.reason == "TaskRetrying" => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(retrying.len(), 1, "{outputs:?}");
    let notice = retrying[0];
    assert!(notice.warning);
    assert!(
        matches!(&notice.subject, Subject::Dag(dag) if dag.name == "wobbly"),
        "{notice:?}"
    );
    for part in [
        "task \"load\"",
        "try 1 failed",
        "exit code 3",
        "try 2 in 30s",
    ] {
        assert!(
            notice.message.contains(part),
            "{part:?} in {:?}",
            notice.message
        );
    }
}

/// A store whose writes of decisions fail while told to (a database that goes away between
/// two statements, or in the middle of a step).
#[derive(Clone)]
struct Flaky {
    inner: PgStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl RunStore for Flaky {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn admit(
        &self,
        a: &dag_operator::store::Admission,
    ) -> Result<dag_operator::store::Admitted, StoreError> {
        self.inner.admit(a).await
    }
    async fn dag_records(
        &self,
        dags: &[DagKey],
    ) -> Result<Vec<dag_operator::store::DagRecord>, StoreError> {
        self.inner.dag_records(dags).await
    }
    async fn recorded_triggers(
        &self,
        values: &[(DagKey, String)],
    ) -> Result<Vec<(DagKey, String)>, StoreError> {
        self.inner.recorded_triggers(values).await
    }
    async fn backfill_record(
        &self,
        b: &dag_operator::store::BackfillRef,
    ) -> Result<Option<dag_operator::store::BackfillRecord>, StoreError> {
        self.inner.backfill_record(b).await
    }
    async fn save_backfill(
        &self,
        b: &dag_operator::store::BackfillRef,
        r: &dag_operator::store::BackfillRecord,
    ) -> Result<(), StoreError> {
        self.inner.save_backfill(b, r).await
    }
    async fn backfill_done(
        &self,
        b: &dag_operator::store::BackfillRef,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        self.inner.backfill_done(b, from, to).await
    }
    async fn run(&self, id: uuid::Uuid) -> Result<Option<RunRow>, StoreError> {
        self.inner.run(id).await
    }
    async fn pending_actions(
        &self,
        ns: Option<&str>,
        limit: i64,
    ) -> Result<Vec<dag_operator::store::RunAction>, StoreError> {
        self.inner.pending_actions(ns, limit).await
    }
    async fn write_action(
        &self,
        w: &dag_operator::store::ActionWrite,
    ) -> Result<dag_operator::store::ActionWritten, StoreError> {
        self.inner.write_action(w).await
    }
    async fn running_runs(&self, ns: Option<&str>) -> Result<Vec<RunRow>, StoreError> {
        self.inner.running_runs(ns).await
    }
    async fn last_ends(
        &self,
        ns: Option<&str>,
    ) -> Result<Vec<dag_operator::store::LastEnds>, StoreError> {
        self.inner.last_ends(ns).await
    }
    async fn save_specs(&self, specs: &[SpecRow]) -> Result<(), StoreError> {
        self.inner.save_specs(specs).await
    }
    async fn specs(&self, hashes: &[String]) -> Result<Vec<SpecRow>, StoreError> {
        self.inner.specs(hashes).await
    }
    async fn pin_spec(&self, ids: &[uuid::Uuid], hash: &str) -> Result<(), StoreError> {
        self.inner.pin_spec(ids, hash).await
    }
    async fn cancel_runs(&self, ids: &[uuid::Uuid]) -> Result<u64, StoreError> {
        self.inner.cancel_runs(ids).await
    }
    async fn list_runs(
        &self,
        f: &dag_operator::store::RunFilter,
    ) -> Result<Vec<RunRow>, StoreError> {
        self.inner.list_runs(f).await
    }
    async fn task_instances(&self, ids: &[uuid::Uuid]) -> Result<Vec<TaskRow>, StoreError> {
        self.inner.task_instances(ids).await
    }
    async fn write_changes(
        &self,
        changes: &Changes,
    ) -> Result<dag_operator::store::Applied, StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        self.inner.write_changes(changes).await
    }
    async fn recent_runs(
        &self,
        dags: &[DagKey],
        limit: i64,
    ) -> Result<Vec<dag_operator::store::RecentRuns>, StoreError> {
        self.inner.recent_runs(dags, limit).await
    }
    async fn runs_between(
        &self,
        dag: &DagKey,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<dag_operator::store::DateRun>, StoreError> {
        self.inner.runs_between(dag, start, end).await
    }
    async fn runs_page(
        &self,
        dag: &DagKey,
        from: DateTime<Utc>,
        end: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<dag_operator::store::DateRun>, StoreError> {
        self.inner.runs_page(dag, from, end, limit).await
    }
    async fn backfill_counts(
        &self,
        b: &dag_operator::store::BackfillRef,
    ) -> Result<dag_operator::store::BackfillCounts, StoreError> {
        self.inner.backfill_counts(b).await
    }
}

#[tokio::test]
async fn a_retry_interrupted_by_a_database_failure_loses_no_try() {
    let pg = common::fresh_store("exec_retry_fault").await;
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Flaky {
        inner: pg.clone(),
        fail: fail.clone(),
    };
    let mut h = Harness::with(
        store,
        ExecutorConfig::default(),
        MemoryGate::new(std::time::Duration::from_secs(30)),
    );
    let run = admit(
        &mut h,
        "fragile",
        t0(),
        spec("- {name: a, retries: 2, retryDelaySeconds: 10, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    h.pod_does(
        &run,
        "a",
        1,
        PodVerdict::Failed {
            exit_code: Some(1),
            message: "Error".into(),
        },
    );
    // the failure is written, then the database goes away while the retry is written
    h.step(t0() + Duration::seconds(1)).await;
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = h.settle(t0() + Duration::seconds(11)).await;
    assert!(err.is_err(), "the write failed");
    let tries = pg.task_instances(&[run.id]).await.unwrap();
    assert_eq!(
        common::try_states(&tries),
        [(1, TaskState::UpForRetry)],
        "neither half of the retry was written"
    );
    // the database returns: the retry happens once, with every try of the budget left
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    h.step(t0() + Duration::seconds(12)).await;
    let tries = pg.task_instances(&[run.id]).await.unwrap();
    assert_eq!(state_of(&tries, "a", 1), TaskState::Failed);
    assert_eq!(state_of(&tries, "a", 2), TaskState::Running);
    assert_eq!(h.run_state(&run).await, RunState::Running);
}

#[tokio::test]
async fn a_run_finishes_with_the_spec_it_was_admitted_with_even_after_a_restart() {
    let store = common::fresh_store("exec_spec_pinned").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let v1 = spec(
        "- {name: a, container: {image: x}}\n- {name: b, dependsOn: [a], container: {image: x}}",
    );
    let run = admit(&mut h, "pinned", t0(), v1).await;
    h.step(t0()).await;
    // a new executor (a restart) loads the run from PostgreSQL: the DAG may have changed
    // meanwhile (b removed), the run still has b, read from its stored spec version
    h.cluster.set(&pod_key(&run, "a", 1), PodVerdict::Succeeded);
    let gate = h.gate.clone();
    let mut h = h.restart(ExecutorConfig::default(), gate);
    h.step(t0() + Duration::seconds(5)).await;
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Success);
    assert_eq!(
        state_of(&tries, "b", 1),
        TaskState::Running,
        "b runs after a restart: the run's spec came from its stored version"
    );
}

#[tokio::test]
async fn after_the_gate_forgets_everything_a_one_slot_pool_still_runs_one_task() {
    let store = common::fresh_store("exec_floor").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    h.pools.set("ns", "one", 1);
    let run = admit(
        &mut h,
        "narrow",
        t0(),
        spec(
            "- {name: a, pool: one, container: {image: x}}\n- {name: b, pool: one, container: {image: x}}\n- {name: c, pool: one, container: {image: x}}",
        ),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(h.cluster.live().len(), 1);
    // Redis restarted without its data
    h.gate.forget_everything();
    assert_eq!(h.gate.usage(&gate_key::pool("ns", "one")).await.unwrap(), 0);
    for s in 1..5 {
        h.exec
            .apply(ExecInput::PoolsChanged, t0() + Duration::seconds(s));
        h.step(t0() + Duration::seconds(s)).await;
        assert_eq!(
            h.cluster.live().len(),
            1,
            "two tasks of a one-slot Pool run"
        );
    }
    let tries = h.tries(&run).await;
    let running = tries
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .count();
    assert_eq!(running, 1);
}

/// One admission claims the next batch while the last creates of the previous one are in
/// flight (the API server is never left idle for a round trip), and the tries in flight count
/// against `--max-running-tasks` and their Pool as if they ran.
#[tokio::test]
async fn one_step_admits_batch_after_batch_within_the_task_limit_and_pool_slots() {
    let store = common::fresh_store("exec_pipelined").await;
    let cfg = ExecutorConfig {
        admit_batch: 2,
        create_concurrency: 2,
        max_running_tasks: 7,
        admit_slice: std::time::Duration::from_secs(30),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store, cfg);
    h.pools.set("ns", "two", 2);
    h.cluster.answer_after(std::time::Duration::from_millis(20));
    let pooled = (0..4).map(|i| format!("- {{name: p{i}, pool: two, container: {{image: x}}}}"));
    let plain = (0..6).map(|i| format!("- {{name: a{i}, container: {{image: x}}}}"));
    let tasks: Vec<String> = pooled.chain(plain).collect();
    let run = admit(&mut h, "wide", t0(), spec(&tasks.join("\n"))).await;
    h.take_inputs(t0());
    h.exec.step(t0()).await.expect("step");
    assert_eq!(h.cluster.created(), 7, "one step fills --max-running-tasks");
    let tries = h.tries(&run).await;
    let running = |prefix: &str| {
        tries
            .iter()
            .filter(|t| t.task_name.starts_with(prefix) && t.state == TaskState::Running)
            .count()
    };
    assert_eq!(running("p"), 2, "the Pool's two slots: {tries:?}");
    assert_eq!(running("a"), 5, "{tries:?}");
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 7);
    assert_eq!(h.gate.usage(&gate_key::pool("ns", "two")).await.unwrap(), 2);
}

/// The creates of an admission do not wait for the executor: while it takes in Pod events
/// and writes between steps, the next ones go out, so the API server is not left idle.
#[tokio::test]
async fn an_admissions_creates_go_on_between_steps() {
    let store = common::fresh_store("exec_between_steps").await;
    let cfg = ExecutorConfig {
        create_concurrency: 2,
        admit_slice: std::time::Duration::from_millis(1),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store, cfg);
    h.cluster.answer_after(std::time::Duration::from_millis(20));
    let tasks: Vec<String> = (0..6)
        .map(|i| format!("- {{name: a{i}, container: {{image: x}}}}"))
        .collect();
    admit(&mut h, "wide", t0(), spec(&tasks.join("\n"))).await;
    h.take_inputs(t0());
    assert!(
        h.exec.step(t0()).await.expect("step"),
        "the step returns with the creates under way"
    );
    // no step now: the six creates go on by themselves, two at a time
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.cluster.created() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 6 Pods created without a step",
            h.cluster.created()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(h.cluster.created() == 6);
}

/// A slow API server does not hold the executor: a step gives an admission at most
/// `admit_slice`, and the next step goes on with the creates still in flight.
#[tokio::test]
async fn an_admission_goes_on_over_steps_while_its_creates_are_in_flight() {
    let store = common::fresh_store("exec_slices").await;
    let cfg = ExecutorConfig {
        admit_slice: std::time::Duration::from_millis(50),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store, cfg);
    assert!(!h.admitting.is_set(), "nothing handed over yet");
    let run = one_slow_task(&mut h, 400).await;
    assert!(
        h.admitting.is_set(),
        "a run handed over: the writers give way"
    );
    h.take_inputs(t0());
    let more = h.exec.step(t0()).await.expect("step");
    assert!(
        more,
        "the step returns with the create in flight, asking to go on"
    );
    assert!(h.admitting.is_set(), "its create is in flight");
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Queued);
    let mut steps = 1;
    while h.exec.step(t0()).await.expect("step") {
        steps += 1;
        assert!(steps < 100, "the admission never ended");
    }
    assert!(steps > 1, "more than one step went by");
    assert!(!h.admitting.is_set(), "the admission ended");
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Running);
    assert_eq!(h.cluster.created(), 1);
}

#[tokio::test]
async fn max_running_tasks_holds_after_the_gate_forgets_everything() {
    let store = common::fresh_store("exec_floor_tasks").await;
    let cfg = ExecutorConfig {
        max_running_tasks: 2,
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store, cfg);
    admit(
        &mut h,
        "wide",
        t0(),
        spec("- {name: a, container: {image: x}}\n- {name: b, container: {image: x}}\n- {name: c, container: {image: x}}\n- {name: d, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(h.cluster.live().len(), 2);
    h.gate.forget_everything();
    h.exec.apply(ExecInput::PoolsChanged, t0());
    h.step(t0() + Duration::seconds(1)).await;
    assert_eq!(h.cluster.live().len(), 2, "--max-running-tasks 2 exceeded");
}

#[tokio::test]
async fn a_pod_of_the_same_name_but_another_try_is_never_adopted() {
    let store = common::fresh_store("exec_conflict").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let v = spec("- {name: a, container: {image: x}}");
    let date = t0();
    // the run's id is only known once stored: store it, then put a foreign Pod at its name
    let (hash, json) = v.content_hash().unwrap();
    h.store
        .save_specs(&[SpecRow {
            hash: hash.clone(),
            spec: json,
        }])
        .await
        .unwrap();
    let row = h
        .store
        .insert_runs(&[NewRun {
            dag: DagKey::new("ns", "twin"),
            dag_uid: "uid".into(),
            run_type: RunType::Manual,
            backfill_name: None,
            backfill_uid: None,
            trigger: None,
            logical_date: date,
            data_interval_start: date,
            data_interval_end: date,
            priority: 0,
            params: serde_json::json!({}),
            spec_hash: Some(hash),
            tasks: vec![NewTask {
                task_name: "a".into(),
                pool: None,
                pool_slots: 1,
            }],
        }])
        .await
        .unwrap()
        .remove(0);
    let mut foreign = RunRow {
        id: uuid::Uuid::new_v4(),
        ..row.clone()
    };
    foreign.logical_date = date - Duration::days(1);
    let clock = pod::DagClock::of(&v, chrono_tz::Tz::UTC);
    let mut squatter = pod::build_pod(&foreign, &v, &clock, &v.tasks[0], 1);
    squatter.metadata.name = Some(pod_key(&row, "a", 1).name);
    h.cluster.insert(squatter);
    h.exec.apply(
        ExecInput::Admitted(vec![AdmittedRun {
            run: row.clone(),
            spec: v,
        }]),
        date,
    );
    h.step(date).await;
    // the squatter finishes: that outcome is not this try's
    h.cluster.set(&pod_key(&row, "a", 1), PodVerdict::Succeeded);
    h.step(date + Duration::seconds(1)).await;
    let tries = h.tries(&row).await;
    let a = &tries[0];
    assert_eq!(a.state, TaskState::Failed, "{tries:?}");
    assert!(
        a.message
            .as_deref()
            .unwrap_or_default()
            .contains("another try"),
        "{a:?}"
    );
    assert_eq!(h.run_state(&row).await, RunState::Failed);
}

#[tokio::test]
async fn a_pod_the_api_server_refuses_fails_its_try_at_once_and_says_why() {
    let store = common::fresh_store("exec_refused").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    h.cluster.refuse(LaunchError::Refused {
        code: 422,
        message: "Pod \"x\" is invalid: spec.containers[0].image: Required value".into(),
    });
    let run = admit(
        &mut h,
        "noimage",
        t0(),
        spec("- {name: a, retries: 1, retryDelaySeconds: 0, container: {command: [sh]}}"),
    )
    .await;
    h.step(t0()).await;
    h.step(t0() + Duration::seconds(1)).await;
    let tries = h.tries(&run).await;
    assert_eq!(
        common::try_states(&tries),
        [(1, TaskState::Failed), (2, TaskState::Failed)],
        "retries apply, then the try fails for good"
    );
    assert!(
        tries[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("image: Required value")
    );
    assert_eq!(h.run_state(&run).await, RunState::Failed);
    let outputs = h.outputs();
    let events: Vec<_> = outputs
        .iter()
        .filter(|o| {
            matches!(
                o,
                ExecOutput::Event(Notice {
                    reason: "FailedCreate",
                    warning: true,
                    ..
                })
            )
        })
        .collect();
    assert_eq!(events.len(), 2, "{outputs:?}");
    assert!(outputs.iter().any(|o| matches!(
        o,
        ExecOutput::Status(ExecStatus::LaunchHealth(dag, Some(m))) if dag.name == "noimage" && m.contains("422")
    )));
    assert_eq!(
        h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(),
        0,
        "slots back"
    );
    // accepted again: the DAG's condition clears at the next Pod created
    h.cluster.accept();
    admit(
        &mut h,
        "noimage",
        t0() + Duration::days(1),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.step(t0() + Duration::days(1)).await;
    assert!(
        h.outputs()
            .iter()
            .any(|o| matches!(o, ExecOutput::Status(ExecStatus::LaunchHealth(_, None))))
    );
}

#[tokio::test]
async fn a_transient_create_error_keeps_the_try_queued_and_its_slot_until_the_retry() {
    let store = common::fresh_store("exec_transient").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    h.cluster
        .refuse(LaunchError::Transient("connection reset".into()));
    let run = admit(
        &mut h,
        "later",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Queued);
    // the request may have created the Pod (a reset after sending): the slot is not given
    // back, only forgotten; the retry takes it again under the same holder, or it lapses
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 1);
    h.cluster.accept();
    h.step(t0() + Duration::seconds(2)).await;
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Running);
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 1);
}

/// Two replicas' executors start the same try (a split brain or a handover overlap): the one
/// that loses the queued→running write only lets go of the try's slots, it must not free the
/// winner's (issue 27).
#[tokio::test]
async fn the_loser_of_the_running_write_leaves_the_winners_slot() {
    let store = common::fresh_store("exec_loser").await;
    let mut winner = Harness::new(store.clone(), ExecutorConfig::default());
    // the loser's create is slow: its try is chosen and its slot taken, the write not yet sent
    let mut loser = Harness::with(
        store.clone(),
        ExecutorConfig {
            admit_slice: std::time::Duration::from_millis(50),
            ..ExecutorConfig::default()
        },
        winner.gate.new_session(),
    );
    loser
        .cluster
        .answer_after(std::time::Duration::from_millis(400));
    let run = admit(
        &mut loser,
        "twice",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    loser.take_inputs(t0());
    assert!(
        loser.exec.step(t0()).await.expect("step"),
        "the loser's create is in flight"
    );
    assert_eq!(
        state_of(&loser.tries(&run).await, "a", 1),
        TaskState::Queued
    );
    // meanwhile the winner, handed the same run, starts the try and writes it running first
    winner.exec.apply(
        ExecInput::Admitted(vec![AdmittedRun {
            run: run.clone(),
            spec: spec("- {name: a, container: {image: x}}"),
        }]),
        t0(),
    );
    winner.step(t0()).await;
    assert_eq!(
        state_of(&winner.tries(&run).await, "a", 1),
        TaskState::Running
    );
    assert_eq!(winner.cluster.created(), 1);
    // the loser's create answers, its queued→running write takes nothing
    let mut steps = 0;
    while loser.exec.step(t0()).await.expect("step") {
        steps += 1;
        assert!(steps < 100, "the loser's admission never ended");
    }
    assert_eq!(loser.cluster.created(), 1);
    // its next upkeep gives back or lets go of what it ended
    loser.step(t0() + Duration::seconds(1)).await;
    assert_eq!(
        winner.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(),
        1,
        "the winner's try still holds its slot"
    );
    assert!(
        !winner
            .gate
            .acquire(gate_key::RUNNING_TASKS, "newcomer", 1, 1)
            .await
            .unwrap(),
        "a limit of one is full"
    );
}

#[tokio::test]
async fn cancelled_runs_lose_their_pods_and_slots() {
    let store = common::fresh_store("exec_cancel").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let run = admit(
        &mut h,
        "doomed",
        t0(),
        spec("- {name: a, container: {image: x}}\n- {name: b, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(h.cluster.live().len(), 2);
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 2);
    // the engine cancels the run (its DAG was deleted) and tells the executor
    store.cancel_runs(&[run.id]).await.unwrap();
    h.exec.apply(
        ExecInput::Cancelled(vec![CancelledRun {
            dag: run.dag.clone(),
            run: run.id,
        }]),
        t0() + Duration::seconds(1),
    );
    h.step(t0() + Duration::seconds(1)).await;
    assert!(h.cluster.pods().is_empty(), "the run's Pods are deleted");
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
    assert_eq!(h.exec.running_runs(), 0);
    assert!(
        h.tries(&run)
            .await
            .iter()
            .all(|t| t.state == TaskState::Cancelled)
    );
}

/// Polls `cond` until it holds, for at most ten seconds (real time).
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

impl<S: RunStore + Clone> Harness<S> {
    /// Steps at `now` until the admission under way has answered every create and nothing
    /// is left to do (at most ten seconds, real time).
    async fn catch_up(&mut self, now: DateTime<Utc>) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let any = self.take_inputs(now);
            let more = self.exec.step(now).await.expect("step");
            if !more && !any && !self.admitting.is_set() && self.inputs.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the executor never caught up"
            );
        }
    }
}

/// A create in flight when its run is cancelled (Replace, DAG deleted) lands after the run's
/// Pods were deleted: once the executor has caught up, that Pod is gone too, and its slot is
/// free.
#[tokio::test]
async fn a_create_in_flight_when_its_run_is_cancelled_leaves_no_pod() {
    let store = common::fresh_store("exec_cancel_in_flight").await;
    let cfg = ExecutorConfig {
        admit_slice: std::time::Duration::from_millis(20),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store.clone(), cfg);
    h.cluster.hold_creates();
    let run = admit(
        &mut h,
        "late",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.take_inputs(t0());
    assert!(
        h.exec.step(t0()).await.expect("step"),
        "its create in flight"
    );
    let cluster = h.cluster.clone();
    wait_for("the create is held", || cluster.held_creates() == 1).await;
    store.cancel_runs(&[run.id]).await.unwrap();
    h.exec.apply(
        ExecInput::Cancelled(vec![CancelledRun {
            dag: run.dag.clone(),
            run: run.id,
        }]),
        t0() + Duration::seconds(1),
    );
    h.step(t0() + Duration::seconds(1)).await;
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
    // the API server answers the create only now: the Pod exists after the run's delete
    h.cluster.release_creates();
    wait_for("the held create reaches the cluster", || {
        cluster.created() == 1
    })
    .await;
    h.catch_up(t0() + Duration::seconds(2)).await;
    assert!(
        h.cluster.pods().is_empty(),
        "a Pod of the cancelled run survives: {:?}",
        h.cluster.pods().keys().collect::<Vec<_>>()
    );
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Cancelled);
}

/// The run is cancelled in PostgreSQL (by the engine, or another replica) before the
/// executor hears of it, and a create in flight lands: its try's `queued → running` write
/// loses, and the Pod it made is deleted.
#[tokio::test]
async fn a_create_whose_running_write_loses_leaves_no_pod() {
    let store = common::fresh_store("exec_lost_write").await;
    let cfg = ExecutorConfig {
        admit_slice: std::time::Duration::from_millis(20),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store.clone(), cfg);
    h.cluster.hold_creates();
    let run = admit(
        &mut h,
        "late",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.take_inputs(t0());
    assert!(
        h.exec.step(t0()).await.expect("step"),
        "its create in flight"
    );
    let cluster = h.cluster.clone();
    wait_for("the create is held", || cluster.held_creates() == 1).await;
    store.cancel_runs(&[run.id]).await.unwrap();
    h.cluster.release_creates();
    wait_for("the held create reaches the cluster", || {
        cluster.created() == 1
    })
    .await;
    h.catch_up(t0() + Duration::seconds(1)).await;
    assert!(
        h.cluster.pods().is_empty(),
        "the Pod of the lost write survives"
    );
    // (what becomes of the slot of a lost write is the gate's rule, tested there)
}

/// The same when the run ends by its runTimeoutSeconds while a create is in flight.
#[tokio::test]
async fn a_create_in_flight_when_its_run_times_out_leaves_no_pod() {
    let store = common::fresh_store("exec_timeout_in_flight").await;
    let cfg = ExecutorConfig {
        admit_slice: std::time::Duration::from_millis(20),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store.clone(), cfg);
    h.cluster.hold_creates();
    let spec = Arc::new(
        serde_yaml::from_str::<DagSpec>(
            "runTimeoutSeconds: 60\ntasks:\n- {name: a, container: {image: x}}",
        )
        .expect("valid spec"),
    );
    let run = admit(&mut h, "late", t0(), spec).await;
    let started = run.started_at.expect("a run starts when admitted");
    h.take_inputs(started);
    assert!(
        h.exec.step(started).await.expect("step"),
        "its create in flight"
    );
    let cluster = h.cluster.clone();
    wait_for("the create is held", || cluster.held_creates() == 1).await;
    h.step(started + Duration::seconds(60)).await;
    assert_eq!(h.run_state(&run).await, RunState::Failed);
    h.cluster.release_creates();
    wait_for("the held create reaches the cluster", || {
        cluster.created() == 1
    })
    .await;
    h.catch_up(started + Duration::seconds(61)).await;
    assert!(
        h.cluster.pods().is_empty(),
        "a Pod of the timed-out run survives"
    );
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
}

/// A delete that keeps failing is retried on its own timer: it does not hold admission back,
/// however often the executor steps.
#[tokio::test]
async fn failing_deletes_do_not_hold_admission_back() {
    let store = common::fresh_store("exec_failing_deletes").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let doomed = admit(
        &mut h,
        "doomed",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    h.cluster.fail_deletes(true);
    store.cancel_runs(&[doomed.id]).await.unwrap();
    h.exec.apply(
        ExecInput::Cancelled(vec![CancelledRun {
            dag: doomed.dag.clone(),
            run: doomed.id,
        }]),
        t0() + Duration::seconds(1),
    );
    h.step(t0() + Duration::seconds(1)).await;
    assert_eq!(h.cluster.pods().len(), 1, "its delete failed");
    let next = admit(
        &mut h,
        "next",
        t0() + Duration::seconds(1),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    // steps come twice a second (Pod events, actions), for three seconds
    for i in 1..=6 {
        h.step(t0() + Duration::seconds(1) + Duration::milliseconds(500 * i))
            .await;
    }
    assert_eq!(
        state_of(&h.tries(&next).await, "a", 1),
        TaskState::Running,
        "admission starved by a failing delete"
    );
    // the delete is tried again and goes through once the API server takes it
    h.cluster.fail_deletes(false);
    let due = h.exec.next_wake().expect("a wake to retry the delete");
    assert!(due <= t0() + Duration::seconds(35), "{due}");
    h.step(due).await;
    assert!(
        !h.cluster.pods().contains_key(&pod_key(&doomed, "a", 1)),
        "the cancelled run's Pod is deleted at last"
    );
}

/// A Pod deleted before its try is written `running` (the watch reports the create and the
/// delete while the create's answer waits to be written): the try fails within the deleted
/// Pod's grace, not at the next resync.
#[tokio::test]
async fn a_pod_deleted_before_its_try_is_recorded_running_fails_the_try() {
    let store = common::fresh_store("exec_deleted_early").await;
    let cfg = ExecutorConfig {
        admit_slice: std::time::Duration::from_millis(20),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store, cfg);
    h.cluster.hold_creates();
    let run = admit(
        &mut h,
        "early",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.take_inputs(t0());
    assert!(
        h.exec.step(t0()).await.expect("step"),
        "its create in flight"
    );
    let cluster = h.cluster.clone();
    wait_for("the create is held", || cluster.held_creates() == 1).await;
    h.cluster.release_creates();
    let key = pod_key(&run, "a", 1);
    wait_for("the Pod is created", || cluster.pods().contains_key(&key)).await;
    // deleted before the executor wrote its try running: the watch says so at once
    h.cluster.remove(&key);
    h.take_inputs(t0() + Duration::seconds(1));
    h.catch_up(t0() + Duration::seconds(1)).await;
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Running);
    h.step(t0() + Duration::seconds(12)).await;
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Failed, "{tries:?}");
    assert!(
        tries[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("deleted"),
        "{tries:?}"
    );
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
}

/// The gate refuses a try the floor lets start (another replica holds the Pool's slot): it
/// is looked at again a second later on the step's clock, not the wall clock.
#[tokio::test]
async fn a_gate_refusal_is_retried_a_second_later_on_the_step_clock() {
    let store = common::fresh_store("exec_refusal_clock").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    h.pools.set("ns", "p", 1);
    let other = h.gate.new_session();
    let pool = gate_key::pool("ns", "p");
    assert!(other.acquire(&pool, "another-replica", 1, 1).await.unwrap());
    let run = admit(
        &mut h,
        "refused",
        t0(),
        spec("- {name: a, pool: p, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Queued);
    let due = h.exec.next_wake().expect("a wake to look again");
    assert!(due <= t0() + Duration::seconds(2), "{due}");
    other.release(&pool, "another-replica").await.unwrap();
    h.step(t0() + Duration::seconds(2)).await;
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Running);
}

#[tokio::test]
async fn a_pod_deleted_behind_the_executors_back_fails_its_try_and_timeouts_stop_pods() {
    let store = common::fresh_store("exec_gone").await;
    let mut h = Harness::new(store, ExecutorConfig::default());
    let run = admit(
        &mut h,
        "fragile",
        t0(),
        spec("- {name: a, container: {image: x}}\n- {name: b, timeoutSeconds: 60, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    h.cluster.remove(&pod_key(&run, "a", 1));
    h.step(t0() + Duration::seconds(1)).await;
    // a cancellation has a grace to arrive first (a DAG or namespace being deleted)
    assert_eq!(state_of(&h.tries(&run).await, "a", 1), TaskState::Running);
    h.step(t0() + Duration::seconds(11)).await;
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Failed);
    assert!(
        tries[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("deleted")
    );
    // b times out 60 s after its Pod was created (answered just after the first step began)
    let due = h.exec.next_wake().expect("a wake for b's timeout");
    assert!(
        due >= t0() + Duration::seconds(60) && due < t0() + Duration::seconds(61),
        "{due}"
    );
    h.step(due - Duration::milliseconds(1)).await;
    assert_eq!(state_of(&h.tries(&run).await, "b", 1), TaskState::Running);
    h.step(due).await;
    assert_eq!(state_of(&h.tries(&run).await, "b", 1), TaskState::Failed);
    assert!(h.cluster.pods().is_empty());
    assert_eq!(h.run_state(&run).await, RunState::Failed);
}

#[tokio::test]
async fn finished_pods_go_after_their_retention() {
    let store = common::fresh_store("exec_retention").await;
    let cfg = ExecutorConfig {
        pod_retention: std::time::Duration::from_secs(600),
        resync_interval: std::time::Duration::from_secs(86_400),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::new(store, cfg);
    let run = admit(
        &mut h,
        "tidy",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    let key = pod_key(&run, "a", 1);
    // the watch reports when it finished
    h.cluster
        .finish(&key, PodVerdict::Succeeded, t0() + Duration::seconds(5));
    h.step(t0() + Duration::seconds(6)).await;
    assert_eq!(h.cluster.pods().len(), 1, "kept for its retention");
    assert_eq!(h.exec.next_wake(), Some(t0() + Duration::seconds(605)));
    h.step(t0() + Duration::seconds(605)).await;
    assert!(h.cluster.pods().is_empty());
}

#[tokio::test]
async fn after_a_restart_running_tries_are_adopted_never_started_twice() {
    let store = common::fresh_store("exec_adopt").await;
    let gate = MemoryGate::new(std::time::Duration::from_secs(30));
    let mut h = Harness::with(store, ExecutorConfig::default(), gate);
    let run = admit(
        &mut h,
        "held",
        t0(),
        spec("- {name: a, pool: p, container: {image: x}}"),
    )
    .await;
    h.pools.set("ns", "p", 1);
    h.exec.apply(ExecInput::PoolsChanged, t0());
    h.step(t0()).await;
    assert_eq!(h.cluster.created(), 1);
    // a new process: a fresh gate (nothing held), the same database and cluster
    let fresh = MemoryGate::new(std::time::Duration::from_secs(30));
    let mut h = h.restart(ExecutorConfig::default(), fresh.clone());
    h.step(t0() + Duration::seconds(1)).await;
    assert_eq!(h.cluster.created(), 1, "no Pod created twice");
    assert_eq!(h.exec.running_tasks(), 1);
    assert_eq!(
        fresh.usage(&gate_key::pool("ns", "p")).await.unwrap(),
        1,
        "slot adopted"
    );
    assert!(h.pod_does(&run, "a", 1, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(2)).await;
    assert_eq!(h.run_state(&run).await, RunState::Success);
    assert_eq!(fresh.usage(&gate_key::pool("ns", "p")).await.unwrap(), 0);
}

/// Records `kind` on `run` as user alice would through the API.
async fn ask(store: &PgStore, run: &RunRow, kind: ActionKind) -> i64 {
    store
        .record_action(&NewAction {
            dag: run.dag.clone(),
            run_id: Some(run.id),
            kind,
            detail: serde_json::json!({}),
            task: None,
            requested_by: "alice".into(),
            done: None,
        })
        .await
        .expect("record")
        .id
}

/// Issue 28, finding 9: an action is authorized when it is asked for; one not carried out
/// within ten minutes (the operator down, no leader) is refused as expired, never carried out
/// on a right its requester may have lost since.
#[tokio::test]
async fn an_action_not_carried_out_within_ten_minutes_expires() {
    let store = common::fresh_store("exec_action_expiry").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let run = admit(
        &mut h,
        "held",
        t0(),
        spec("- {name: a, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    let id = ask(&store, &run, ActionKind::Cancel).await;
    let asked = store
        .action(id)
        .await
        .unwrap()
        .expect("recorded")
        .requested_at;
    h.step(asked + Duration::minutes(11)).await;
    let action = store.action(id).await.unwrap().expect("recorded");
    assert_eq!(action.outcome, Some(ActionOutcome::Refused), "{action:?}");
    assert!(
        action
            .message
            .as_deref()
            .is_some_and(|m| m.contains("expired")),
        "{action:?}"
    );
    assert_eq!(h.run_state(&run).await, RunState::Running, "not cancelled");
}

#[tokio::test]
async fn a_cancel_action_deletes_the_runs_pods_frees_its_slots_and_is_recorded() {
    let store = common::fresh_store("exec_action_cancel").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let run = admit(
        &mut h,
        "held",
        t0(),
        spec("- {name: a, container: {image: x}}\n- {name: b, dependsOn: [a], container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(h.cluster.live().len(), 1);
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 1);
    let id = ask(&store, &run, ActionKind::Cancel).await;
    h.outputs();
    h.step(t0() + Duration::seconds(2)).await;
    assert!(h.cluster.pods().is_empty(), "the run's Pods are deleted");
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
    assert_eq!(h.exec.running_runs(), 0);
    assert_eq!(h.run_state(&run).await, RunState::Cancelled);
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Cancelled);
    assert_eq!(state_of(&tries, "b", 1), TaskState::Cancelled);
    let action = store.action(id).await.unwrap().expect("recorded");
    assert_eq!(action.outcome, Some(ActionOutcome::Done));
    assert_eq!(action.message.as_deref(), Some("cancelled by alice"));
    let outputs = h.outputs();
    assert!(
        outputs.contains(&ExecOutput::RunsEnded(vec![run.id])),
        "{outputs:?}"
    );
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, ExecOutput::Event(n) if n.reason == "RunCancelled")),
        "{outputs:?}"
    );
    // a second cancel is refused, with the reason, and changes nothing
    let again = ask(&store, &run, ActionKind::Cancel).await;
    h.step(t0() + Duration::seconds(4)).await;
    let action = store.action(again).await.unwrap().expect("recorded");
    assert_eq!(action.outcome, Some(ActionOutcome::Refused));
    assert!(action.message.unwrap().contains("not running"));
}

#[tokio::test]
async fn a_rerun_action_runs_failed_tasks_again_and_keeps_the_successful_ones() {
    let store = common::fresh_store("exec_action_rerun").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let run = admit(
        &mut h,
        "partial",
        t0(),
        spec("- {name: a, container: {image: x}}\n- {name: b, container: {image: x}}\n- {name: c, dependsOn: [b], container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert!(h.pod_does(&run, "a", 1, PodVerdict::Succeeded));
    let failed = PodVerdict::Failed {
        exit_code: Some(1),
        message: "Error".into(),
    };
    assert!(h.pod_does(&run, "b", 1, failed));
    h.step(t0() + Duration::seconds(1)).await;
    assert_eq!(h.run_state(&run).await, RunState::Failed);
    let created = h.cluster.created();
    ask(&store, &run, ActionKind::Rerun).await;
    h.step(t0() + Duration::seconds(3)).await;
    assert_eq!(h.run_state(&run).await, RunState::Running);
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Success);
    assert!(
        tries
            .iter()
            .all(|t| t.task_name != "a" || t.try_number == 1),
        "a is not re-run"
    );
    assert_eq!(state_of(&tries, "b", 1), TaskState::Failed);
    assert_eq!(state_of(&tries, "b", 2), TaskState::Running);
    assert_eq!(h.cluster.created(), created + 1, "only b starts again");
    // a re-run of a running run is refused
    let refused = ask(&store, &run, ActionKind::Rerun).await;
    assert!(h.pod_does(&run, "b", 2, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(5)).await;
    assert_eq!(
        store.action(refused).await.unwrap().unwrap().outcome,
        Some(ActionOutcome::Refused)
    );
    assert_eq!(state_of(&h.tries(&run).await, "c", 2), TaskState::Running);
    assert!(h.pod_does(&run, "c", 2, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(6)).await;
    assert_eq!(h.run_state(&run).await, RunState::Success);
    // marking it failed afterwards relabels it
    let mark = ask(&store, &run, ActionKind::MarkFailed).await;
    h.step(t0() + Duration::seconds(8)).await;
    assert_eq!(h.run_state(&run).await, RunState::Failed);
    assert_eq!(
        store
            .action(mark)
            .await
            .unwrap()
            .unwrap()
            .message
            .as_deref(),
        Some("marked failed by alice")
    );
}

/// Records a task action on `run` as user alice would through the API.
async fn ask_task(store: &PgStore, run: &RunRow, kind: ActionKind, task: &str, down: bool) -> i64 {
    store
        .record_action(&NewAction {
            dag: run.dag.clone(),
            run_id: Some(run.id),
            kind,
            detail: serde_json::json!({}),
            task: Some(TaskTarget {
                task: task.into(),
                downstream: down,
                upstream: false,
            }),
            requested_by: "alice".into(),
            done: None,
        })
        .await
        .expect("record")
        .id
}

/// a → b → c, b fails: the run fails with c upstream-failed.
async fn failed_chain(h: &mut Harness, name: &str) -> (RunRow, Arc<DagSpec>) {
    let dag = spec(
        "- {name: a, container: {image: x}}\n- {name: b, dependsOn: [a], container: {image: x}}\n- {name: c, dependsOn: [b], container: {image: x}}",
    );
    let run = admit(h, name, t0(), dag.clone()).await;
    h.step(t0()).await;
    assert!(h.pod_does(&run, "a", 1, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(1)).await;
    let failed = PodVerdict::Failed {
        exit_code: Some(1),
        message: "Error".into(),
    };
    assert!(h.pod_does(&run, "b", 1, failed));
    h.step(t0() + Duration::seconds(2)).await;
    assert_eq!(h.run_state(&run).await, RunState::Failed);
    assert_eq!(
        state_of(&h.tries(&run).await, "c", 1),
        TaskState::UpstreamFailed
    );
    (run, dag)
}

/// Issue 29, item 3: clearing a task with its downstream in a finished failed run makes new
/// tries of exactly what the preview listed, and the run runs again to success.
#[tokio::test]
async fn clearing_a_task_with_downstream_runs_it_again_in_the_same_run() {
    let store = common::fresh_store("exec_task_clear").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let (run, dag) = failed_chain(&mut h, "chain").await;
    let created = h.cluster.created();
    let id = ask_task(&store, &run, ActionKind::ClearTask, "b", true).await;
    // the preview: the very decision, from what is stored now
    let asked = store.action(id).await.unwrap().expect("recorded");
    let now_run = store.run(run.id).await.unwrap().expect("run");
    let latest = latest_of_run(&h.tries(&run).await);
    let graph = dag.graph().expect("graph");
    let preview = decide(&asked, Some(&now_run), Some(&graph), &latest, t0());
    let Some(RunChange::Tasks { changes, .. }) = &preview.change else {
        panic!("not a task change: {preview:?}");
    };
    let listed: Vec<(&str, i32, TaskState)> = changes
        .iter()
        .map(|c| (c.task.as_str(), c.try_number + 1, c.to()))
        .collect();
    assert_eq!(
        listed,
        [("b", 2, TaskState::Pending), ("c", 2, TaskState::Pending)]
    );
    h.step(t0() + Duration::seconds(4)).await;
    let action = store.action(id).await.unwrap().expect("recorded");
    assert_eq!(action.outcome, Some(ActionOutcome::Done), "{action:?}");
    assert_eq!(action.message, Some(preview.message.clone()));
    assert_eq!(h.run_state(&run).await, RunState::Running);
    let tries = h.tries(&run).await;
    // what was applied is what was listed: a new try of b and c, nothing of a
    let new: Vec<(&str, i32)> = tries
        .iter()
        .filter(|t| t.try_number > 1)
        .map(|t| (t.task_name.as_str(), t.try_number))
        .collect();
    assert_eq!(new, [("b", 2), ("c", 2)]);
    assert_eq!(state_of(&tries, "b", 1), TaskState::Failed, "history kept");
    assert_eq!(state_of(&tries, "b", 2), TaskState::Running);
    assert_eq!(state_of(&tries, "c", 2), TaskState::Pending);
    assert_eq!(h.cluster.created(), created + 1, "only b starts");
    assert!(h.pod_does(&run, "b", 2, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(5)).await;
    assert!(h.pod_does(&run, "c", 2, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(6)).await;
    assert_eq!(h.run_state(&run).await, RunState::Success);
}

/// Issue 29, item 3: marking a failed task success lets its downstream run, and the run ends
/// with the graph's outcome.
#[tokio::test]
async fn marking_a_failed_task_success_lets_its_downstream_run() {
    let store = common::fresh_store("exec_task_mark").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let (run, _) = failed_chain(&mut h, "chain").await;
    let id = ask_task(&store, &run, ActionKind::MarkTaskSuccess, "b", false).await;
    h.step(t0() + Duration::seconds(4)).await;
    let action = store.action(id).await.unwrap().expect("recorded");
    assert_eq!(action.outcome, Some(ActionOutcome::Done), "{action:?}");
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "b", 1), TaskState::Success);
    assert!(
        tries
            .iter()
            .all(|t| t.task_name != "b" || t.try_number == 1),
        "no new try of b"
    );
    assert_eq!(
        state_of(&tries, "c", 2),
        TaskState::Running,
        "c decided again and started"
    );
    assert_eq!(h.run_state(&run).await, RunState::Running);
    assert!(h.pod_does(&run, "c", 2, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(5)).await;
    assert_eq!(h.run_state(&run).await, RunState::Success);
    // marking it failed afterwards: the run's outcome follows
    ask_task(&store, &run, ActionKind::MarkTaskFailed, "c", false).await;
    h.step(t0() + Duration::seconds(7)).await;
    h.step(t0() + Duration::seconds(8)).await;
    assert_eq!(state_of(&h.tries(&run).await, "c", 2), TaskState::Failed);
    assert_eq!(h.run_state(&run).await, RunState::Failed);
}

/// Issue 29, item 3: clearing a running task deletes its Pod and runs it again; an unknown
/// task is refused with the reason.
#[tokio::test]
async fn clearing_a_running_task_deletes_its_pod_and_starts_a_new_try() {
    let store = common::fresh_store("exec_task_clear_running").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let run = admit(
        &mut h,
        "busy",
        t0(),
        spec("- {name: a, container: {image: x}}\n- {name: b, container: {image: x}}"),
    )
    .await;
    h.step(t0()).await;
    assert_eq!(h.cluster.live().len(), 2);
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 2);
    ask_task(&store, &run, ActionKind::ClearTask, "a", false).await;
    h.step(t0() + Duration::seconds(2)).await;
    let tries = h.tries(&run).await;
    assert_eq!(state_of(&tries, "a", 1), TaskState::Cancelled);
    assert_eq!(state_of(&tries, "a", 2), TaskState::Running);
    assert_eq!(state_of(&tries, "b", 1), TaskState::Running, "b untouched");
    assert!(
        !h.cluster.live().contains(&pod_key(&run, "a", 1)),
        "the cleared try's Pod is deleted"
    );
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 2);
    let bad = ask_task(&store, &run, ActionKind::ClearTask, "nope", false).await;
    h.step(t0() + Duration::seconds(4)).await;
    let action = store.action(bad).await.unwrap().expect("recorded");
    assert_eq!(action.outcome, Some(ActionOutcome::Refused));
    assert!(action.message.unwrap().contains("no task \"nope\""));
    assert!(h.pod_does(&run, "a", 2, PodVerdict::Succeeded));
    assert!(h.pod_does(&run, "b", 1, PodVerdict::Succeeded));
    h.step(t0() + Duration::seconds(5)).await;
    assert_eq!(h.run_state(&run).await, RunState::Success);
}

#[tokio::test]
async fn a_run_past_its_run_timeout_fails_stops_its_pods_and_frees_its_slots() {
    let store = common::fresh_store("exec_run_timeout").await;
    let mut h = Harness::new(store.clone(), ExecutorConfig::default());
    let spec = Arc::new(
        serde_yaml::from_str::<DagSpec>(
            "runTimeoutSeconds: 60\ntasks:\n- {name: a, retries: 3, container: {image: x}}\n- {name: b, container: {image: x}}\n- {name: c, dependsOn: [a], container: {image: x}}",
        )
        .expect("valid spec"),
    );
    let run = admit(&mut h, "slow", t0(), spec).await;
    let started = run.started_at.expect("a run starts when admitted");
    h.step(started).await;
    assert_eq!(h.cluster.live().len(), 2);
    assert!(h.pod_does(&run, "b", 1, PodVerdict::Succeeded));
    h.step(started + Duration::seconds(1)).await;
    // the executor wakes at the deadline
    assert_eq!(h.exec.next_wake(), Some(started + Duration::seconds(60)));
    h.step(started + Duration::seconds(59)).await;
    assert_eq!(h.run_state(&run).await, RunState::Running);
    h.outputs();
    h.step(started + Duration::seconds(60)).await;
    assert_eq!(h.run_state(&run).await, RunState::Failed);
    let tries = h.tries(&run).await;
    // a failed for good (no retry), b kept its success, c never started
    assert_eq!(state_of(&tries, "a", 1), TaskState::Failed);
    assert_eq!(tries.iter().filter(|t| t.task_name == "a").count(), 1);
    assert_eq!(state_of(&tries, "b", 1), TaskState::Success);
    assert_eq!(state_of(&tries, "c", 1), TaskState::Skipped);
    assert!(h.cluster.live().is_empty(), "the running Pod is deleted");
    assert_eq!(h.gate.usage(gate_key::RUNNING_TASKS).await.unwrap(), 0);
    assert_eq!(h.exec.running_runs(), 0);
    let timed_out: Vec<_> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            ExecOutput::Event(n) if n.reason == "RunTimedOut" => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(timed_out.len(), 1, "one RunTimedOut event");
    assert!(timed_out[0].warning);
    assert!(
        timed_out[0].message.contains("task \"a\" was stopped"),
        "{}",
        timed_out[0].message
    );
}
