//! The HTTP API's authorization beside the real one (e2e/tests/api.rs): the real router and
//! PostgreSQL, a table standing in for the API server's reviews, DAGs of two namespaces in the
//! cache. Nothing of a namespace the caller may not read shows in any answer.

mod common;
#[path = "support/api.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dag_operator::executor::{EndedTry, PodKey};
use dag_operator::logs::{LogError, LogKeeper, LogSource, LogStream, LogTail};
use dag_operator::store::TryKey;
use futures::StreamExt;
use futures::future::BoxFuture;
use support::{dag, exchange, get, post, start, start_with};

#[tokio::test]
async fn only_readable_namespaces_show() {
    let store = common::fresh_store("api").await;
    let dags = [("a", "etl"), ("a", "report"), ("b", "payroll")]
        .iter()
        .map(|(ns, name)| dag(ns, name, &["t"]))
        .collect();
    let (port, _stop) = start(store, dags).await;

    let (code, body) = get(port, "/api/v1/dags", None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    let (code, body) = get(port, "/api/v1/dags", Some("mallory")).await;
    assert_eq!(code, 401, "{body}");

    let (code, body) = get(port, "/api/v1/dags", Some("alice")).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"etl\"") && body.contains("\"report\""),
        "{body}"
    );
    assert!(
        !body.contains("payroll"),
        "another namespace leaked: {body}"
    );

    let (code, body) = get(port, "/api/v1/namespaces/b/dags", Some("alice")).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = get(port, "/api/v1/namespaces/b/dags/payroll", Some("alice")).await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("0 2 * * *"), "{body}");
    let (code, _) = get(port, "/api/v1/namespaces/a/dags/missing", Some("alice")).await;
    assert_eq!(code, 404);
    let (code, body) = get(
        port,
        "/api/v1/namespaces/a/dags/etl/runs?limit=0",
        Some("alice"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = get(port, "/api/v1/namespaces/a/dags/etl/runs", Some("alice")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"items\":[]"), "{body}");
}

#[tokio::test]
async fn the_ui_logs_in_with_a_token_and_shows_what_it_may_read() {
    let store = common::fresh_store("ui").await;
    let dags = vec![dag("a", "etl", &["t"]), dag("b", "payroll", &["t"])];
    let (port, _stop) = start(store, dags).await;

    // no session: to the login page
    let (code, response) = get(port, "/", None).await;
    assert_eq!(code, 303, "{response}");
    assert!(response.contains("location: /login"), "{response}");
    let (code, response) = get(port, "/login", None).await;
    assert_eq!(code, 200);
    assert!(response.contains("kubectl create token"));
    // a token the API server refuses stays out
    let post = |body: &str| {
        format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (code, response) = exchange(port, post("token=mallory")).await;
    assert_eq!(code, 401, "{response}");
    assert!(!response.contains("set-cookie"), "{response}");
    // a good one becomes an HttpOnly session cookie
    let (code, response) = exchange(port, post("token=alice")).await;
    assert_eq!(code, 303, "{response}");
    let cookie = response
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Expires") && !cookie.contains("Max-Age"),
        "session only: {cookie}"
    );
    let session = cookie.split(';').next().unwrap_or_default().to_string();
    let with_cookie = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {session}\r\nConnection: close\r\n\r\n")
    };
    let (code, page) = exchange(port, with_cookie("/")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("/ui/namespaces/a/dags/etl"), "{page}");
    assert!(
        !page.contains("payroll"),
        "another namespace leaked: {page}"
    );
    let (code, page) = exchange(port, with_cookie("/ui/namespaces/a/dags/etl")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("id=\"grid\""), "{page}");
    let (code, _) = exchange(port, with_cookie("/ui/namespaces/b/dags/payroll")).await;
    assert_eq!(code, 403);
    let (code, response) = exchange(port, with_cookie("/logout")).await;
    assert_eq!(code, 303);
    assert!(response.contains("Max-Age=0"), "{response}");
}

/// A run of DAG `ns/name` in the store, `running`.
async fn stored_run(store: &dag_operator::store::PgStore, ns: &str, name: &str) -> uuid::Uuid {
    use dag_operator::store::{DagKey, NewRun, NewTask, RunStore, RunType};
    let at: chrono::DateTime<chrono::Utc> = "2026-01-01T02:00:00Z".parse().expect("time");
    let run = NewRun {
        dag: DagKey::new(ns, name),
        dag_uid: "uid".into(),
        run_type: RunType::Scheduled,
        backfill_name: None,
        backfill_uid: None,
        trigger: None,
        logical_date: at,
        data_interval_start: at,
        data_interval_end: at,
        priority: 0,
        params: serde_json::json!({}),
        spec_hash: None,
        tasks: vec![NewTask {
            task_name: "t".into(),
            pool: None,
            pool_slots: 1,
        }],
    };
    store.insert_runs(&[run]).await.expect("insert")[0].id
}

#[tokio::test]
async fn actions_need_update_on_dags_runs_and_are_recorded_pending_for_the_leader() {
    let store = common::fresh_store("api_actions").await;
    let mine = stored_run(&store, "a", "etl").await;
    let theirs = stored_run(&store, "b", "payroll").await;
    let dags = vec![dag("a", "etl", &["t"]), dag("b", "payroll", &["t"])];
    let (port, _stop) = start(store, dags).await;
    let path = format!("/api/v1/namespaces/a/runs/{mine}/actions");
    let cancel = r#"{"action":"cancel"}"#;

    let (code, body) = post(port, &path, None, cancel).await;
    assert_eq!(code, 401, "{body}");
    // alice may read namespace a, not act in it
    let (code, body) = post(port, &path, Some("alice"), cancel).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cannot update dags/runs"), "{body}");
    // bob may act in a, not in b, and learns nothing of b's run
    let (code, body) = post(
        port,
        &format!("/api/v1/namespaces/b/runs/{theirs}/actions"),
        Some("bob"),
        cancel,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = post(
        port,
        &format!("/api/v1/namespaces/a/runs/{theirs}/actions"),
        Some("bob"),
        cancel,
    )
    .await;
    assert_eq!(code, 404, "a run of another namespace is not found: {body}");
    let (code, body) = post(port, &path, Some("bob"), r#"{"action":"explode"}"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(port, &path, Some("bob"), cancel).await;
    assert_eq!(code, 202, "{body}");
    assert!(
        body.contains("\"state\":\"pending\"") && body.contains("\"requestedBy\":\"bob\""),
        "{body}"
    );
    let (code, body) = get(port, &path, Some("alice")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"action\":\"cancel\""), "{body}");
    // triggering needs the same right; this server has no Kubernetes client to write with
    let trigger = "/api/v1/namespaces/a/dags/etl/runs";
    let (code, body) = post(port, trigger, Some("alice"), "{}").await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = post(port, trigger, Some("bob"), r#"{"params": 3}"#).await;
    assert_eq!(code, 400, "{body}");
}

/// Pod logs from a table the test controls (e2e/tests/api.rs reads real ones, served by kwok
/// through the API server).
#[derive(Default, Clone)]
struct TableLogs(Arc<Mutex<HashMap<String, String>>>);

impl LogSource for TableLogs {
    fn stream<'a>(
        &'a self,
        pod: &'a PodKey,
        _follow: bool,
    ) -> BoxFuture<'a, Result<Option<LogStream>, LogError>> {
        let log = self.0.lock().unwrap().get(&pod.name).cloned();
        Box::pin(async move {
            Ok(
                log.map(|l| {
                    futures::stream::iter([Ok(bytes::Bytes::from(l.into_bytes()))]).boxed()
                }),
            )
        })
    }

    fn tail<'a>(
        &'a self,
        pod: &'a PodKey,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<LogTail>, LogError>> {
        let log = self.0.lock().unwrap().get(&pod.name).cloned();
        Box::pin(async move { Ok(log.map(|l| LogTail::of(l.as_bytes(), max_bytes))) })
    }
}

#[tokio::test]
async fn a_tries_log_comes_from_its_pod_then_from_the_kept_tail() {
    let store = common::fresh_store("api_logs").await;
    let run = stored_run(&store, "a", "etl").await;
    sqlx::query(
        "UPDATE task_instances SET state = 'failed', pod_name = 'etl-pod-1' WHERE run_id = $1",
    )
    .bind(run)
    .execute(store.pool())
    .await
    .expect("a failed try with a Pod");
    let logs = TableLogs::default();
    logs.0.lock().unwrap().insert(
        "etl-pod-1".into(),
        "starting\nloading 1000 rows\nError: disk full\n".into(),
    );
    let (port, _stop) = start_with(
        store.clone(),
        vec![dag("a", "etl", &["t"])],
        Some(Arc::new(logs.clone())),
    )
    .await;
    let path = format!("/api/v1/namespaces/a/runs/{run}/tasks/t/tries/1/log");

    let (code, body) = get(port, &path, None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(port, &path, Some("alice")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-dagop-log-source: pod"), "{body}");
    assert!(body.contains("Error: disk full"), "{body}");
    let (code, _) = get(
        port,
        &format!("/api/v1/namespaces/a/runs/{run}/tasks/t/tries/2/log"),
        Some("alice"),
    )
    .await;
    assert_eq!(code, 404);

    // the try ended: the keeper saves the last 30 bytes; then the Pod goes
    let keeper = LogKeeper::new(Arc::new(logs.clone()), store.clone(), 30);
    keeper
        .keep(&EndedTry {
            key: TryKey {
                run_id: run,
                task_name: "t".into(),
                try_number: 1,
            },
            pod: PodKey::new("a", "etl-pod-1"),
        })
        .await;
    logs.0.lock().unwrap().clear();
    let (code, body) = get(port, &path, Some("alice")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-dagop-log-source: kept"), "{body}");
    assert!(body.contains("x-dagop-log-complete: false"), "{body}");
    assert!(body.ends_with("rows\nError: disk full\n"), "{body}");
    assert!(!body.contains("starting"), "only the tail is kept: {body}");

    // the page shows it too
    let (code, page) = get(
        port,
        &format!("/ui/namespaces/a/runs/{run}/tasks/t/tries/1/log"),
        Some("alice"),
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("kept by the operator") && page.contains("Error: disk full"),
        "{page}"
    );

    // nothing kept and no Pod: 404 saying why
    sqlx::query("DELETE FROM task_logs")
        .execute(store.pool())
        .await
        .expect("forget");
    let (code, body) = get(port, &path, Some("alice")).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no end of its log was kept"), "{body}");
}

#[tokio::test]
async fn the_ui_posts_actions_from_its_own_pages_only() {
    let store = common::fresh_store("ui_actions").await;
    let run = stored_run(&store, "a", "etl").await;
    let (port, _stop) = start(store, vec![dag("a", "etl", &["t"])]).await;
    let (code, page) = get(port, &format!("/ui/namespaces/a/runs/{run}"), Some("bob")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("value=\"cancel\""), "{page}");
    let form = |token: &str, extra: &str| {
        let body = "action=cancel";
        format!(
            "POST /ui/namespaces/a/runs/{run}/actions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (code, response) = exchange(port, form("bob", "Origin: https://evil.example\r\n")).await;
    assert_eq!(code, 403, "{response}");
    let (code, response) = exchange(port, form("alice", "")).await;
    assert_eq!(code, 403, "alice may only read: {response}");
    let (code, response) = exchange(port, form("bob", "Sec-Fetch-Site: same-origin\r\n")).await;
    assert_eq!(code, 303, "{response}");
    assert!(response.contains("?asked="), "{response}");
    let (_, page) = get(port, &format!("/ui/namespaces/a/runs/{run}"), Some("alice")).await;
    assert!(
        page.contains("id=\"asked\"") && page.contains("pending"),
        "{page}"
    );
}
