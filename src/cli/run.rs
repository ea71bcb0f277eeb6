//! `dag-operator run`: parses the flags into an [`OperatorConfig`], picks the gate (Redis, or
//! in process), turns SIGINT/SIGTERM into a shutdown, and starts the [`Operator`].

use std::time::Duration;

use dag_operator::api::tenancy::TenancyDefaults;
use dag_operator::engine::EngineConfig;
use dag_operator::executor::ExecutorConfig;
use dag_operator::gate::{MemoryGate, RedisGate};
use dag_operator::http::limit::QueryBounds;
use dag_operator::operator::{
    ApiLimits, LeaderSettings, Operator, OperatorConfig, RetentionPolicy, ReviewClient, Shutdown,
    ShutdownTrigger,
};
use dag_operator::schedule::parse_timezone;
use dag_operator::store::{PgStore, PoolSettings};
use dag_operator::telemetry;

use super::kube::kube_client;
use super::{CliError, LogFormat, RunArgs};

pub fn run(args: RunArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(operate(args))
}

/// Turns SIGINT or SIGTERM into a shutdown. Listening starts when `run` starts, so a signal
/// sent while the operator is still starting up is not missed.
fn shut_down_on_signal(trigger: ShutdownTrigger) {
    tokio::spawn(async move {
        os_signal().await;
        trigger.shut_down();
    });
}

/// Completes on SIGINT or SIGTERM.
async fn os_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                    if let Err(e) = ctrl_c.await {
                        tracing::warn!(error = %e, "cannot listen for SIGINT either");
                    }
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
        if let Err(e) = ctrl_c.await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
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

/// Which Lease this replica competes for, and under which identity.
fn leader_settings(args: &RunArgs) -> LeaderSettings {
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
    LeaderSettings {
        namespace,
        name: args.leader_election_name.clone(),
        identity: format!("{host}_{}", uuid::Uuid::new_v4().simple()),
        lease_duration: Duration::from_secs(args.leader_lease_duration),
    }
}

/// The operator's configuration from the flags.
fn config(args: &RunArgs) -> Result<OperatorConfig, CliError> {
    let default_tz = parse_timezone(&args.timezone).map_err(CliError::usage)?;
    let resync_interval = Duration::from_secs(args.resync_interval.max(1));
    Ok(OperatorConfig {
        engine: EngineConfig {
            default_tz,
            enable_catchup: args.enable_catchup,
            max_catchup_runs: args.max_catchup_runs,
            max_concurrent_runs: args.max_concurrent_runs,
            max_runs_per_namespace: tenancy(args).max_running_runs,
            schedule_interval: Duration::from_secs(args.schedule_interval.max(1)),
            priority_aging: Duration::from_secs(args.priority_aging),
            max_backfill_runs: args.max_backfill_runs,
            namespace: args.namespace.clone(),
            resync_interval,
        },
        executor: ExecutorConfig {
            max_running_tasks: args.max_running_tasks as usize,
            pod_retention: Duration::from_secs(args.pod_retention),
            failed_pod_retention: Duration::from_secs(
                args.failed_pod_retention.unwrap_or(args.pod_retention),
            ),
            create_concurrency: args.pod_create_concurrency.max(1),
            pending_grace: Duration::from_secs(args.pod_pending_timeout),
            resync_interval,
            namespace: args.namespace.clone(),
            ..ExecutorConfig::default()
        },
        namespace: args.namespace.clone(),
        metrics_addr: args.metrics_addr.clone(),
        metrics_auth: args.metrics_auth,
        ui_addr: Some(args.ui_addr.clone()).filter(|a| !a.trim().is_empty()),
        ui_security: dag_operator::http::UiSecurity {
            secure_cookies: args.ui_secure_cookies,
            token_audience: args
                .ui_token_audience
                .clone()
                .filter(|a| !a.trim().is_empty()),
            tls: match (&args.ui_tls_cert_file, &args.ui_tls_key_file) {
                (Some(cert), Some(key)) => Some(dag_operator::http::UiTls {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                }),
                _ => None,
            },
        },
        log_tail_bytes: args.log_tail_bytes,
        retention: RetentionPolicy {
            max_age: args.run_retention.map(Duration::from_secs),
            keep_per_dag: args.keep_runs_per_dag,
        },
        leader: args.leader_election.then(|| leader_settings(args)),
        tenancy: tenancy(args),
        review_client: None,
        api: api_limits(args),
    })
}

/// The API's own pool and request bounds from the flags.
fn api_limits(args: &RunArgs) -> ApiLimits {
    ApiLimits {
        pool: PoolSettings {
            max_connections: args.api_db_connections,
            acquire_timeout: Duration::from_secs(args.api_db_acquire_timeout.max(1)),
            statement_timeout: Some(Duration::from_secs(args.api_statement_timeout.max(1))),
        },
        requests: QueryBounds {
            overall: args.api_max_requests as usize,
            per_caller: args.api_max_requests_per_user as usize,
            ..QueryBounds::default()
        },
        beside_scheduler: args.api_beside_scheduler,
    }
}

/// What a namespace may take unless its annotations say otherwise.
fn tenancy(args: &RunArgs) -> TenancyDefaults {
    TenancyDefaults {
        max_running_runs: Some(args.max_runs_per_namespace).filter(|n| *n > 0),
        max_dag_priority: args.max_dag_priority,
    }
}

async fn operate(args: RunArgs) -> Result<(), CliError> {
    let (trigger, shutdown) = Shutdown::new();
    shut_down_on_signal(trigger);
    telemetry::init_tracing(args.log_format == LogFormat::Json);
    let mut config = config(&args)?;
    check_lease_ttl(args.lease_ttl)?;
    let url = args.database.url()?;
    let client = kube_client(&args.kube).await?;
    // the API's reviews on a client of their own: its own connections and request queue
    config.review_client = Some(ReviewClient(kube_client(&args.kube).await?));
    let store = PgStore::connect_lazy(&url).map_err(CliError::runtime)?;
    let lease_ttl = Duration::from_secs(args.lease_ttl);
    let running = match args.redis.target()? {
        Some(target) => {
            let tls = args.redis.tls()?;
            let prefix = &args.redis.redis_key_prefix;
            let gate = RedisGate::connect_lazy_to(&target, &tls, prefix, lease_ttl)
                .map_err(|e| CliError::usage(format!("invalid Redis settings: {e}")))?;
            tracing::info!(prefix = %args.redis.redis_key_prefix, "limits held in Redis");
            Operator::start(config, client, store, gate, shutdown).await
        }
        None => {
            tracing::info!("no Redis configured: limits held in process (run one replica)");
            let gate = MemoryGate::new(lease_ttl);
            Operator::start(config, client, store, gate, shutdown).await
        }
    };
    let running = running.map_err(|e| CliError::runtime(e.to_string()))?;
    running
        .wait()
        .await
        .map_err(|e| CliError::usage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::check_lease_ttl;

    #[test]
    fn the_api_flags_default_to_the_documented_limits() {
        use super::super::{Cli, Command};
        use clap::Parser;
        let cli = Cli::try_parse_from(["dag-operator", "run"]).expect("parse");
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(super::api_limits(&run), super::ApiLimits::default());
        let cli = Cli::try_parse_from([
            "dag-operator",
            "run",
            "--api-statement-timeout=30s",
            "--api-db-connections=2",
        ])
        .expect("parse");
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        let limits = super::api_limits(&run);
        assert_eq!(
            limits.pool.statement_timeout,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(limits.pool.max_connections, 2);
        assert!(Cli::try_parse_from(["dag-operator", "run", "--api-db-connections=0"]).is_err());
    }

    #[test]
    fn a_lease_ttl_below_three_seconds_is_refused() {
        assert!(check_lease_ttl(2).is_err());
        assert!(check_lease_ttl(3).is_ok());
        assert!(check_lease_ttl(30).is_ok());
    }
}
