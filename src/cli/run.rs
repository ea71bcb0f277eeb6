//! `dag-operator run`: the operator. Wires the store, the engine, the DAG controller, the
//! status writer, events and the metrics/health server together.

use std::sync::Arc;
use std::time::Duration;

use dag_operator::api::{Backfill, DAG};
use dag_operator::controller::backfill::{self as backfill_controller, backfill_reference};
use dag_operator::controller::status::{StatusUpdate, run_writer, summary};
use dag_operator::controller::{Events, dag as dag_controller, dag_reference};
use dag_operator::engine::{Command, Engine, EngineConfig, Output};
use dag_operator::executor::watch::{spawn_pod_watch, spawn_pool_watch, until_ready};
use dag_operator::executor::{ExecInput, ExecOutput, Executor, ExecutorConfig, KubeLauncher};
use dag_operator::gate::{Gate, MemoryGate, RedisGate};
use dag_operator::leader::{Elector, LeaseConfig};
use dag_operator::schedule::parse_timezone;
use dag_operator::store::PgStore;
use dag_operator::telemetry::{self, ControllerKind, Health, Metrics, Role};
use kube::Api;
use tokio::sync::mpsc;

use super::{CliError, LogFormat, RunArgs};

pub fn run(args: RunArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(operate(args))
}

/// How long a graceful shutdown may take before the process just ends.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Set once SIGINT or SIGTERM arrived. Listening starts when the process starts, so a signal
/// sent while the operator is still starting up is not missed.
static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
    std::sync::OnceLock::new();

/// Starts listening for SIGINT and SIGTERM (once, at the start of `run`).
fn listen_for_shutdown() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    if SHUTDOWN.set(rx).is_ok() {
        tokio::spawn(async move {
            os_signal().await;
            let _ = tx.send(true);
        });
    }
}

/// Completes once SIGINT or SIGTERM has arrived (also if it arrived before this was called).
async fn shutdown_signal() {
    let Some(rx) = SHUTDOWN.get() else {
        return os_signal().await;
    };
    let mut rx = rx.clone();
    let _ = rx.wait_for(|down| *down).await;
}

/// Completes on SIGINT or SIGTERM.
async fn os_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs a short command against the API server: a current-thread runtime, the client from
/// `kubeconfig` (or the usual inference), and the namespace (`-n`, else the kubeconfig's).
pub(super) fn with_kube<T, F, Fut>(
    kubeconfig: Option<&str>,
    namespace: Option<&str>,
    f: F,
) -> Result<T, CliError>
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let client = kube_client(kubeconfig).await?;
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| client.default_namespace().to_string());
        f(client, namespace).await
    })
}

pub(super) async fn kube_client(kubeconfig: Option<&str>) -> Result<kube::Client, CliError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| CliError::runtime(format!("cannot read kubeconfig {path}: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| CliError::runtime(format!("invalid kubeconfig {path}: {e}")))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| CliError::runtime(format!("no Kubernetes configuration found: {e}")))?,
    };
    kube::Client::try_from(config)
        .map_err(|e| CliError::runtime(format!("cannot build a Kubernetes client: {e}")))
}

/// The engine and the executor, with their channels, before they get their (shared) gate.
struct Workers {
    engine: EngineConfig,
    executor: ExecutorConfig,
    store: PgStore,
    client: kube::Client,
    commands: mpsc::Receiver<Command>,
    out: mpsc::UnboundedSender<Output>,
    exec_out: mpsc::UnboundedSender<ExecOutput>,
    exec_in: mpsc::UnboundedReceiver<ExecInput>,
    /// the Pools the executor admits into
    pools: kube::runtime::reflector::Store<dag_operator::api::Pool>,
    /// the DAG controller's cache: the current spec of runs from before spec versions
    dags: kube::runtime::reflector::Store<DAG>,
}

impl Workers {
    fn spawn<G: Gate + Clone>(self, gate: G) {
        let engine = Engine::with_gate(self.engine, self.store.clone(), gate.clone(), self.out);
        tokio::spawn(engine.run(self.commands));
        let executor = Executor::new(
            self.executor,
            self.store,
            gate,
            KubeLauncher::new(self.client),
            Arc::new(self.pools.clone()),
            self.exec_out,
        )
        .with_current_specs(Arc::new(self.dags.clone()));
        let (pools, dags, inputs) = (self.pools, self.dags, self.exec_in);
        tokio::spawn(async move {
            // a run's Pods are judged once the watches have listed what exists
            until_ready(&pools).await;
            until_ready(&dags).await;
            executor.run(inputs).await;
        });
    }
}

/// The gate is reachable when both of its users (engine: runs, executor: tasks) say so.
#[derive(Clone)]
struct GateHealth {
    state: Arc<std::sync::Mutex<(bool, bool)>>,
    health: Arc<Health>,
    status: mpsc::UnboundedSender<StatusUpdate>,
}

impl GateHealth {
    fn new(health: Arc<Health>, status: mpsc::UnboundedSender<StatusUpdate>) -> Self {
        GateHealth {
            state: Arc::new(std::sync::Mutex::new((true, true))),
            health,
            status,
        }
    }

    fn set_engine(&self, ok: bool) {
        self.update(|s| s.0 = ok);
    }

    fn set_executor(&self, ok: bool) {
        self.update(|s| s.1 = ok);
    }

    fn update(&self, change: impl FnOnce(&mut (bool, bool))) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let before = state.0 && state.1;
        change(&mut state);
        let after = state.0 && state.1;
        if before != after {
            self.health.set_gate_ok(after);
            let _ = self.status.send(StatusUpdate::GateHealth(after));
        }
    }
}

/// Waits until this replica holds the leader Lease; `None` when shut down first.
async fn lead(args: &RunArgs, client: &kube::Client) -> Result<Option<Elector>, CliError> {
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "dag-operator".to_string());
    let identity = format!("{host}_{}", uuid::Uuid::new_v4().simple());
    let duration = Duration::from_secs(args.leader_lease_duration.max(3));
    let mut cfg = LeaseConfig::new(&namespace, &args.leader_election_name, &identity);
    cfg.lease_duration = duration;
    cfg.renew_deadline = duration * 2 / 3;
    cfg.retry_period = duration / 7;
    cfg.validate()
        .map_err(|e| CliError::usage(format!("leader election: {e}")))?;
    let mut elector = Elector::new(client.clone(), cfg);
    tracing::info!(lease = %format!("{namespace}/{}", args.leader_election_name), %identity,
        "standby: waiting to become the leader");
    tokio::select! {
        r = elector.acquire() => r.map_err(|e| CliError::usage(format!("leader election: {e}")))?,
        _ = shutdown_signal() => return Ok(None),
    }
    tracing::info!(%identity, "elected leader: scheduling");
    Ok(Some(elector))
}

/// Holds the Lease; the moment leadership cannot be confirmed the process exits, so it admits
/// nothing more (its slots lapse within one lease TTL; a restart comes back as a standby).
/// On SIGTERM the Lease is given up so a standby takes over at once.
async fn step_down_on_loss(mut elector: Elector, done: tokio::sync::oneshot::Receiver<()>) {
    tokio::select! {
        lost = elector.hold() => {
            tracing::error!(reason = %lost, "lost the leader Lease: stopping at once");
            std::process::exit(1);
        }
        _ = done => {
            elector.release().await;
            tracing::info!("gave up the leader Lease");
        }
    }
}

/// Holders renew every third of the TTL, on a timer of their own (not once per scheduler
/// pass), so any `--schedule-interval` is safe; below 3 s the renewals would come faster than
/// a Redis round trip under load can be relied on.
fn check_lease_ttl(secs: u64) -> Result<(), CliError> {
    if secs < 3 {
        return Err(CliError::usage(format!(
            "--lease-ttl {secs}s is too short: slots are renewed every third of it; use at least 3s"
        )));
    }
    Ok(())
}

async fn operate(args: RunArgs) -> Result<(), CliError> {
    listen_for_shutdown();
    telemetry::init_tracing(args.log_format == LogFormat::Json);
    let default_tz = parse_timezone(&args.timezone).map_err(CliError::usage)?;
    check_lease_ttl(args.lease_ttl)?;
    let url = args.database.url()?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    // until the engine reports otherwise
    health.set_gate_ok(true);
    health.set_role(if args.leader_election {
        Role::Standby
    } else {
        Role::Leader
    });
    metrics.set_leader(!args.leader_election);
    let addr = telemetry::serve(
        &args.metrics_addr,
        metrics.clone(),
        health.clone(),
        shutdown_signal(),
    )
    .await
    .map_err(CliError::runtime)?;
    tracing::info!(%addr, "health and metrics endpoints up");

    let client = kube_client(args.kube.kubeconfig.as_deref()).await?;
    let store = PgStore::connect_lazy(&url).map_err(CliError::runtime)?;

    // the schema first; the operator stays up (not ready) until PostgreSQL answers
    let mut backoff = Duration::from_millis(250);
    loop {
        match store.migrate().await {
            Ok(()) => {
                health.set_store_ok(true);
                break;
            }
            Err(e) => {
                health.set_store_ok(false);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot migrate the database yet");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown_signal() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    // a standby stays ready (store reachable) and takes over when the leader goes
    let mut step_down = None;
    if args.leader_election {
        let Some(elector) = lead(&args, &client).await? else {
            return Ok(()); // shut down while waiting
        };
        health.set_role(Role::Leader);
        metrics.set_leader(true);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        step_down = Some((done_tx, tokio::spawn(step_down_on_loss(elector, done_rx))));
    }

    let cfg = EngineConfig {
        default_tz,
        enable_catchup: args.enable_catchup,
        max_catchup_runs: args.max_catchup_runs,
        max_concurrent_runs: args.max_concurrent_runs,
        schedule_interval: Duration::from_secs(args.schedule_interval.max(1)),
        priority_aging: Duration::from_secs(args.priority_aging),
        max_backfill_runs: args.max_backfill_runs,
        namespace: args.namespace.clone(),
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
    };
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let lease_ttl = Duration::from_secs(args.lease_ttl.max(1));
    let (exec_tx, mut exec_rx) = mpsc::unbounded_channel();
    let (exec_in_tx, exec_in_rx) = mpsc::unbounded_channel();
    let exec_cfg = ExecutorConfig {
        max_running_tasks: args.max_running_tasks as usize,
        pod_retention: Duration::from_secs(args.pod_retention),
        create_concurrency: args.pod_create_concurrency.max(1),
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
        namespace: args.namespace.clone(),
        ..ExecutorConfig::default()
    };
    // one cache of the watched DAGs, filled by the DAG controller and read by the executor
    let dag_cache = kube::runtime::reflector::store::Writer::<DAG>::default();
    spawn_pod_watch(
        dag_operator::k8s::api(client.clone(), args.namespace.as_deref()),
        exec_in_tx.clone(),
    );
    let pools = spawn_pool_watch(
        dag_operator::k8s::api(client.clone(), args.namespace.as_deref()),
        exec_in_tx.clone(),
    );
    let workers = Workers {
        engine: cfg,
        executor: exec_cfg,
        store,
        client: client.clone(),
        commands: cmd_rx,
        out: out_tx,
        exec_out: exec_tx,
        exec_in: exec_in_rx,
        pools: pools.clone(),
        dags: dag_cache.as_reader(),
    };
    match args.redis.url() {
        Some(url) => {
            let gate = RedisGate::connect_lazy(&url, &args.redis.redis_key_prefix, lease_ttl)
                .map_err(|e| CliError::usage(format!("invalid Redis settings: {e}")))?;
            tracing::info!(prefix = %args.redis.redis_key_prefix, "limits held in Redis");
            workers.spawn(gate);
        }
        None => {
            tracing::info!("no Redis configured: limits held in process (run one replica)");
            let gate = MemoryGate::new(lease_ttl);
            workers.spawn(gate);
        }
    }
    let gate_health = GateHealth::new(health.clone(), status_tx.clone());
    let events = Events::new(client.clone());
    {
        let exec_events = events.clone();
        let cmd_tx = cmd_tx.clone();
        let status_tx = status_tx.clone();
        let metrics = metrics.clone();
        let gate_health = gate_health.clone();
        tokio::spawn(async move {
            while let Some(output) = exec_rx.recv().await {
                match output {
                    ExecOutput::RunsEnded(ids) => {
                        let _ = cmd_tx.send(Command::RunsEnded(ids)).await;
                    }
                    ExecOutput::RecentRuns(recent) => {
                        let runs = recent.runs.iter().map(summary).collect();
                        let _ = status_tx.send(StatusUpdate::Runs(
                            recent.dag,
                            runs,
                            recent.last_success,
                        ));
                    }
                    ExecOutput::LaunchHealth(dag, refused) => {
                        let _ = status_tx.send(StatusUpdate::Launch(dag, refused));
                    }
                    ExecOutput::Event {
                        dag,
                        warning,
                        reason,
                        message,
                    } => exec_events.spawn_publish(
                        dag_reference(&dag, None),
                        warning,
                        reason,
                        message,
                    ),
                    ExecOutput::Pools(usages) => {
                        let started = std::time::Instant::now();
                        let n = usages.len();
                        for u in usages {
                            metrics.set_pool_slots(
                                &format!("{}/{}", u.namespace, u.name),
                                u.used.into(),
                                (u.slots - u.used).max(0).into(),
                                u.queued.into(),
                            );
                            let _ = status_tx.send(StatusUpdate::Pool(u));
                        }
                        // a Pool's status is derived in the executor's pass: each change
                        // handed to the status writer counts as one reconcile
                        let secs = started.elapsed().as_secs_f64() / n.max(1) as f64;
                        for _ in 0..n {
                            metrics.reconcile_observed(ControllerKind::Pool, secs, true);
                        }
                    }
                    ExecOutput::PoolsGone(pools) => {
                        for (ns, name) in pools {
                            metrics.remove_pool(&format!("{ns}/{name}"));
                        }
                    }
                    ExecOutput::GateHealth(ok) => gate_health.set_executor(ok),
                    ExecOutput::Tasks {
                        by_state,
                        transitions,
                        gate_refused,
                        gate_errors,
                    } => {
                        for (state, n) in by_state {
                            metrics.set_task_instances(state, n);
                        }
                        for to in transitions {
                            metrics.task_transition(to);
                        }
                        for scope in gate_refused {
                            metrics.gate_rejected(scope);
                        }
                        for scope in gate_errors {
                            metrics.gate_error(scope);
                        }
                    }
                }
            }
        });
    }
    tokio::spawn(run_writer(client.clone(), status_rx));

    {
        let events = events.clone();
        let status_tx = status_tx.clone();
        let metrics = metrics.clone();
        let health = health.clone();
        let exec_in = exec_in_tx.clone();
        let prune_client = client.clone();
        tokio::spawn(async move {
            while let Some(output) = out_rx.recv().await {
                match output {
                    Output::Status(key, s) => {
                        let _ = status_tx.send(StatusUpdate::Scheduling(key, s));
                    }
                    Output::Event {
                        dag,
                        warning,
                        reason,
                        message,
                    } => events.spawn_publish(dag_reference(&dag, None), warning, reason, message),
                    Output::StoreHealth(ok) => {
                        health.set_store_ok(ok);
                        let _ = status_tx.send(StatusUpdate::StoreHealth(ok));
                    }
                    Output::GateHealth(ok) => gate_health.set_engine(ok),
                    Output::RunsCreated {
                        run_type,
                        count,
                        delays_secs,
                    } => {
                        for _ in 0..count {
                            metrics.run_created(run_type);
                        }
                        for d in delays_secs {
                            metrics.observe_schedule_delay(d);
                        }
                    }
                    Output::Gate { scope, rejected } => {
                        if rejected {
                            metrics.gate_rejected(scope);
                        } else {
                            metrics.gate_error(scope);
                        }
                    }
                    Output::Backfill(key, report) => {
                        let _ = status_tx.send(StatusUpdate::Backfill(key, report));
                    }
                    Output::BackfillEvent {
                        backfill,
                        warning,
                        reason,
                        message,
                    } => events.spawn_publish(
                        backfill_reference(&backfill),
                        warning,
                        reason,
                        message,
                    ),
                    Output::TriggersHandled(dag, values) => {
                        tokio::spawn(dag_controller::prune_triggers(
                            prune_client.clone(),
                            dag,
                            values,
                        ));
                    }
                    Output::RunsAdmitted(runs) => {
                        let _ = exec_in.send(ExecInput::Admitted(runs));
                    }
                    Output::RunsCancelled(runs) => {
                        tracing::info!(count = runs.len(), "runs cancelled");
                        let _ = exec_in.send(ExecInput::Cancelled(runs));
                    }
                    Output::Load {
                        queue_depth,
                        active_runs,
                    } => {
                        metrics.set_queue_depth(queue_depth);
                        metrics.set_active_runs(active_runs as i64);
                    }
                }
            }
        });
    }

    let api: Api<DAG> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let backfills: Api<Backfill> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    tokio::spawn(backfill_controller::run(
        backfills,
        cmd_tx.clone(),
        metrics.clone(),
    ));
    let ctx = Arc::new(
        dag_controller::Context::new(cmd_tx, status_tx, events, default_tz)
            .with_metrics(metrics.clone())
            .with_pools(pools),
    );
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        "watching DAGs"
    );
    tokio::select! {
        _ = dag_controller::run(
            api,
            Some(dag_operator::k8s::api(client.clone(), args.namespace.as_deref())),
            ctx,
            dag_cache,
            shutdown_signal(),
        ) => {}
        // the controller drains in-flight reconciles on SIGTERM; one whose watch cannot even
        // list (e.g. 401/403) never finishes draining, so the process ends after a grace period
        _ = async {
            shutdown_signal().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(grace = ?SHUTDOWN_GRACE, "graceful shutdown took too long; exiting"),
    }
    // shutting down: give the Lease up so a standby takes over at once
    if let Some((done, handle)) = step_down {
        let _ = done.send(());
        let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
    }
    tracing::info!("shut down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_lease_ttl;

    #[test]
    fn a_lease_ttl_below_three_seconds_is_refused() {
        assert!(check_lease_ttl(2).is_err());
        assert!(check_lease_ttl(3).is_ok());
        assert!(check_lease_ttl(30).is_ok());
    }
}
