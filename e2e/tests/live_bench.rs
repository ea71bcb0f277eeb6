//! What live pages cost (issue 29, item 2; docs/BENCHMARKS.md, "Live pages"): 50 open grids of
//! a DAG with 25 runs, each polling as the page's script does (every 5 s, `If-None-Match` with
//! the ETag it last got), against a real operator on the plane. Measured in the same run: the
//! operator's CPU and PostgreSQL's transactions per second with the pages open, and with none.
//!
//! ```sh
//! eval "$(e2e/plane env)" && cargo test -p dag-operator-e2e --test live_bench -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use dag_operator::store::{DagKey, NewRun, NewTask, RunStore, RunType};
use dag_operator_e2e::eventually;
use dag_operator_e2e::scenario::{dag_with_spec, setup};

const PAGES: usize = 50;
const WINDOW: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(5);

async fn transactions(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_database")
}

/// One GET of `path` with the token and the ETag: the status and the new ETag.
async fn poll(port: u16, path: &str, token: &str, etag: Option<&str>) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, None);
    };
    let if_none = etag
        .map(|e| format!("If-None-Match: {e}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{if_none}Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, None);
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let etag = text
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .map(|v| v.trim().to_string());
    (code, etag)
}

/// Measures over [`WINDOW`]: operator CPU seconds, PostgreSQL transactions, and the answers
/// of `pages` pollers (none: idle).
async fn measure(
    op: &dag_operator_e2e::operator::Operator,
    pool: &sqlx::PgPool,
    path: &str,
    token: &str,
    pages: usize,
) -> (f64, f64, std::collections::BTreeMap<u16, usize>) {
    let cpu0 = op.cpu_seconds().expect("cpu");
    let tx0 = transactions(pool).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..pages {
        let (port, path, token) = (op.ui_port, path.to_string(), token.to_string());
        tasks.spawn(async move {
            // spread the pages over the interval, as pages opened at different times are
            tokio::time::sleep(EVERY.mul_f64(i as f64 / pages as f64)).await;
            let mut etag: Option<String> = None;
            let mut codes = std::collections::BTreeMap::<u16, usize>::new();
            let mut tick = tokio::time::interval(EVERY);
            while started.elapsed() < WINDOW {
                tick.tick().await;
                let (code, got) = poll(port, &path, &token, etag.as_deref()).await;
                *codes.entry(code).or_default() += 1;
                if got.is_some() {
                    etag = got;
                }
            }
            codes
        });
    }
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    while let Some(c) = tasks.join_next().await {
        for (k, v) in c.expect("a poller") {
            *codes.entry(k).or_default() += v;
        }
    }
    if pages == 0 {
        tokio::time::sleep(WINDOW).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = op.cpu_seconds().expect("cpu") - cpu0;
    let tx = transactions(pool).await - tx0;
    (cpu / secs * 100.0, tx as f64 / secs, codes)
}

#[tokio::test]
#[ignore = "benchmark: see the module docs"]
async fn fifty_open_grids() {
    let s = setup("live-bench").await;
    let ns = s.ns.name.clone();
    s.apply(&dag_with_spec(
        "etl",
        "  tasks:\n  - {name: extract, container: {image: busybox}}\n  - {name: load, dependsOn: [extract], container: {image: busybox}}\n",
    ));
    // 25 runs of history, stored directly
    let day: chrono::DateTime<chrono::Utc> = "2026-10-01T02:00:00Z".parse().expect("a time");
    let runs: Vec<NewRun> = (0..25)
        .map(|i| {
            let at = day + chrono::Duration::days(i);
            NewRun {
                dag: DagKey::new(&ns, "etl"),
                dag_uid: "uid".into(),
                run_type: RunType::Manual,
                backfill_name: None,
                backfill_uid: None,
                trigger: None,
                logical_date: at,
                data_interval_start: at,
                data_interval_end: at,
                priority: 0,
                params: serde_json::json!({}),
                spec_hash: None,
                tasks: ["extract", "load"]
                    .iter()
                    .map(|t| NewTask {
                        task_name: (*t).into(),
                        pool: None,
                        pool_slots: 1,
                    })
                    .collect(),
            }
        })
        .collect();
    s.store.insert_runs(&runs).await.expect("history");
    s.ns.kubectl_ok(&["create", "serviceaccount", "viewer"], None);
    s.ns.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "viewer",
            "--clusterrole=view",
            &format!("--serviceaccount={ns}:viewer"),
        ],
        None,
    );
    s.ns.kubectl_ok(
        &[
            "create",
            "role",
            "dags",
            "--verb=get,list",
            "--resource=dags.dagoperator.io",
        ],
        None,
    );
    s.ns.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "dags",
            "--role=dags",
            &format!("--serviceaccount={ns}:viewer"),
        ],
        None,
    );
    let token =
        s.ns.kubectl_ok(&["create", "token", "viewer", "--duration", "1h"], None)
            .trim()
            .to_string();
    let op = s.operator(&[]);
    let path = format!("/ui/namespaces/{ns}/dags/etl");
    eventually(Duration::from_secs(30), "the grid answers", || {
        let (op, path, token) = (&op, path.clone(), token.clone());
        async move { (poll(op.ui_port, &path, &token, None).await.0 == 200).then_some(()) }
    })
    .await;
    let pool = s.store.pool().clone();
    let (idle_cpu, idle_tx, _) = measure(&op, &pool, &path, &token, 0).await;
    let (cpu, tx, codes) = measure(&op, &pool, &path, &token, PAGES).await;
    let answers: usize = codes.values().sum();
    eprintln!(
        "{PAGES} open grids polling every {}s for {}s: {answers} answers {codes:?}; \
         operator CPU {cpu:.1}% (idle {idle_cpu:.1}%), PostgreSQL {tx:.1} transactions/s \
         (idle {idle_tx:.1}/s)",
        EVERY.as_secs(),
        WINDOW.as_secs()
    );
    assert_eq!(
        codes.get(&200).copied().unwrap_or(0) + codes.get(&304).copied().unwrap_or(0),
        answers
    );
}
