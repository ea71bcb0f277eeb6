//! Harness of the end-to-end tests: brings the local control plane up once per test run
//! (`e2e/plane up`, idempotent), installs the CRDs once, and gives each test its own namespace.
//! Everything is driven as a user would: kubectl, and the kube client where it reads better.

pub mod chart;
pub mod node;
pub mod operator;
pub mod scenario;
pub mod sentinel;

/// Fresh databases per test: the same helper the root package's store and engine tests use.
#[path = "../../tests/common/mod.rs"]
pub mod db;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::io::Write;

/// The running plane, as `e2e/plane env` describes it.
#[derive(Debug)]
pub struct Plane {
    pub repo: PathBuf,
    pub kubeconfig: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    /// PATH with the plane's binaries (kubectl, helm) first
    pub path: String,
    /// the plane's CA (it signs PostgreSQL's and Redis's TLS certificates)
    pub ca: PathBuf,
    /// a CA that signs nothing the plane serves
    pub other_ca: PathBuf,
    /// Redis's TLS port (`rediss://`), its certificate from `ca`
    pub redis_tls_url: String,
    /// the real node (containerd, a kubelet: real containers), when the plane has one
    pub real_node: Option<RealNode>,
}

/// The plane's real node, as `e2e/plane env` describes it (see [`node`]).
#[derive(Debug)]
pub struct RealNode {
    /// the Node's name
    pub name: String,
    /// its containerd's socket (`ctr --address`)
    pub containerd: PathBuf,
    /// PostgreSQL as the node's Pods reach it
    pub pod_database_url: String,
    /// Redis as the node's Pods reach it
    pub pod_redis_url: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The plane, started on first use (builds the binaries if the cache is empty).
pub fn plane() -> &'static Plane {
    static PLANE: OnceLock<Plane> = OnceLock::new();
    PLANE.get_or_init(|| {
        let repo = repo_root();
        let script = repo.join("e2e/plane");
        let status = Command::new(&script)
            .arg("up")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("e2e/plane runs");
        assert!(status.success(), "e2e/plane up failed: see its logs above");
        // evaluate the exports in a shell and print them one per line, whatever the quoting
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"eval "$("$0" env)" && printf '%s\n' "$KUBECONFIG" "$DATABASE_URL" "$REDIS_URL" "$PATH" "$DAGOP_PLANE_CA" "$DAGOP_PLANE_OTHER_CA" "$DAGOP_PLANE_REDIS_TLS_URL" "${DAGOP_PLANE_REAL_NODE:-}" "${DAGOP_PLANE_CONTAINERD:-}" "${DAGOP_PLANE_POD_DATABASE_URL:-}" "${DAGOP_PLANE_POD_REDIS_URL:-}""#)
            .arg(&script)
            .output()
            .expect("e2e/plane env runs");
        assert!(out.status.success(), "e2e/plane env failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().map(str::to_string);
        let mut next = |what: &str| lines.next().filter(|l| !l.is_empty()).unwrap_or_else(|| panic!("e2e/plane env gave no {what}"));
        let kubeconfig = PathBuf::from(next("KUBECONFIG"));
        let database_url = next("DATABASE_URL");
        let redis_url = next("REDIS_URL");
        let path = next("PATH");
        let ca = PathBuf::from(next("DAGOP_PLANE_CA"));
        let other_ca = PathBuf::from(next("DAGOP_PLANE_OTHER_CA"));
        let redis_tls_url = next("DAGOP_PLANE_REDIS_TLS_URL");
        let rest: Vec<String> = lines.collect();
        let real_node = match rest.as_slice() {
            [name, containerd, db, redis, ..] if !name.is_empty() => Some(RealNode {
                name: name.clone(),
                containerd: PathBuf::from(containerd),
                pod_database_url: db.clone(),
                pod_redis_url: redis.clone(),
            }),
            _ => None,
        };
        Plane {
            kubeconfig,
            database_url,
            redis_url,
            path,
            ca,
            other_ca,
            redis_tls_url,
            real_node,
            repo,
        }
    })
}

impl Plane {
    /// Runs kubectl against the plane, with optional standard input.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl starts");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
                .expect("kubectl reads stdin");
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kube client for the plane's admin.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig readable");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig valid");
        kube::Client::try_from(config).expect("client builds")
    }

    /// Installs crds/ (the output of `dag-operator crds`) with a plain client-side
    /// `kubectl apply`, once per test run, and waits until each is Established.
    pub fn install_crds(&self) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let dir = self.repo.join("crds");
            let dir = dir.to_string_lossy();
            self.kubectl_ok(&["apply", "-f", &dir], None);
            self.kubectl_ok(
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "-f",
                    &dir,
                ],
                None,
            );
        });
    }
}

/// A namespace of one test, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn new(prefix: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 1_000_000)
            .unwrap_or_default();
        let name = format!("e2e-{prefix}-{}-{stamp}-{n}", std::process::id());
        plane().kubectl_ok(&["create", "namespace", &name], None);
        TestNamespace { name }
    }

    /// kubectl in this namespace.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        plane().kubectl(&full, stdin)
    }

    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        plane().kubectl_ok(&full, stdin)
    }

    /// A ServiceAccount `name` of this namespace bound to a Role per rule (`kubectl create
    /// role` arguments, e.g. [`rights::READ`]); its token.
    pub fn account(&self, name: &str, rules: &[&[&str]]) -> String {
        self.kubectl_ok(&["create", "serviceaccount", name], None);
        for (i, rule) in rules.iter().enumerate() {
            let role = format!("{name}-{i}");
            let mut args = vec!["create", "role", role.as_str()];
            args.extend_from_slice(rule);
            self.kubectl_ok(&args, None);
            self.kubectl_ok(
                &[
                    "create",
                    "rolebinding",
                    &role,
                    &format!("--role={role}"),
                    &format!("--serviceaccount={}:{name}", self.name),
                ],
                None,
            );
        }
        self.kubectl_ok(&["create", "token", name], None)
            .trim()
            .to_string()
    }
}

/// The rights the tests give people, as `kubectl create role` arguments.
pub mod rights {
    /// read DAGs, their runs and tries
    pub const READ: &[&str] = &["--verb=get,list,watch", "--resource=dags.dagoperator.io"];
    /// read task logs too (issue 28)
    pub const LOGS: &[&str] = &["--verb=get", "--resource=pods/log"];
    /// trigger, cancel, re-run, mark; task actions
    pub const ACT: &[&str] = &["--verb=update", "--resource=dags.dagoperator.io/runs"];
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = plane().kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts `runs` hold exactly one run per tick of a schedule firing every `step_secs`
/// seconds, with no tick missing between the first and the last; returns the logical dates,
/// sorted.
pub fn assert_one_run_per_tick(
    runs: &[dag_operator::store::RunRow],
    step_secs: i64,
) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut dates: Vec<_> = runs.iter().map(|r| r.logical_date).collect();
    dates.sort();
    let unique: std::collections::BTreeSet<_> = dates.iter().collect();
    assert_eq!(unique.len(), dates.len(), "a tick has two runs: {dates:?}");
    for pair in dates.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            step_secs,
            "a tick missing (or an extra one) between {} and {}",
            pair[0],
            pair[1]
        );
    }
    dates
}

/// Quantile `q` of `values` (sorted in place), nearest rank; NaN when there are none.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Runs `e2e/plane <args>` (e.g. `stop redis`, `up`); panics if it fails.
pub fn plane_cmd(args: &[&str]) {
    let status = std::process::Command::new(plane().repo.join("e2e/plane"))
        .args(args)
        .status()
        .expect("e2e/plane runs");
    assert!(status.success(), "e2e/plane {args:?} failed");
}
