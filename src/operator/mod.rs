//! The operator, wired: [`Operator::start`] takes a configuration, a Kubernetes client, the
//! store and the gate, and starts everything in order —
//!
//! 1. the health and metrics endpoints (`/readyz` says why it is not ready yet);
//! 2. the schema, retried until PostgreSQL answers;
//! 3. leadership, when configured (a standby waits here, ready);
//! 4. the watches (Pods, Pools), the engine and the executor on the one gate;
//! 5. the routers ([`route`]) from engine and executor to status, events and metrics;
//! 6. the Backfill and DAG controllers, until shutdown; then the Lease is given up.
//!
//! `dag-operator run` parses flags into an [`OperatorConfig`] and calls it; tests can start
//! an operator in process the same way.

pub mod history;
mod leadership;
pub mod retention;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use self::leadership::LeaderSettings;
pub use self::retention::RetentionPolicy;
use self::route::{GateHealth, HandledTriggers, Routes, route_engine, route_executor};
use crate::api::tenancy::TenancyDefaults;
use crate::api::{Backfill, DAG, Pool};
use crate::controller::status::{StatusUpdate, run_writer};
use crate::controller::{
    Events, Throttle, backfill as backfill_controller, dag as dag_controller, namespace,
};
use crate::engine::{Command, Engine, EngineConfig, Output};
use crate::executor::watch::{spawn_pod_watch, spawn_pool_watch, until_ready};
use crate::executor::{
    Admitting, EndedTry, ExecInput, ExecOutput, Executor, ExecutorConfig, KubeLauncher,
};
use crate::gate::Gate;
use crate::http::auth::{KubeReviewer, MetricsReaders};
use crate::http::limit::{QueryBounds, QueryLimit};
use crate::http::{self, ApiState, DagDirectory, epoch::NamespaceEpochs};
use crate::k8s;
use crate::logs::{KubeLogs, LogKeeper};
use crate::report::Notice;
use crate::store::{PgStore, PoolSettings};
use crate::telemetry::{self, Health, Metrics, Role};

/// How long a graceful shutdown may take before the operator just stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the operator is told at start.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    pub engine: EngineConfig,
    pub executor: ExecutorConfig,
    /// the namespace watched (none: all)
    pub namespace: Option<String>,
    /// where `/metrics`, `/healthz` and `/readyz` listen (`host:port`; port 0: any)
    pub metrics_addr: String,
    /// `/metrics` only for callers whose token may `get` the non-resource URL `/metrics`
    pub metrics_auth: bool,
    /// leader election (none: this replica leads at once)
    pub leader: Option<LeaderSettings>,
    /// where the HTTP API listens (`host:port`; none: no API)
    pub ui_addr: Option<String>,
    /// the UI's session settings
    pub ui_security: http::UiSecurity,
    /// the end of each try's log kept in PostgreSQL, in bytes (0: none)
    pub log_tail_bytes: usize,
    /// which finished runs are deleted (default: none)
    pub retention: RetentionPolicy,
    /// what a namespace may take unless its annotations say otherwise
    pub tenancy: TenancyDefaults,
    /// the client the API's TokenReviews and SubjectAccessReviews go through (none: the
    /// operator's); its own, so reviews never queue before the Lease renewal (issue 28)
    pub review_client: Option<ReviewClient>,
    /// the API's own database pool and how many requests it serves at once
    pub api: ApiLimits,
}

/// The HTTP API's database pool and request bounds (issue 28, finding 2): readers never take
/// the connections the engine, the executor and the controllers work with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// the API's own pool (`--api-db-connections`, `--api-db-acquire-timeout`,
    /// `--api-statement-timeout`)
    pub pool: PoolSettings,
    /// requests served at once (`--api-max-requests`, `--api-max-requests-per-user`)
    pub requests: QueryBounds,
    /// the API reads through the scheduler's pool and runs on the scheduler's runtime, as
    /// before issue 28: only to measure what its own pool and thread change
    /// (`--api-beside-scheduler`, a hidden flag; docs/BENCHMARKS.md)
    pub beside_scheduler: bool,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            pool: PoolSettings {
                max_connections: 4,
                acquire_timeout: Duration::from_secs(2),
                statement_timeout: Some(Duration::from_secs(5)),
            },
            requests: QueryBounds::default(),
            beside_scheduler: false,
        }
    }
}

/// A Kubernetes client for the API's reviews.
#[derive(Clone)]
pub struct ReviewClient(pub kube::Client);

impl std::fmt::Debug for ReviewClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReviewClient")
    }
}

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot serve health and metrics: {0}")]
    Telemetry(std::io::Error),
    #[error("cannot serve the API: {0}")]
    Api(std::io::Error),
    #[error("leader election: {0}")]
    LeaderElection(String),
    #[error("the operator task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Tells the operator to shut down (when sent, or when every [`ShutdownTrigger`] is dropped).
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Completes once shutdown was asked for; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Completes once shutdown was asked for (also if that happened before the call).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // an error: the trigger is gone, which also means shut down
        let _asked = rx.wait_for(|down| *down).await;
    }
}

impl ShutdownTrigger {
    pub fn shut_down(&self) {
        self.0.send_replace(true);
    }
}

/// A started operator.
pub struct Running {
    /// where the health and metrics endpoints listen
    pub metrics_addr: SocketAddr,
    /// where the HTTP API listens (when configured)
    pub ui_addr: Option<SocketAddr>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    task: JoinHandle<Result<(), OperatorError>>,
}

impl Running {
    /// Waits until the operator has shut down.
    pub async fn wait(self) -> Result<(), OperatorError> {
        self.task.await?
    }
}

pub struct Operator;

impl Operator {
    /// Starts the operator (steps 1–6 above) and returns once its endpoints listen.
    pub async fn start<G: Gate + Clone>(
        config: OperatorConfig,
        client: kube::Client,
        store: PgStore,
        gate: G,
        shutdown: Shutdown,
    ) -> Result<Running, OperatorError> {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        // until the engine reports otherwise
        health.set_gate_ok(true);
        let leads_alone = config.leader.is_none();
        health.set_role(if leads_alone {
            Role::Leader
        } else {
            Role::Standby
        });
        metrics.set_leader(leads_alone);
        let stop = shutdown.clone();
        let review_client = config
            .review_client
            .as_ref()
            .map_or_else(|| client.clone(), |c| c.0.clone());
        // its own reviewer: the UI's may require an audience a scraper's token does not carry
        let metrics_access = config.metrics_auth.then(|| {
            let reviewer = Arc::new(KubeReviewer::new(review_client.clone()));
            Arc::new(MetricsReaders::new(reviewer)) as Arc<dyn telemetry::MetricsAccess>
        });
        let metrics_addr = telemetry::serve(
            &config.metrics_addr,
            metrics.clone(),
            health.clone(),
            metrics_access,
            async move { stop.wait().await },
        )
        .await
        .map_err(OperatorError::Telemetry)?;
        tracing::info!(addr = %metrics_addr, "health and metrics endpoints up");
        // every replica serves the API: reads need no leadership
        let ui_addr = match &config.ui_addr {
            Some(addr) => {
                let api_store = if config.api.beside_scheduler {
                    store.clone()
                } else {
                    store.sibling(&config.api.pool)
                };
                let state = ApiState {
                    store: api_store,
                    queries: Arc::new(QueryLimit::new(config.api.requests)),
                    dags: DagDirectory::watch(client.clone(), config.namespace.as_deref()),
                    reviewer: Arc::new(
                        KubeReviewer::new(review_client.clone())
                            .with_audience(config.ui_security.token_audience.clone()),
                    ),
                    kube: Some(client.clone()),
                    logs: Some(Arc::new(KubeLogs::new(client.clone()))),
                    // on the reviews' client: never queued before the Lease renewal
                    namespaces: Arc::new(NamespaceEpochs::new(review_client)),
                };
                let stop = shutdown.clone();
                let security = config.ui_security.clone();
                let until = async move { stop.wait().await };
                let bound = if config.api.beside_scheduler {
                    http::serve_configured(addr, state, security, http::HEADER_READ_TIMEOUT, until)
                        .await
                } else {
                    // a thread of its own
                    http::serve_ui(addr, state, security, until).await
                }
                .map_err(OperatorError::Api)?;
                tracing::info!(addr = %bound, "API up");
                Some(bound)
            }
            None => None,
        };
        let parts = Parts {
            config,
            client,
            store,
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown,
        };
        let task = tokio::spawn(parts.operate(gate));
        Ok(Running {
            metrics_addr,
            ui_addr,
            health,
            metrics,
            task,
        })
    }
}

/// What the operator's task works with.
struct Parts {
    config: OperatorConfig,
    client: kube::Client,
    store: PgStore,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
}

/// The channels between the parts.
struct Wires {
    commands: (mpsc::Sender<Command>, mpsc::Receiver<Command>),
    engine_out: (
        mpsc::UnboundedSender<Output>,
        mpsc::UnboundedReceiver<Output>,
    ),
    exec_out: (
        mpsc::UnboundedSender<ExecOutput>,
        mpsc::UnboundedReceiver<ExecOutput>,
    ),
    exec_in: (
        mpsc::UnboundedSender<ExecInput>,
        mpsc::UnboundedReceiver<ExecInput>,
    ),
    status: (
        mpsc::UnboundedSender<StatusUpdate>,
        mpsc::UnboundedReceiver<StatusUpdate>,
    ),
    notices: (
        mpsc::UnboundedSender<Notice>,
        mpsc::UnboundedReceiver<Notice>,
    ),
    triggers: (
        mpsc::UnboundedSender<HandledTriggers>,
        mpsc::UnboundedReceiver<HandledTriggers>,
    ),
    tries_ended: (
        mpsc::UnboundedSender<Vec<EndedTry>>,
        mpsc::UnboundedReceiver<Vec<EndedTry>>,
    ),
}

impl Wires {
    fn new() -> Self {
        Wires {
            commands: mpsc::channel(1024),
            engine_out: mpsc::unbounded_channel(),
            exec_out: mpsc::unbounded_channel(),
            exec_in: mpsc::unbounded_channel(),
            status: mpsc::unbounded_channel(),
            notices: mpsc::unbounded_channel(),
            triggers: mpsc::unbounded_channel(),
            tries_ended: mpsc::unbounded_channel(),
        }
    }
}

impl Parts {
    async fn operate<G: Gate + Clone>(self, gate: G) -> Result<(), OperatorError> {
        // 2. the schema; the operator stays up (not ready) until PostgreSQL answers
        if !self.migrate().await {
            return Ok(()); // shut down while waiting
        }
        // 3. a standby stays ready (store reachable) and takes over when the leader goes
        let leadership = match &self.config.leader {
            Some(settings) => {
                match leadership::lead(settings, &self.client, &self.shutdown).await? {
                    Some(l) => {
                        self.health.set_role(Role::Leader);
                        self.metrics.set_leader(true);
                        Some(l)
                    }
                    None => return Ok(()),
                }
            }
            None => None,
        };
        // 4.–6.
        self.lead(gate).await;
        if let Some(l) = leadership {
            l.step_down().await;
        }
        tracing::info!("shut down");
        Ok(())
    }

    /// Migrates the schema, retrying with backoff; `false` when shut down first.
    async fn migrate(&self) -> bool {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.store.migrate().await {
                Ok(()) => {
                    self.health.set_store_ok(true);
                    return true;
                }
                Err(e) => {
                    self.health.set_store_ok(false);
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot migrate the database yet");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.wait() => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Steps 4–6, as the leader, until shutdown.
    async fn lead<G: Gate + Clone>(self, gate: G) {
        let w = Wires::new();
        // the writers that can wait give way to the executor's Pod creates
        let admitting = Admitting::default();
        // 4. watches, engine and executor
        let caches = self.start_watches(&w.exec_in.0);
        let default_tz = self.start_engine(gate.clone(), w.commands.1, w.engine_out.0);
        self.start_executor(
            gate,
            &caches,
            default_tz,
            (w.exec_in.1, w.exec_out.0),
            admitting.clone(),
        );
        // 5. routers, and the consumers they feed
        let routes = Routes {
            status: w.status.0.clone(),
            notices: w.notices.0,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            gate: GateHealth::new(
                self.health.clone(),
                self.metrics.clone(),
                w.status.0.clone(),
            ),
            engine: w.commands.0.clone(),
            executor: w.exec_in.0,
            triggers: w.triggers.0,
            logs: w.tries_ended.0,
        };
        spawn_routers(routes, w.engine_out.1, w.exec_out.1);
        let events = self.start_consumers(
            w.status.1,
            w.notices.1,
            w.triggers.1,
            w.tries_ended.1,
            admitting,
        );
        // 6. controllers, once the namespaces' incarnations are recorded: an earlier
        //    incarnation's positions, trigger values and Backfill dates are never the
        //    scheduler's, and the engine hears of Backfills and DAGs in the same order as before
        let (tenancy, namespaces_config, recorded) =
            self.watch_namespaces(w.commands.0.clone(), &events);
        history::first_list(recorded).await;
        tokio::spawn(backfill_controller::run(
            k8s::api::<Backfill>(self.client.clone(), self.namespace()),
            w.commands.0.clone(),
            self.metrics.clone(),
        ));
        let ctx = Arc::new(
            dag_controller::Context::new(w.commands.0, w.status.0, events, default_tz)
                .with_metrics(self.metrics.clone())
                .with_pools(caches.pools)
                .with_tenancy(tenancy)
                .with_dags(caches.dags),
        );
        self.control_dags(ctx, caches.dag_cache, namespaces_config)
            .await;
    }

    /// The namespace watched (none: all).
    fn namespace(&self) -> Option<&str> {
        self.config.namespace.as_deref()
    }

    /// The watches of Pods and Pools (feeding the executor), and the DAG cache (filled by the
    /// DAG controller, read by the executor).
    fn start_watches(&self, exec_in: &mpsc::UnboundedSender<ExecInput>) -> Caches {
        let ns = self.namespace();
        spawn_pod_watch(k8s::api(self.client.clone(), ns), exec_in.clone());
        let pools = spawn_pool_watch(k8s::api(self.client.clone(), ns), exec_in.clone());
        let dag_cache = kube::runtime::reflector::store::Writer::<DAG>::default();
        let dags = dag_cache.as_reader();
        Caches {
            pools,
            dag_cache,
            dags,
        }
    }

    /// The engine, on `gate`; returns the zone of DAGs that name none.
    fn start_engine<G: Gate + Clone>(
        &self,
        gate: G,
        commands: mpsc::Receiver<Command>,
        out: mpsc::UnboundedSender<Output>,
    ) -> chrono_tz::Tz {
        let mut engine_cfg = self.config.engine.clone();
        engine_cfg.namespace = self.config.namespace.clone();
        let default_tz = engine_cfg.default_tz;
        let engine = Engine::with_gate(engine_cfg, self.store.clone(), gate, out);
        tokio::spawn(engine.run(commands));
        default_tz
    }

    /// The executor, on `gate`; it starts once the Pool and DAG watches have listed.
    fn start_executor<G: Gate + Clone>(
        &self,
        gate: G,
        caches: &Caches,
        default_tz: chrono_tz::Tz,
        (inputs, out): (
            mpsc::UnboundedReceiver<ExecInput>,
            mpsc::UnboundedSender<ExecOutput>,
        ),
        admitting: Admitting,
    ) {
        let mut exec_cfg = self.config.executor.clone();
        exec_cfg.namespace = self.config.namespace.clone();
        exec_cfg.default_tz = default_tz;
        let executor = Executor::new(
            exec_cfg,
            self.store.clone(),
            gate,
            KubeLauncher::new(self.client.clone()),
            Arc::new(caches.pools.clone()),
            out,
        )
        .with_current_specs(Arc::new(caches.dags.clone()))
        .with_admitting(admitting);
        let (pools, dags) = (caches.pools.clone(), caches.dags.clone());
        tokio::spawn(async move {
            // a run's Pods are judged once the watches have listed what exists
            until_ready(&pools).await;
            until_ready(&dags).await;
            executor.run(inputs).await;
        });
    }

    /// What the routers feed: the status writer, the event publisher, the trigger pruner,
    /// the log keeper; and the retention pass. Returns the event publisher.
    fn start_consumers(
        &self,
        status: mpsc::UnboundedReceiver<StatusUpdate>,
        notices: mpsc::UnboundedReceiver<Notice>,
        triggers: mpsc::UnboundedReceiver<HandledTriggers>,
        tries_ended: mpsc::UnboundedReceiver<Vec<EndedTry>>,
        admitting: Admitting,
    ) -> Events {
        let client = &self.client;
        tokio::spawn(run_writer(
            client.clone(),
            status,
            Some(self.metrics.clone()),
            admitting.clone(),
        ));
        let events = Events::new(client.clone());
        tokio::spawn(publish_notices(events.clone(), notices, admitting));
        tokio::spawn(prune_triggers(client.clone(), triggers));
        let keeper = LogKeeper::new(
            Arc::new(KubeLogs::new(client.clone())),
            self.store.clone(),
            self.config.log_tail_bytes,
        );
        tokio::spawn(keeper.run(tries_ended));
        tokio::spawn(retention::run(
            self.store.clone(),
            self.config.retention.clone(),
            self.shutdown.clone(),
        ));
        events
    }

    /// Tenancy: the namespaces' annotations (one namespace when only one is watched), told to
    /// the engine and kept for the DAG controller; what it sees goes to the history keeper too.
    /// Returns the tenancy, the watch's config and the keeper's "first list recorded".
    fn watch_namespaces(
        &self,
        commands: mpsc::Sender<Command>,
        events: &Events,
    ) -> (
        namespace::Tenancy,
        kube::runtime::watcher::Config,
        watch::Receiver<bool>,
    ) {
        let config = match self.namespace() {
            Some(name) => {
                kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"))
            }
            None => kube::runtime::watcher::Config::default(),
        };
        let (namespace_cache, namespace_writer) = kube::runtime::reflector::store();
        let (sightings, keeper, recorded) = history::channel();
        tokio::spawn(keeper.run(
            self.store.clone(),
            self.config.namespace.clone(),
            retention::PAUSE,
            self.shutdown.clone(),
        ));
        tokio::spawn(namespace::run(
            kube::Api::all(self.client.clone()),
            config.clone(),
            namespace_writer,
            commands,
            events.clone(),
            self.config.tenancy,
            sightings,
        ));
        let tenancy = namespace::Tenancy::with_namespaces(self.config.tenancy, namespace_cache);
        (tenancy, config, recorded)
    }

    /// Runs the DAG controller until shutdown (or the grace period after it).
    async fn control_dags(
        &self,
        ctx: Arc<dag_controller::Context>,
        dag_cache: kube::runtime::reflector::store::Writer<DAG>,
        namespaces_config: kube::runtime::watcher::Config,
    ) {
        let (client, ns) = (&self.client, self.namespace());
        tracing::info!(namespace = ns.unwrap_or("(all)"), "watching DAGs");
        let stop = self.shutdown.clone();
        tokio::select! {
            _ = dag_controller::run(
                k8s::api::<DAG>(client.clone(), ns),
                Some(k8s::api::<Pool>(client.clone(), ns)),
                Some((kube::Api::all(client.clone()), namespaces_config)),
                ctx,
                dag_cache,
                async move { stop.wait().await },
            ) => {}
            // the controller drains in-flight reconciles on shutdown; one whose watch cannot
            // even list (e.g. 401/403) never finishes draining, so it ends after a grace period
            _ = async {
                self.shutdown.wait().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!(grace = ?SHUTDOWN_GRACE, "graceful shutdown took too long; exiting"),
        }
    }
}

/// The watch caches the leader's parts share.
struct Caches {
    /// the Pools (the executor's slots, the DAG controller's check)
    pools: kube::runtime::reflector::Store<Pool>,
    /// the watched DAGs: filled by the DAG controller, read by the executor
    dag_cache: kube::runtime::reflector::store::Writer<DAG>,
    dags: kube::runtime::reflector::Store<DAG>,
}

/// Runs the two routers until their sources close.
fn spawn_routers(
    routes: Routes,
    mut engine_out: mpsc::UnboundedReceiver<Output>,
    mut exec_out: mpsc::UnboundedReceiver<ExecOutput>,
) {
    let exec_routes = routes.clone();
    tokio::spawn(async move {
        while let Some(output) = engine_out.recv().await {
            route_engine(output, &routes);
        }
    });
    tokio::spawn(async move {
        while let Some(output) = exec_out.recv().await {
            route_executor(output, &exec_routes).await;
        }
    });
}

/// Publishes each notice as a Kubernetes Event (in the background; failures are logged),
/// throttled per object and reason ([`Throttle`]).
async fn publish_notices(
    events: Events,
    mut notices: mpsc::UnboundedReceiver<Notice>,
    admitting: Admitting,
) {
    let mut throttle = Throttle::default();
    let mut seen: u64 = 0;
    while let Some(first) = notices.recv().await {
        // the executor's Pod creates go first; what arrives meanwhile goes out with this one
        let mut batch = vec![first];
        admitting.give_way(&mut notices, &mut batch).await;
        for notice in batch {
            let now = std::time::Instant::now();
            match throttle.admit(notice, now) {
                Some(notice) => events.spawn_notice(notice),
                None => tracing::debug!("event held back by the throttle"),
            }
            seen += 1;
            if seen % 1024 == 0 {
                throttle.prune(now);
            }
        }
    }
}

/// Removes handled trigger annotations from their DAGs.
async fn prune_triggers(
    client: kube::Client,
    mut handled: mpsc::UnboundedReceiver<HandledTriggers>,
) {
    while let Some(h) = handled.recv().await {
        tokio::spawn(dag_controller::prune_triggers(
            client.clone(),
            h.dag,
            h.values,
        ));
    }
}
