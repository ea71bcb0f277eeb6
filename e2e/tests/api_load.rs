//! Heavy API readers beside a ticking DAG (issue 28, finding 2): a benchmark, not part of the
//! suite. Run it by name (after `eval "$(e2e/plane env)"`):
//! `cargo test -p dag-operator-e2e --test api_load -- --ignored --nocapture`.
//! It prints its figures for docs/BENCHMARKS.md and asserts only that the work was done,
//! never how fast.
//!
//! One operator (debug build, the plane's PostgreSQL), a DAG ticking every second and 200
//! suspended DAGs with 500 finished runs of 4 tries each. The schedule delay of the ticking DAG
//! (tick → run admitted: a run's `created_at`, written in the admission's transaction, minus
//! its logical date) is measured over a quiet window, then over a window with 32 readers
//! (8 service accounts, 4 readers each) looping on `…/runs?limit=500` and `GET /api/v1/dags`;
//! then again with a second operator whose API shares the scheduler's pool and threads
//! (`--api-beside-scheduler`, the code before issue 28 in that respect) for contrast.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dag_operator_e2e::db::TestDb;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::{TestNamespace, eventually, plane, quantile};

const HISTORY_DAGS: usize = 200;
const RUNS_PER_DAG: i32 = 500;
const READERS: usize = 32;
const USERS: usize = 8;
const WINDOW: Duration = Duration::from_secs(60);

/// What the readers were answered: (200, 429, 503, 504, other).
#[derive(Default)]
struct Answers {
    ok: AtomicU64,
    busy: AtomicU64,
    unavailable: AtomicU64,
    timeout: AtomicU64,
    other: AtomicU64,
}

impl Answers {
    fn count(&self, code: Option<u16>) {
        let slot = match code {
            Some(200) => &self.ok,
            Some(429) => &self.busy,
            Some(503) => &self.unavailable,
            Some(504) => &self.timeout,
            _ => &self.other,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "answers 200: {}, 429: {}, 503: {}, 504: {}, other: {}",
            n(&self.ok),
            n(&self.busy),
            n(&self.unavailable),
            n(&self.timeout),
            n(&self.other)
        )
    }
}

/// The status code of `GET path` on `127.0.0.1:port` (none: no answer within 30 s).
async fn status_of(port: u16, path: &str, token: Option<&str>) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let head = String::from_utf8_lossy(&response[..response.len().min(64)]).to_string();
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .ok()
        .flatten()
}

/// The ticking DAG's schedule delays (seconds) of the ticks in `[from, to)`.
async fn delays(db: &sqlx::PgPool, ns: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<f64> {
    sqlx::query_scalar::<_, f64>(
        "SELECT extract(epoch FROM created_at - logical_date)::float8 FROM dag_runs \
         WHERE namespace = $1 AND dag_name = 'tick' AND logical_date >= $2 AND logical_date < $3",
    )
    .bind(ns)
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
    .expect("delays")
}

fn summary(mut d: Vec<f64>) -> String {
    if d.is_empty() {
        return "no runs".into();
    }
    let n = d.len();
    let max = d.iter().cloned().fold(0.0, f64::max);
    format!(
        "{n} ticks; p50 {:.3} s, p99 {:.3} s, max {max:.3} s",
        quantile(&mut d, 0.5),
        quantile(&mut d, 0.99)
    )
}

/// A quiet window, then a window with the readers; prints both.
async fn measure(op: &Operator, db: &sqlx::PgPool, ns: &str, tokens: &[String], label: &str) {
    eventually(
        Duration::from_secs(120),
        "the ticking DAG scheduling",
        || async {
            let n = delays(
                db,
                ns,
                Utc::now() - chrono::Duration::seconds(10),
                Utc::now(),
            )
            .await;
            (n.len() >= 5).then_some(())
        },
    )
    .await;
    let from = Utc::now();
    tokio::time::sleep(WINDOW).await;
    let quiet = delays(db, ns, from, Utc::now()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Answers::default());
    let mut readers = Vec::new();
    for i in 0..READERS {
        let (stop, answers) = (stop.clone(), answers.clone());
        let token = tokens[i % USERS].clone();
        let (port, ns) = (op.ui_port, ns.to_string());
        readers.push(tokio::spawn(async move {
            let mut j = i;
            while !stop.load(Ordering::Relaxed) {
                let path = if j % 2 == 0 {
                    format!(
                        "/api/v1/namespaces/{ns}/dags/h{:03}/runs?limit=500",
                        j % HISTORY_DAGS
                    )
                } else {
                    "/api/v1/dags".to_string()
                };
                let answer = status_of(port, &path, Some(&token)).await;
                answers.count(answer);
                j += 1;
            }
        }));
    }
    // readiness while loaded
    let ready_fails = Arc::new(AtomicU64::new(0));
    let ready_polls = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, fails, polls) = (stop.clone(), ready_fails.clone(), ready_polls.clone());
        let port = op.metrics_port;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let code = status_of(port, "/readyz", None).await;
                polls.fetch_add(1, Ordering::Relaxed);
                if code != Some(200) {
                    fails.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await; // the readers under way
    let from = Utc::now();
    tokio::time::sleep(WINDOW).await;
    let loaded = delays(db, ns, from, Utc::now()).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let _ = probe.await;
    println!(
        "api_load [{label}]: without readers {}; with {READERS} readers ({USERS} users) {}; {}; /readyz failed {} of {} polls",
        summary(quiet),
        summary(loaded),
        answers.line(),
        ready_fails.load(Ordering::Relaxed),
        ready_polls.load(Ordering::Relaxed),
    );
    assert!(
        answers.ok.load(Ordering::Relaxed) > 0,
        "the readers were answered"
    );
}

#[tokio::test]
#[ignore = "benchmark: see the module docs"]
async fn heavy_readers_beside_an_every_second_dag() {
    plane().install_crds();
    let ns = TestNamespace::new("api-load");
    let db = TestDb::create("e2e_api_load").await;
    let store = db.migrated().await;
    let pool = store.pool().clone();
    // the history: 200 suspended DAGs, 500 finished runs each, 4 tries a run
    let mut yaml = String::new();
    for i in 0..HISTORY_DAGS {
        yaml.push_str(&format!(
            "---\napiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: h{i:03}}}\nspec:\n  schedule: '0 0 1 1 *'\n  suspend: true\n  tasks:\n  - {{name: t1, container: {{image: busybox}}}}\n"
        ));
    }
    yaml.push_str("---\napiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {name: tick}\nspec:\n  schedule: '* * * * * *'\n  maxActiveRuns: 10000\n  tasks:\n  - {name: a, container: {image: busybox}}\n");
    sqlx::query(
        "INSERT INTO dag_runs (id, namespace, dag_name, dag_uid, run_type, logical_date, \
             data_interval_start, data_interval_end, state, started_at, ended_at) \
         SELECT gen_random_uuid(), $1, 'h' || lpad(d::text, 3, '0'), 'seed', 'scheduled', t, t, t, \
             'success', t, t \
         FROM generate_series(0, $2::int - 1) AS d, \
              LATERAL (SELECT timestamptz '2020-01-01' + make_interval(hours => g) AS t \
                       FROM generate_series(1, $3::int) AS g) AS s",
    )
    .bind(&ns.name)
    .bind(HISTORY_DAGS as i32)
    .bind(RUNS_PER_DAG)
    .execute(&pool)
    .await
    .expect("history runs");
    sqlx::query(
        "INSERT INTO task_instances (run_id, task_name, try_number, state, ended_at) \
         SELECT id, 't' || k, 1, 'success', ended_at FROM dag_runs, generate_series(1, 4) AS k \
         WHERE dag_uid = 'seed'",
    )
    .execute(&pool)
    .await
    .expect("history tries");
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze");
    ns.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&yaml));
    // the readers: 8 service accounts that may read DAGs
    ns.kubectl_ok(
        &[
            "create",
            "role",
            "dag-viewer",
            "--verb=get,list,watch",
            "--resource=dags.dagoperator.io",
        ],
        None,
    );
    let mut tokens = Vec::new();
    for u in 0..USERS {
        let name = format!("reader{u}");
        ns.kubectl_ok(&["create", "serviceaccount", &name], None);
        ns.kubectl_ok(
            &[
                "create",
                "rolebinding",
                &name,
                "--role=dag-viewer",
                &format!("--serviceaccount={}:{name}", ns.name),
            ],
            None,
        );
        tokens.push(
            ns.kubectl_ok(&["create", "token", &name], None)
                .trim()
                .to_string(),
        );
    }
    // API_LOAD_ARGS: more flags for both operators (e.g. other --api-max-requests)
    let extra = std::env::var("API_LOAD_ARGS").unwrap_or_default();
    let mut common = vec!["--max-concurrent-runs", "1000000", "--enable-catchup=false"];
    common.extend(extra.split_whitespace());

    let op = Operator::start(&ns.name, &db.url, &common);
    measure(&op, &pool, &ns.name, &tokens, "own API pool").await;
    drop(op);

    let mut shared = common.clone();
    shared.push("--api-beside-scheduler");
    let op = Operator::start(&ns.name, &db.url, &shared);
    measure(
        &op,
        &pool,
        &ns.name,
        &tokens,
        "API on the scheduler's pool and threads",
    )
    .await;
    drop(op);
}
