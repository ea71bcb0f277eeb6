//! The operator binary under test: built once per run, started per test with its own
//! namespace and database, killed with SIGKILL on demand, restarted with the same arguments.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::plane;

/// target/debug/dag-operator (target/release/… with DAGOP_E2E_PROFILE=release, for scale
/// runs), built (or brought up to date) on first use. `DAGOP_E2E_OPERATOR_BIN` names another
/// binary instead (a scale run of an earlier build, for a before/after figure).
pub fn operator_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("DAGOP_E2E_OPERATOR_BIN") {
            return PathBuf::from(bin);
        }
        let repo = &plane().repo;
        let release = std::env::var("DAGOP_E2E_PROFILE").is_ok_and(|p| p == "release");
        let mut args = vec![
            "build",
            "--quiet",
            "-p",
            "dag-operator",
            "--bin",
            "dag-operator",
        ];
        if release {
            args.push("--release");
        }
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(&args)
            .current_dir(repo)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the operator failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target"));
        target
            .join(if release { "release" } else { "debug" })
            .join("dag-operator")
    })
}

/// A free loopback port (bound and released; the operator takes it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Operator {
    child: Option<Child>,
    args: Vec<String>,
    pub metrics_port: u16,
    /// where its HTTP API listens
    pub ui_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `dag-operator run` watching `namespace`, storing into `database_url`.
    pub fn start(namespace: &str, database_url: &str, extra: &[&str]) -> Self {
        Self::launch(Some(namespace), namespace, database_url, extra)
    }

    /// Starts `dag-operator run` watching every namespace (`label` names its log and its
    /// Redis key prefix). Only for a test binary of its own: it schedules every DAG it sees.
    pub fn start_all_namespaces(label: &str, database_url: &str, extra: &[&str]) -> Self {
        Self::launch(None, label, database_url, extra)
    }

    fn launch(watched: Option<&str>, namespace: &str, database_url: &str, extra: &[&str]) -> Self {
        let metrics_port = free_port();
        let ui_port = free_port();
        let mut args: Vec<String> = [
            "run",
            "--database-url",
            database_url,
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--ui-addr",
            // DAGOP_E2E_NO_UI=1: without the API (to measure what it costs)
            &if std::env::var_os("DAGOP_E2E_NO_UI").is_some() {
                String::new()
            } else {
                format!("127.0.0.1:{ui_port}")
            },
            "--schedule-interval",
            "1s",
            "--leader-election=false",
            // the plane's REDIS_URL is inherited: keep each test's limits apart
            "--redis-key-prefix",
            &format!("dagop-{namespace}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(ns) = watched {
            args.extend(["--namespace".to_string(), ns.to_string()]);
        }
        // a test that elects a leader says so itself
        if extra.iter().any(|a| a.starts_with("--leader-election")) {
            args.retain(|a| a != "--leader-election=false");
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("dagop-e2e-{namespace}-op{n}.log"));
        let mut op = Operator {
            child: None,
            args,
            metrics_port,
            ui_port,
            log,
        };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(operator_binary())
            .args(&self.args)
            .env("KUBECONFIG", &plane().kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("operator starts");
        self.child = Some(child);
    }

    /// SIGKILL, as `kill -9` does, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM, as Kubernetes does to stop a Pod (the process is reaped by [`Self::alive`]).
    pub fn terminate(&mut self) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// GET a path of the metrics server: (status code, body), or None if it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path, None).await
    }

    /// GET a path of the metrics server with `Authorization: Bearer <token>` when given.
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        http_get(self.metrics_port, path, token).await
    }

    /// `GET path` of its HTTP API with `Authorization: Bearer <token>` when given.
    pub async fn api(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        http_get(self.ui_port, path, token).await
    }

    /// `POST path` of its HTTP API with a JSON body.
    pub async fn api_post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Option<(u16, String)> {
        http_request(self.ui_port, "POST", path, token, Some(body)).await
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU time (user + system) the process used so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // fields after the command name (which may hold spaces) start after the last ')'
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // clock ticks: 100 per second on Linux
        Some((utime + stime) / 100.0)
    }

    /// Resident memory of the process in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// The operator's log so far (for assertion messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A plain HTTP/1.1 `GET` on 127.0.0.1:`port` (Connection: close): status and body.
/// `/metrics` of the operator whose metrics server listens on `port`.
pub async fn http_metrics(port: u16) -> Option<String> {
    http_get(port, "/metrics", None).await.map(|(_, body)| body)
}

async fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    http_request(port, "GET", path, token, None).await
}

async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let content = body
        .map(|b| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}{content}Connection: close\r\n\r\n{}",
        body.unwrap_or_default()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Some((
        code,
        if chunked {
            dechunk(body)?
        } else {
            body.to_string()
        },
    ))
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}
