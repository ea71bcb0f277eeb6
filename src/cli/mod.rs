//! The command line (SPEC §8). One file per subcommand; this file holds the clap model and
//! the dispatch. Exit codes: 0 success, 1 runtime failure, 2 usage error.

mod act;
mod backfill;
mod connection;
pub use self::connection::{DatabaseArgs, RedisArgs};
mod crds;
mod kube;
mod migrate;
mod run;
mod runs;
mod runs_api;
mod schedule;
mod server;
mod trigger;
mod ui;

use std::fmt;

use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use dag_operator::schedule::parse_duration;

/// A failure the CLI reports in one line on stderr, with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl fmt::Display) -> Self {
        CliError {
            code: 2,
            message: message.to_string(),
        }
    }

    pub fn runtime(message: impl fmt::Display) -> Self {
        CliError {
            code: 1,
            message: message.to_string(),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        // `{:#}` puts the whole cause chain on one line
        CliError::runtime(format!("{e:#}"))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "dag-operator",
    version,
    about = "A Kubernetes operator that schedules workflow DAGs",
    long_about = "A Kubernetes operator that schedules workflow DAGs: cron schedules in IANA time \
                  zones with Vixie DST rules, a priority queue with aging, concurrency limits in \
                  Redis, runs recorded in PostgreSQL and every task run as a Pod."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator (controllers, scheduler and executor).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (the source of crds/ and the chart's CRDs).
    Crds(crds::CrdsArgs),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Evaluate schedules without a cluster.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Trigger a manual run of a DAG by setting its trigger annotations.
    Trigger(TriggerArgs),
    /// Create a Backfill of a DAG over a past range, optionally following it to the end.
    Backfill(BackfillArgs),
    /// List runs: through the operator's API when --server (DAGOP_SERVER) is set, else from
    /// PostgreSQL.
    Runs(RunsArgs),
    /// Cancel a running run through the operator's API (its Pods deleted, its slots freed).
    Cancel(act::ActArgs),
    /// Re-run a finished run's failed, upstream-failed and cancelled tasks in place.
    Rerun(act::ActArgs),
    /// Mark a run success or failed — or, with --task, one task (and, with --downstream or
    /// --upstream, its relatives), like Airflow's Mark.
    Mark(act::MarkArgs),
    /// Run one task (and, with --downstream or --upstream, its relatives) again in the same
    /// run, like Airflow's Clear; --dry-run prints what would change.
    Clear(act::ClearArgs),
    /// Print a task try's log: from its Pod while it exists, else the end the operator kept.
    Logs(act::LogsArgs),
    /// Open the UI in a browser, logged in as the kubeconfig's user, through a port-forward to
    /// the chart's UI Service.
    Ui(ui::UiArgs),
    /// Print a shell completion script: `source <(dag-operator completion bash)`.
    Completion(CompletionArgs),
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Parses a duration flag such as `10s`, `5m` or `1h30m`.
fn duration_secs(text: &str) -> Result<u64, String> {
    parse_duration(text)
        .map(|s| s.unsigned_abs())
        .ok_or_else(|| format!("invalid duration {text:?}: expected e.g. 10s, 5m or 1h30m"))
}

fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("invalid RFC3339 time {text:?}: {e}"))
}

#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// Path to a kubeconfig (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use (default: its current one), as kubectl's --context.
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short = 'n', env = "DAGOP_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Default IANA time zone of DAGs without spec.timezone.
    #[arg(long, env = "DAGOP_TIMEZONE", default_value = "UTC")]
    pub timezone: String,
    /// Default of spec.catchup: create runs for ticks missed while down.
    #[arg(long, env = "DAGOP_ENABLE_CATCHUP", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub enable_catchup: bool,
    /// Default of spec.maxCatchupRuns.
    #[arg(long, env = "DAGOP_MAX_CATCHUP_RUNS", default_value_t = 50)]
    pub max_catchup_runs: u32,
    /// Limit on running runs across all DAGs.
    #[arg(long, env = "DAGOP_MAX_CONCURRENT_RUNS", default_value_t = 100)]
    pub max_concurrent_runs: u32,
    /// Default cap on running runs per namespace (0: none); a namespace's annotation
    /// dagoperator.io/max-running-runs overrides it.
    #[arg(long, env = "DAGOP_MAX_RUNS_PER_NAMESPACE", default_value_t = 0)]
    pub max_runs_per_namespace: u32,
    /// Highest spec.priority a DAG is queued at (higher is lowered to it, with a condition);
    /// a namespace's annotation dagoperator.io/max-dag-priority grants more (or less).
    #[arg(
        long,
        env = "DAGOP_MAX_DAG_PRIORITY",
        default_value_t = 1000,
        allow_negative_numbers = true
    )]
    pub max_dag_priority: i32,
    /// Limit on running task instances across all DAGs.
    #[arg(long, env = "DAGOP_MAX_RUNNING_TASKS", default_value_t = 128)]
    pub max_running_tasks: u32,
    /// Longest gap between scheduler passes.
    #[arg(long, env = "DAGOP_SCHEDULE_INTERVAL", default_value = "10s", value_parser = duration_secs)]
    pub schedule_interval: u64,
    /// A queued run moves up one priority class per period of waiting.
    #[arg(long, env = "DAGOP_PRIORITY_AGING", default_value = "5m", value_parser = duration_secs)]
    pub priority_aging: u64,
    /// Lease TTL of the gate sessions that keep slots: a process sends a heartbeat every third
    /// of it, and its slots come back one TTL after it stops.
    #[arg(long, env = "DAGOP_LEASE_TTL", default_value = "30s", value_parser = duration_secs)]
    pub lease_ttl: u64,
    /// Elect one active replica through a Lease.
    #[arg(long, env = "DAGOP_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else --namespace,
    /// else "default").
    #[arg(long, env = "DAGOP_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease; replicas sharing it elect one leader.
    #[arg(
        long,
        env = "DAGOP_LEADER_ELECTION_NAME",
        default_value = "dag-operator"
    )]
    pub leader_election_name: String,
    /// How long a leader's Lease lasts without renewal: a standby takes over within it after
    /// the leader dies. The leader renews every duration/7 and steps down (exits) when it
    /// could not renew for 2/3 of it.
    #[arg(long, env = "DAGOP_LEADER_LEASE_DURATION", default_value = "15s", value_parser = duration_secs)]
    pub leader_lease_duration: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "DAGOP_METRICS_ADDR", default_value = ":8080")]
    pub metrics_addr: String,
    /// Serve /metrics only to callers with `Authorization: Bearer <token>` whose token the API
    /// server accepts (TokenReview) and who may `get` the non-resource URL /metrics
    /// (SubjectAccessReview); 401 / 403 otherwise. /healthz and /readyz stay open.
    #[arg(long, env = "DAGOP_METRICS_AUTH", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub metrics_auth: bool,
    /// Address of the HTTP API (`/api/v1/...`), authenticated and authorized by the API
    /// server; empty: no API.
    #[arg(long, env = "DAGOP_UI_ADDR", default_value = ":8081")]
    pub ui_addr: String,
    /// Mark the UI's session cookie `Secure` on every login, not only when the request came
    /// over HTTPS (`X-Forwarded-Proto: https`): set it when the UI is reached over HTTPS only.
    #[arg(long, env = "DAGOP_UI_SECURE_COOKIES", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub ui_secure_cookies: bool,
    /// Accept on the API and UI only tokens minted for this audience
    /// (`kubectl create token <sa> --audience <aud>`): a token for the API server itself is
    /// refused, so a leaked UI token cannot be used against the cluster. Empty: any token.
    #[arg(long, env = "DAGOP_UI_TOKEN_AUDIENCE")]
    pub ui_token_audience: Option<String>,
    /// Serve the UI and API over HTTPS only, with this PEM certificate chain (leaf first);
    /// needs --ui-tls-key-file. Session cookies are then always `Secure`.
    #[arg(long, env = "DAGOP_UI_TLS_CERT_FILE", requires = "ui_tls_key_file")]
    pub ui_tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of --ui-tls-cert-file.
    #[arg(long, env = "DAGOP_UI_TLS_KEY_FILE", requires = "ui_tls_cert_file")]
    pub ui_tls_key_file: Option<std::path::PathBuf>,
    /// How long finished task Pods are kept.
    #[arg(long, env = "DAGOP_POD_RETENTION", default_value = "1h", value_parser = duration_secs)]
    pub pod_retention: u64,
    /// How long the Pods of failed tries are kept (default: --pod-retention); longer keeps
    /// them for `kubectl logs` and `kubectl describe`.
    #[arg(long, env = "DAGOP_FAILED_POD_RETENTION", value_parser = duration_secs)]
    pub failed_pod_retention: Option<u64>,
    /// How long a task's Pod may stay Pending on a problem that does not go away by itself
    /// (an image that cannot be pulled, a container that cannot be created, no node to
    /// schedule it on) before its try fails with the kubelet's or the scheduler's reason.
    #[arg(long, env = "DAGOP_POD_PENDING_TIMEOUT", default_value = "5m", value_parser = duration_secs)]
    pub pod_pending_timeout: u64,
    /// Finished runs that ended longer ago than this are deleted (with their tries, logs and
    /// actions), e.g. 30d; default: kept for ever.
    #[arg(long, env = "DAGOP_RUN_RETENTION", value_parser = duration_secs)]
    pub run_retention: Option<u64>,
    /// Of each DAG's runs, only this many newest are kept (running ones always are);
    /// default: all.
    #[arg(long, env = "DAGOP_KEEP_RUNS_PER_DAG")]
    pub keep_runs_per_dag: Option<u32>,
    /// The end of each task try's log kept in PostgreSQL when the try ends, in bytes (read by
    /// the API and UI once the Pod is gone); 0: none kept.
    #[arg(long, env = "DAGOP_LOG_TAIL_BYTES", default_value_t = 65536)]
    pub log_tail_bytes: usize,
    /// Connections in the API's and UI's own PostgreSQL pool (apart from the scheduler's 5, so
    /// readers never delay scheduling).
    #[arg(long, env = "DAGOP_API_DB_CONNECTIONS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub api_db_connections: u32,
    /// How long an API request waits for one of those connections before it is answered 503.
    #[arg(long, env = "DAGOP_API_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = duration_secs)]
    pub api_db_acquire_timeout: u64,
    /// PostgreSQL cancels any statement of the API's running longer (`statement_timeout`);
    /// the request is answered 504.
    #[arg(long, env = "DAGOP_API_STATEMENT_TIMEOUT", default_value = "5s", value_parser = duration_secs)]
    pub api_statement_timeout: u64,
    /// API and UI requests served at once, all users together; one more waits up to a second
    /// for a place, then is answered 429 with `Retry-After`.
    #[arg(long, env = "DAGOP_API_MAX_REQUESTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub api_max_requests: u32,
    /// API and UI requests served at once for one user (by the name the API server gives).
    #[arg(long, env = "DAGOP_API_MAX_REQUESTS_PER_USER", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub api_max_requests_per_user: u32,
    /// The API reads through the scheduler's pool and runs on the scheduler's threads, as
    /// before it had its own: only to measure the difference (docs/BENCHMARKS.md).
    #[arg(long, hide = true, default_value_t = false)]
    pub api_beside_scheduler: bool,
    /// Task Pods created (or deleted) at once: requests in flight to the API server.
    #[arg(long, env = "DAGOP_POD_CREATE_CONCURRENCY", default_value_t = 64)]
    pub pod_create_concurrency: usize,
    /// How often the scheduler and the executor read every running run again from
    /// PostgreSQL (they are told of each change; this catches anything missed).
    #[arg(long, env = "DAGOP_RESYNC_INTERVAL", default_value = "5m", value_parser = duration_secs)]
    pub resync_interval: u64,
    /// A Backfill planning more runs than this is Invalid.
    #[arg(long, env = "DAGOP_MAX_BACKFILL_RUNS", default_value_t = 1_000_000)]
    pub max_backfill_runs: u64,
    /// Log format.
    #[arg(long, env = "DAGOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug)]
pub struct TriggerArgs {
    /// The DAG to trigger.
    pub name: String,
    /// Namespace of the DAG (default: the kubeconfig's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// JSON object merged over the DAG's spec.params for this run.
    #[arg(long)]
    pub params: Option<String>,
    /// Logical date of the run (default: when the operator handles the trigger).
    #[arg(long, value_parser = rfc3339)]
    pub logical_date: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReprocessArg {
    None,
    Failed,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    OldestFirst,
    NewestFirst,
}

#[derive(Args, Debug)]
pub struct BackfillArgs {
    /// The DAG to backfill (or --backfill-dag-id).
    #[arg(required_unless_present = "dag_id")]
    pub name: Option<String>,
    /// The DAG to backfill (the Go prototype's flag name).
    #[arg(long = "backfill-dag-id", conflicts_with = "name")]
    pub dag_id: Option<String>,
    /// Namespace of the DAG (default: the kubeconfig's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// First instant of the range, inclusive (RFC3339).
    #[arg(long, alias = "backfill-start", value_parser = rfc3339)]
    pub start: DateTime<Utc>,
    /// End of the range, exclusive (RFC3339).
    #[arg(long, alias = "backfill-end", value_parser = rfc3339)]
    pub end: DateTime<Utc>,
    /// Most runs of this backfill running at once.
    #[arg(long, alias = "backfill-concurrency", default_value_t = 5)]
    pub concurrency: u32,
    /// Plan and report only; create nothing.
    #[arg(long, alias = "backfill-dry-run")]
    pub dry_run: bool,
    /// What to do with dates that already have a run.
    #[arg(long, value_enum, default_value_t = ReprocessArg::None)]
    pub reprocess: ReprocessArg,
    /// Order of admission.
    #[arg(long, value_enum, default_value_t = OrderArg::OldestFirst)]
    pub order: OrderArg,
    /// Follow the backfill with a progress bar until it ends; exit 1 if it failed.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    /// the table with more columns
    Wide,
    Json,
    Yaml,
    /// `run/<id>`, one per line
    Name,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    /// Only runs of this DAG.
    pub name: Option<String>,
    /// Only runs in this namespace (default: through the API, the kubeconfig context's; from
    /// PostgreSQL, every namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only runs in this state (running, success, failed, cancelled).
    #[arg(long)]
    pub state: Option<String>,
    /// Most runs to show, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// The operator's API and the caller's credentials: when --server (DAGOP_SERVER) is set,
    /// runs are read through it and the database flags are not used.
    #[command(flatten)]
    pub server: server::ServerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The name this binary was run as (`dag-operator`, or `kubectl-dag` as a kubectl plugin).
fn invoked_as() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "dag-operator".to_string())
}

/// Runs a parsed command.
pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Crds(args) => crds::run(&args),
        Command::Schedule(cmd) => schedule::run(&cmd),
        Command::Run(args) => run::run(*args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Trigger(args) => trigger::run(args),
        Command::Backfill(args) => backfill::run(args),
        Command::Runs(args) => runs::run(&args),
        Command::Cancel(args) => act::act(&args, "cancel"),
        Command::Rerun(args) => act::act(&args, "rerun"),
        Command::Mark(args) => act::mark(&args),
        Command::Clear(args) => act::clear(&args),
        Command::Logs(args) => act::logs(&args),
        Command::Ui(args) => ui::run(&args),
        Command::Completion(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let name = invoked_as();
            clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_model_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} --{id} has no help");
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no help",
                    sub.get_name()
                );
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "dag-operator");
    }

    #[test]
    fn run_flags_have_spec_defaults_and_env_names() {
        let cli = Cli::try_parse_from(["dag-operator", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert!(run.enable_catchup && run.leader_election);
        assert_eq!(
            (
                run.max_catchup_runs,
                run.max_concurrent_runs,
                run.max_running_tasks
            ),
            (50, 100, 128)
        );
        assert_eq!(
            (run.schedule_interval, run.priority_aging, run.lease_ttl),
            (10, 300, 30)
        );
        assert_eq!(run.pod_retention, 3600);
        assert_eq!(
            (run.failed_pod_retention, run.log_tail_bytes),
            (None, 65536)
        );
        assert_eq!(run.metrics_addr, ":8080");
        assert!(!run.metrics_auth);
        assert_eq!(run.ui_addr, ":8081");
        assert!(!run.ui_secure_cookies);
        let cmd = Cli::command();
        let run_cmd = cmd.find_subcommand("run").unwrap();
        let env_of = |id: &str| {
            run_cmd
                .get_arguments()
                .find(|a| a.get_id().as_str() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env_of("database_url").as_deref(), Some("DATABASE_URL"));
        assert_eq!(env_of("db_host").as_deref(), Some("DB_HOST"));
        assert_eq!(env_of("redis_password").as_deref(), Some("REDIS_PASSWORD"));
        assert_eq!(env_of("kubeconfig").as_deref(), Some("KUBECONFIG"));
        assert_eq!(
            env_of("max_running_tasks").as_deref(),
            Some("DAGOP_MAX_RUNNING_TASKS")
        );
        assert_eq!(env_of("lease_ttl").as_deref(), Some("DAGOP_LEASE_TTL"));
    }

    #[test]
    fn backfill_accepts_the_prototype_flag_names() {
        let cli = Cli::try_parse_from([
            "dag-operator",
            "backfill",
            "--backfill-dag-id",
            "etl",
            "--backfill-start",
            "2024-01-01T00:00:00Z",
            "--backfill-end",
            "2024-02-01T00:00:00Z",
            "--backfill-concurrency",
            "3",
            "--backfill-dry-run",
        ])
        .unwrap();
        let Command::Backfill(b) = cli.command else {
            panic!()
        };
        assert_eq!(b.dag_id.as_deref(), Some("etl"));
        assert_eq!(b.concurrency, 3);
        assert!(b.dry_run);
        let missing = Cli::try_parse_from([
            "dag-operator",
            "backfill",
            "--start",
            "2024-01-01T00:00:00Z",
            "--end",
            "2024-01-02T00:00:00Z",
        ]);
        assert!(missing.is_err());
    }

    #[test]
    fn boolean_flags_take_false() {
        let cli = Cli::try_parse_from([
            "dag-operator",
            "run",
            "--enable-catchup=false",
            "--leader-election",
            "false",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert!(!run.enable_catchup && !run.leader_election);
    }

    #[test]
    fn the_ui_secure_cookies_flag() {
        let cli = Cli::try_parse_from(["dag-operator", "run", "--ui-secure-cookies"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert!(run.ui_secure_cookies);
        assert_eq!(run.ui_token_audience, None);
        let cli =
            Cli::try_parse_from(["dag-operator", "run", "--ui-token-audience", "dagop"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert_eq!(run.ui_token_audience.as_deref(), Some("dagop"));
        assert!(
            Cli::try_parse_from(["dag-operator", "run", "--ui-tls-cert-file", "c.pem"]).is_err(),
            "a certificate without its key"
        );
    }
}
