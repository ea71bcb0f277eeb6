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
use support::{dag, exchange, get, post, start, start_counting, start_with};

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
/// A followed log stays open until `ended` is set (the Pod ended).
#[derive(Clone)]
struct TableLogs(
    Arc<Mutex<HashMap<String, String>>>,
    Arc<tokio::sync::watch::Sender<bool>>,
);

impl Default for TableLogs {
    fn default() -> Self {
        TableLogs(
            Arc::default(),
            Arc::new(tokio::sync::watch::channel(false).0),
        )
    }
}

impl LogSource for TableLogs {
    fn stream<'a>(
        &'a self,
        pod: &'a PodKey,
        follow: bool,
    ) -> BoxFuture<'a, Result<Option<LogStream>, LogError>> {
        let log = self.0.lock().unwrap().get(&pod.name).cloned();
        let mut ended = self.1.subscribe();
        Box::pin(async move {
            Ok(log.map(|l| {
                let now = futures::stream::iter([Ok(bytes::Bytes::from(l.into_bytes()))]);
                let rest = futures::stream::once(async move {
                    if follow {
                        let _ = ended.wait_for(|e| *e).await;
                    }
                })
                .filter_map(|()| async { None });
                now.chain(rest).boxed()
            }))
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

/// A Kubernetes `Status` answer with `code`: the whole response (headers and body).
fn assert_status(code: u16, response: &str, want: u16) {
    assert_eq!(code, want, "{response}");
    assert!(
        response.contains("content-type: application/json"),
        "{response}"
    );
    for part in [
        "\"kind\":\"Status\"",
        "\"apiVersion\":\"v1\"",
        "\"status\":\"Failure\"",
        "\"message\":",
        "\"reason\":",
        &format!("\"code\":{want}"),
    ] {
        assert!(response.contains(part), "{part} missing: {response}");
    }
}

/// Sends `request` and reads one response (head and `content-length` body) without waiting
/// for the connection to close: a server refusing a body it never read may keep it open.
async fn exchange_one(port: u16, request: String) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    read_answer(&mut stream).await
}

/// Reads one response (head and `content-length` body) from `stream`, within 20 s.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Duration::from_secs(20);
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|l| l.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                let code = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return (code, text);
            }
        }
        let n = tokio::time::timeout(deadline, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed mid-response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn login_request(body: &str) -> String {
    format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_any_review() {
    let store = common::fresh_store("api_big_tokens").await;
    let (port, _stop, reviews) = start_counting(
        store,
        vec![dag("a", "etl", &["t"])],
        None,
        dag_operator::http::HEADER_READ_TIMEOUT,
    )
    .await;
    let big = "x".repeat(20 * 1024);

    let (code, response) = get(port, "/api/v1/dags", Some(&big)).await;
    assert_status(code, &response, 400);
    let (code, response) = exchange(
        port,
        format!(
            "GET /api/v1/dags HTTP/1.1\r\nHost: x\r\nCookie: dagop_token={big}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_status(code, &response, 400);
    let (code, response) = exchange(port, login_request(&format!("token={big}"))).await;
    assert_status(code, &response, 400);
    // a login body far past any token is refused on its length alone, unread
    let (code, response) = exchange_one(
        port,
        format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            2 * 1024 * 1024
        ),
    )
    .await;
    assert_status(code, &response, 413);
    assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 0);
    // a token of a sane length is still reviewed
    let (code, _) = get(port, "/api/v1/dags", Some("alice")).await;
    assert_eq!(code, 200);
    assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failed_logins_from_one_source_are_limited() {
    let store = common::fresh_store("api_login_limit").await;
    let (port, _stop, reviews) = start_counting(
        store,
        vec![dag("a", "etl", &["t"])],
        None,
        dag_operator::http::HEADER_READ_TIMEOUT,
    )
    .await;
    let mut limited = None;
    for n in 0..100 {
        let (code, response) = exchange(port, login_request(&format!("token=guess{n}"))).await;
        if code == 429 {
            limited = Some((n, response));
            break;
        }
        assert_eq!(code, 401, "{response}");
    }
    let (n, response) = limited.expect("no 429 after 100 failed logins");
    assert_status(429, &response, 429);
    assert!(n <= 20, "limited only after {n} failures");
    let asked = reviews.load(std::sync::atomic::Ordering::SeqCst);
    // the bearer header is the same door
    let (code, response) = get(port, "/api/v1/dags", Some("guess-again")).await;
    assert_status(code, &response, 429);
    assert_eq!(
        reviews.load(std::sync::atomic::Ordering::SeqCst),
        asked,
        "a limited source's token is not reviewed"
    );
}

#[tokio::test]
async fn a_client_that_stalls_in_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let store = common::fresh_store("api_slow_head").await;
    let timeout = std::time::Duration::from_secs(1);
    let (port, _stop, _) = start_counting(store, vec![], None, timeout).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /api/v1/dags HT")
        .await
        .expect("send");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(timeout * 10, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still connected after {:?}", timeout * 10);
    assert!(
        started.elapsed() >= timeout / 2,
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

/// A client that sends its head and then stalls in the body it declared holds no handler: it
/// is answered 408 once the body deadline passes.
#[tokio::test]
async fn a_client_that_stalls_in_its_body_is_answered_408() {
    use tokio::io::AsyncWriteExt;
    let store = common::fresh_store("api_slow_body").await;
    let (port, _stop, reviews) = start_counting(
        store,
        vec![dag("a", "etl", &["t"])],
        None,
        dag_operator::http::HEADER_READ_TIMEOUT,
    )
    .await;
    for (path, auth) in [
        ("/login", ""),
        (
            "/api/v1/namespaces/a/dags/etl/runs",
            "Authorization: Bearer alice\r\n",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\nConnection: close\r\n\r\ntoken=",
                )
                .as_bytes(),
            )
            .await
            .expect("send");
        let started = std::time::Instant::now();
        let (code, response) = read_answer(&mut stream).await;
        assert_status(code, &response, 408);
        assert!(
            started.elapsed() >= dag_operator::http::guard::BODY_READ_TIMEOUT / 2,
            "answered before the deadline: {:?}",
            started.elapsed()
        );
    }
    // nothing was reviewed for a body that never came
    assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn every_api_error_is_a_kubernetes_status() {
    let store = common::fresh_store("api_statuses").await;
    let run = stored_run(&store, "a", "etl").await;
    let (port, _stop) = start(store, vec![dag("a", "etl", &["t"])]).await;
    for (path, want) in [
        ("/api/v1/namespaces/a/runs/not-a-uuid".to_string(), 404),
        ("/api/v1/namespaces/a/runs/..".to_string(), 404),
        ("/api/v1/namespaces/a/../b/dags".to_string(), 404),
        ("/api/v1/nothing/here".to_string(), 404),
        ("/api/v1/namespaces/a/actions/not-a-number".to_string(), 400),
        (
            format!("/api/v1/namespaces/a/runs/{run}/tasks/t/tries/x/log"),
            400,
        ),
        (
            "/api/v1/namespaces/a/dags/etl/runs?limit=abc".to_string(),
            400,
        ),
        (
            format!("/api/v1/namespaces/a/runs/{run}/tasks/t/tries/1/log?follow=perhaps"),
            400,
        ),
    ] {
        let (code, response) = get(port, &path, Some("alice")).await;
        assert!(code == want, "{path}: {response}");
        assert_status(code, &response, want);
    }
    let actions = format!("/api/v1/namespaces/a/runs/{run}/actions");
    let (code, response) = post(port, &actions, Some("bob"), "{not json").await;
    assert_status(code, &response, 400);
    let (code, response) = post(port, &actions, Some("bob"), r#"{"action": 3}"#).await;
    assert_status(code, &response, 422);
    let (code, response) = exchange(
        port,
        format!(
            "POST {actions} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
    )
    .await;
    assert_status(code, &response, 415);
    let (code, response) = exchange_one(
        port,
        format!(
            "POST {actions} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            8 * 1024 * 1024
        ),
    )
    .await;
    assert_status(code, &response, 413);
    let (code, response) = exchange(
        port,
        "DELETE /api/v1/dags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\nConnection: close\r\n\r\n".to_string(),
    )
    .await;
    assert_status(code, &response, 405);
}

/// The security headers of issue 28, finding 6, in `response` (headers lower-cased by hyper).
fn assert_security_headers(what: &str, response: &str) {
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    for want in [
        "x-frame-options: DENY",
        "x-content-type-options: nosniff",
        "referrer-policy: same-origin",
    ] {
        assert!(head.contains(want), "{what}: no {want} in {head}");
    }
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .unwrap_or_else(|| panic!("{what}: no CSP in {head}"));
    for want in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(want), "{what}: no {want} in {csp}");
    }
    assert!(
        !csp.contains("script-src 'unsafe-inline'")
            && !csp.contains("script-src 'self' 'unsafe-inline'"),
        "{what}: inline scripts allowed: {csp}"
    );
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let store = common::fresh_store("api_security_headers").await;
    let (port, _stop) = start(store, vec![dag("a", "etl", &["t"])]).await;
    let (code, response) = get(port, "/login", None).await;
    assert_eq!(code, 200, "{response}");
    assert_security_headers("a page", &response);
    let (code, response) = get(port, "/ui/namespaces/a/dags/etl", Some("alice")).await;
    assert_eq!(code, 200, "{response}");
    assert_security_headers("a DAG's page", &response);
    let (code, response) = get(port, "/api/v1/namespaces/a/dags", Some("alice")).await;
    assert_eq!(code, 200, "{response}");
    assert_security_headers("an API answer", &response);
    let (code, response) = get(port, "/api/v1/dags", None).await;
    assert_eq!(code, 401, "{response}");
    assert_security_headers("a refusal", &response);
    let (code, response) = get(port, "/nowhere", Some("alice")).await;
    assert_eq!(code, 404, "{response}");
    assert_security_headers("no route", &response);
    let big = "x".repeat(20 * 1024);
    let (code, response) = get(port, "/api/v1/dags", Some(&big)).await;
    assert_eq!(code, 400, "{response}");
    assert_security_headers("the guard's refusal", &response);
}

/// A `POST /login` of `token` with `extra` header lines; the status, and the session cookie
/// set (if any).
async fn log_in(port: u16, token: &str, extra: &str) -> (u16, Option<String>, String) {
    let body = format!("token={token}");
    let (code, response) = exchange(
        port,
        format!(
            "POST /login HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let cookie = response
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(str::to_string);
    (code, cookie, response)
}

#[tokio::test]
async fn the_session_cookie_is_secure_over_https_and_cross_site_logins_are_refused() {
    let store = common::fresh_store("api_login_cookie").await;
    let (port, _stop) = start(store, vec![dag("a", "etl", &["t"])]).await;
    // plain HTTP (a port-forward to localhost): HttpOnly and SameSite, not Secure, or the
    // browser would never send it back
    let (code, cookie, response) = log_in(port, "alice", "").await;
    assert_eq!(code, 303, "{response}");
    let cookie = cookie.expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    // through a TLS-terminating proxy
    for https in [
        "X-Forwarded-Proto: https\r\n",
        "Forwarded: for=10.0.0.1;proto=https\r\n",
    ] {
        let (code, cookie, response) = log_in(port, "alice", https).await;
        assert_eq!(code, 303, "{response}");
        let cookie = cookie.expect("a cookie");
        assert!(
            cookie.contains("; Secure")
                && cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Strict"),
            "{https}: {cookie}"
        );
    }
    let (_, response) = exchange(
        port,
        "GET /logout HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
            .to_string(),
    )
    .await;
    assert!(
        response.contains("Max-Age=0") && response.contains("; Secure"),
        "{response}"
    );
    // login CSRF: a form posted from another site is refused, its token unreviewed and no
    // cookie set
    for foreign in [
        "Origin: https://evil.example\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-site\r\n",
    ] {
        let (code, cookie, response) = log_in(port, "alice", foreign).await;
        assert_eq!(code, 403, "{foreign}: {response}");
        assert_eq!(cookie, None, "{foreign}");
    }
    let (code, cookie, response) = log_in(
        port,
        "alice",
        "Origin: http://x\r\nSec-Fetch-Site: same-origin\r\n",
    )
    .await;
    assert_eq!(code, 303, "{response}");
    assert!(cookie.is_some());
}

#[tokio::test]
async fn with_secure_cookies_on_every_session_cookie_is_secure() {
    let store = common::fresh_store("api_secure_cookies").await;
    let (port, _stop, _) = support::start_secured(
        store,
        vec![dag("a", "etl", &["t"])],
        None,
        dag_operator::http::HEADER_READ_TIMEOUT,
        dag_operator::http::UiSecurity {
            secure_cookies: true,
            ..Default::default()
        },
    )
    .await;
    let (code, cookie, response) = log_in(port, "alice", "").await;
    assert_eq!(code, 303, "{response}");
    assert!(cookie.expect("a cookie").contains("; Secure"));
}

#[tokio::test]
async fn task_logs_need_get_pods_log_of_the_caller_too() {
    let store = common::fresh_store("api_logs_rbac").await;
    let run = stored_run(&store, "a", "etl").await;
    sqlx::query(
        "UPDATE task_instances SET state = 'failed', pod_name = 'etl-pod-1' WHERE run_id = $1",
    )
    .bind(run)
    .execute(store.pool())
    .await
    .expect("a failed try with a Pod");
    let logs = TableLogs::default();
    logs.0
        .lock()
        .unwrap()
        .insert("etl-pod-1".into(), "password=hunter2\n".into());
    let (port, _stop) = start_with(
        store.clone(),
        vec![dag("a", "etl", &["t"])],
        Some(Arc::new(logs.clone())),
    )
    .await;
    let api = format!("/api/v1/namespaces/a/runs/{run}/tasks/t/tries/1/log");
    let ui = format!("/ui/namespaces/a/runs/{run}/tasks/t/tries/1/log");

    // carol may get dags in a, not pods/log
    let (code, body) = get(
        port,
        &format!("/api/v1/namespaces/a/runs/{run}"),
        Some("carol"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    for path in [api.clone(), format!("{api}?follow=true")] {
        let (code, response) = get(port, &path, Some("carol")).await;
        assert_status(code, &response, 403);
        assert!(response.contains("pods/log"), "{response}");
        assert!(!response.contains("hunter2"), "{response}");
    }
    let (code, page) = get(port, &ui, Some("carol")).await;
    assert_eq!(code, 403, "{page}");
    assert!(!page.contains("hunter2"), "{page}");
    // the kept tail is the same log
    let keeper = LogKeeper::new(Arc::new(logs.clone()), store.clone(), 1024);
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
    let (code, response) = get(port, &api, Some("carol")).await;
    assert_status(code, &response, 403);
    assert!(!response.contains("hunter2"), "{response}");
    // with both rights it works
    let (code, body) = get(port, &api, Some("alice")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hunter2"), "{body}");
    let (code, page) = get(port, &ui, Some("alice")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("hunter2"), "{page}");
}

/// Number of actions recorded on `run`, as bob reads them.
async fn actions_on(port: u16, run: uuid::Uuid) -> usize {
    let (code, body) = get(
        port,
        &format!("/api/v1/namespaces/a/runs/{run}/actions"),
        Some("bob"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    body.matches("\"kind\":\"RunAction\"").count()
}

#[tokio::test]
async fn state_changes_by_session_cookie_must_come_from_the_same_origin() {
    let store = common::fresh_store("api_csrf").await;
    let run = stored_run(&store, "a", "etl").await;
    let (port, _stop) = start(store, vec![dag("a", "etl", &["t"])]).await;
    let actions = format!("/api/v1/namespaces/a/runs/{run}/actions");
    let trigger = "/api/v1/namespaces/a/dags/etl/runs";
    let ui_action = format!("/ui/namespaces/a/runs/{run}/actions");
    let request = |path: &str, auth: &str, extra: &str, kind: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:8081\r\n{auth}{extra}{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let cookie = "Cookie: dagop_token=bob\r\n";
    let bearer = "Authorization: Bearer bob\r\n";
    let json = "Content-Type: application/json\r\n";
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let cancel = r#"{"action":"cancel"}"#;
    for extra in [
        "Origin: https://evil.example\r\n",
        "Origin: http://localhost:3000\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: same-site\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "",
    ] {
        let (code, response) = exchange(port, request(&actions, cookie, extra, json, cancel)).await;
        assert_status(code, &response, 403);
        let (code, response) = exchange(port, request(trigger, cookie, extra, "", "")).await;
        assert_status(code, &response, 403);
        let (code, response) = exchange(port, request(trigger, cookie, extra, json, "{}")).await;
        assert_status(code, &response, 403);
        let (code, response) = exchange(
            port,
            request(&ui_action, cookie, extra, form, "action=cancel"),
        )
        .await;
        assert_eq!(code, 403, "{extra}: {response}");
    }
    assert_eq!(
        actions_on(port, run).await,
        0,
        "a refused request recorded an action"
    );

    // a bearer header is no browser's ambient credential
    let (code, response) = exchange(port, request(&actions, bearer, "", json, cancel)).await;
    assert_eq!(code, 202, "{response}");
    // the trigger passes the check (this server has no Kubernetes client to write with)
    let (code, response) = exchange(port, request(trigger, bearer, "", json, "{}")).await;
    assert_status(code, &response, 503);
    // the cookie from the UI's own origin
    for extra in [
        "Origin: http://localhost:8081\r\n",
        "Sec-Fetch-Site: same-origin\r\n",
    ] {
        let (code, response) = exchange(port, request(&actions, cookie, extra, json, cancel)).await;
        assert_eq!(code, 202, "{extra}: {response}");
        let (code, response) = exchange(port, request(trigger, cookie, extra, json, "{}")).await;
        assert_status(code, &response, 503);
        let (code, response) = exchange(
            port,
            request(&ui_action, cookie, extra, form, "action=cancel"),
        )
        .await;
        assert_eq!(code, 303, "{extra}: {response}");
    }
    assert_eq!(actions_on(port, run).await, 5);
}

/// Opens `GET path` with `token` and reads the response head; the connection stays open.
async fn open(port: u16, path: &str, token: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("a response head in time")
            .expect("read");
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    (stream, String::from_utf8_lossy(&got).to_string())
}

#[tokio::test]
async fn followed_logs_are_capped_per_caller() {
    use dag_operator::http::logs::FOLLOWS_PER_USER;
    use tokio::io::AsyncReadExt;
    let store = common::fresh_store("api_follow_cap").await;
    let run = stored_run(&store, "a", "etl").await;
    sqlx::query("UPDATE task_instances SET pod_name = 'etl-pod-1' WHERE run_id = $1")
        .bind(run)
        .execute(store.pool())
        .await
        .expect("a running try with a Pod");
    let logs = TableLogs::default();
    logs.0
        .lock()
        .unwrap()
        .insert("etl-pod-1".into(), "working\n".into());
    let (port, _stop) = start_with(
        store,
        vec![dag("a", "etl", &["t"])],
        Some(Arc::new(logs.clone())),
    )
    .await;
    let path = format!("/api/v1/namespaces/a/runs/{run}/tasks/t/tries/1/log?follow=true");
    let mut open_streams = Vec::new();
    for _ in 0..FOLLOWS_PER_USER {
        let (stream, head) = open(port, &path, "alice").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open_streams.push(stream);
    }
    let (code, response) = get(port, &path, Some("alice")).await;
    assert_status(code, &response, 429);
    // another caller has slots of their own; a log not followed is not capped
    let (bob, head) = open(port, &path, "bob").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let unfollowed = format!("/api/v1/namespaces/a/runs/{run}/tasks/t/tries/1/log");
    let (code, body) = get(port, &unfollowed, Some("alice")).await;
    assert_eq!(code, 200, "{body}");
    // the Pod ends: its streams end and give their slots back
    logs.1.send_replace(true);
    for mut stream in open_streams.into_iter().chain([bob]) {
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .await
            .expect("the stream ends");
    }
    let (code, body) = get(port, &path, Some("alice")).await;
    assert_eq!(code, 200, "{body}");
}

/// Live pages (issue 29, item 2): a page answers with its ETag, a `304` without a body when
/// the caller has that copy, and a new copy once something it shows changed.
#[tokio::test]
async fn pages_answer_304_until_what_they_show_changes() {
    let store = common::fresh_store("api_live").await;
    let (port, _stop) = start(store.clone(), vec![dag("a", "etl", &["t"])]).await;
    let page = |etag: Option<String>| async move {
        let if_none = etag
            .map(|e| format!("If-None-Match: {e}\r\n"))
            .unwrap_or_default();
        exchange(
            port,
            format!(
                "GET /ui/namespaces/a/dags/etl HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\n{if_none}Connection: close\r\n\r\n"
            ),
        )
        .await
    };
    let etag_of = |response: &str| {
        response
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no ETag: {response}"))
    };
    let (code, first) = page(None).await;
    assert_eq!(code, 200, "{first}");
    assert!(first.contains("data-live"), "{first}");
    let etag = etag_of(&first);
    let (code, same) = page(Some(etag.clone())).await;
    assert_eq!(code, 304, "{same}");
    assert!(same.ends_with("\r\n\r\n"), "a 304 has no body: {same}");
    // a run appears: the page changed
    let run = stored_run(&store, "a", "etl").await;
    let (code, changed) = page(Some(etag.clone())).await;
    assert_eq!(code, 200, "{changed}");
    assert_ne!(etag_of(&changed), etag);
    assert!(changed.contains(&run.to_string()), "{changed}");
}

/// A failed run of DAG `a/etl` (a → b → c; a succeeded, b failed, c upstream-failed) with its
/// spec version stored.
async fn failed_chain_run(store: &dag_operator::store::PgStore) -> uuid::Uuid {
    use dag_operator::store::{DagKey, NewRun, NewTask, RunStore, RunType, SpecRow};
    let spec: dag_operator::api::DagSpec = serde_yaml::from_str(
        "tasks:\n- {name: a, container: {image: x}}\n- {name: b, dependsOn: [a], container: {image: x}}\n- {name: c, dependsOn: [b], container: {image: x}}",
    )
    .expect("spec");
    let (hash, json) = spec.content_hash().expect("hash");
    store
        .save_specs(&[SpecRow {
            hash: hash.clone(),
            spec: json,
        }])
        .await
        .expect("spec saved");
    let at: chrono::DateTime<chrono::Utc> = "2026-01-01T02:00:00Z".parse().expect("time");
    let task = |name: &str| NewTask {
        task_name: name.into(),
        pool: None,
        pool_slots: 1,
    };
    let run = NewRun {
        dag: DagKey::new("a", "etl"),
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
        spec_hash: Some(hash),
        tasks: vec![task("a"), task("b"), task("c")],
    };
    let id = store.insert_runs(&[run]).await.expect("insert")[0].id;
    sqlx::query("UPDATE dag_runs SET state = 'failed', ended_at = now() WHERE id = $1")
        .bind(id)
        .execute(store.pool())
        .await
        .expect("run failed");
    sqlx::query(
        "UPDATE task_instances SET state = CASE task_name WHEN 'a' THEN 'success' \
             WHEN 'b' THEN 'failed' ELSE 'upstream_failed' END, \
             pod_name = CASE WHEN task_name = 'c' THEN NULL ELSE 'pod-' || task_name END \
         WHERE run_id = $1",
    )
    .bind(id)
    .execute(store.pool())
    .await
    .expect("tries");
    id
}

/// Issue 29, item 3: a task action's dry run lists exactly what would change and records
/// nothing; it needs the right to act as the action does; bad task actions are 400.
#[tokio::test]
async fn a_task_actions_dry_run_lists_its_changes_and_records_nothing() {
    let store = common::fresh_store("api_task_dry_run").await;
    let run = failed_chain_run(&store).await;
    let (port, _stop) = start(store, vec![dag("a", "etl", &["a", "b", "c"])]).await;
    let path = format!("/api/v1/namespaces/a/runs/{run}/actions");
    let dry = format!("{path}?dryRun=true");
    let clear = r#"{"action":"clear_task","task":"b","downstream":true}"#;
    let (code, body) = post(port, &dry, Some("alice"), clear).await;
    assert_eq!(code, 403, "a viewer may not even preview: {body}");
    let (code, body) = post(port, &dry, Some("bob"), clear).await;
    assert_eq!(code, 200, "{body}");
    let json = body
        .find('{')
        .and_then(|a| body.rfind('}').map(|b| &body[a..=b]))
        .expect("a JSON body");
    let preview: serde_json::Value = serde_json::from_str(json).expect("json");
    assert_eq!(preview["kind"], "RunActionPreview");
    assert_eq!(preview["allowed"], true, "{body}");
    assert_eq!(preview["runState"]["from"], "failed");
    assert_eq!(preview["runState"]["to"], "running");
    let changes: Vec<(String, String, String, bool)> = preview["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["task"].as_str().unwrap_or_default().to_string(),
                c["from"].as_str().unwrap_or_default().to_string(),
                c["to"].as_str().unwrap_or_default().to_string(),
                c["newTry"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("b".into(), "failed".into(), "pending".into(), true),
            ("c".into(), "upstream_failed".into(), "pending".into(), true),
        ]
    );
    // marking a success: nothing to do, said so
    let (code, body) = post(
        port,
        &dry,
        Some("bob"),
        r#"{"action":"mark_task_success","task":"a"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"allowed\":false") && body.contains("success already"),
        "{body}"
    );
    assert_eq!(actions_on(port, run).await, 0, "a dry run records nothing");
    for bad in [
        r#"{"action":"clear_task"}"#,
        r#"{"action":"clear_task","task":"nope"}"#,
        r#"{"action":"cancel","task":"b"}"#,
    ] {
        let (code, body) = post(port, &path, Some("bob"), bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let sideways = r#"{"action":"clear_task","task":"b","sideways":true}"#;
    let (code, body) = post(port, &path, Some("bob"), sideways).await;
    assert_eq!(code, 422, "an unknown field, as every body: {body}");
    assert_eq!(actions_on(port, run).await, 0);
    let (code, body) = post(port, &path, Some("bob"), clear).await;
    assert_eq!(code, 202, "{body}");
    assert!(
        body.contains(r#""task":{"downstream":true,"name":"b","upstream":false}"#),
        "{body}"
    );
    assert_eq!(actions_on(port, run).await, 1);
    // the UI's confirmation page lists the same changes, with the button that asks
    let (code, page) = get(
        port,
        &format!("/ui/namespaces/a/runs/{run}/confirm?action=clear_task&task=b&downstream=on"),
        Some("bob"),
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("id=\"change-b\"")
            && page.contains("id=\"change-c\"")
            && !page.contains("id=\"change-a\"")
            && page.contains("Confirm"),
        "{page}"
    );
    assert_eq!(
        actions_on(port, run).await,
        1,
        "the confirmation records nothing"
    );
}

// Issue 28, finding 2: readers never starve the scheduler's database pool.

/// The JSON body of a response `get` returned.
fn json_body(response: &str) -> serde_json::Value {
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

/// The API's own pool over the database of `store`.
fn api_pool(
    store: &dag_operator::store::PgStore,
    connections: u32,
    statement_timeout: Option<std::time::Duration>,
) -> dag_operator::store::PgStore {
    store.sibling(&dag_operator::store::PoolSettings {
        max_connections: connections,
        acquire_timeout: std::time::Duration::from_secs(30),
        statement_timeout,
    })
}

/// A connection of its own holding `dag_runs` locked, so every read of it waits until the
/// connection drops.
async fn lock_runs(store: &dag_operator::store::PgStore) -> sqlx::PgConnection {
    use sqlx::{Connection, Executor};
    let options = store.pool().connect_options();
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .expect("a connection for the lock");
    conn.execute("BEGIN; LOCK TABLE dag_runs IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    conn
}

/// Waits (polling, 30 s at most) until `n` statements of this database wait for a lock.
async fn waiting_for_lock(store: &dag_operator::store::PgStore, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_activity");
        if waiting >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} statements wait for the lock, not {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_query_past_the_statement_timeout_answers_a_status_in_time() {
    let store = common::fresh_store("api_stmt_timeout").await;
    let api = api_pool(&store, 2, Some(std::time::Duration::from_millis(300)));
    let (port, _stop) = start(api, vec![dag("a", "etl", &["t"])]).await;
    let lock = lock_runs(&store).await;
    let (code, response) = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        get(
            port,
            "/api/v1/namespaces/a/dags/etl/runs?limit=500",
            Some("alice"),
        ),
    )
    .await
    .expect("an answer while the table stays locked, not a hang");
    assert_eq!(code, 504, "{response}");
    let status = json_body(&response);
    assert_eq!(status["kind"], "Status", "{response}");
    assert_eq!(status["reason"], "Timeout", "{response}");
    drop(lock);
}

#[tokio::test]
async fn readers_past_the_bounds_are_told_to_come_back() {
    use dag_operator::http::limit::QueryBounds;
    let store = common::fresh_store("api_bounds").await;
    let api = api_pool(&store, 4, None);
    let bounds = QueryBounds {
        overall: 2,
        per_caller: 1,
        wait: std::time::Duration::from_millis(200),
    };
    let (port, _stop) = support::start_limited(api, vec![dag("a", "etl", &["t"])], bounds).await;
    let runs = "/api/v1/namespaces/a/dags/etl/runs?limit=500";
    let lock = lock_runs(&store).await;
    let first = tokio::spawn(async move { get(port, runs, Some("alice")).await });
    waiting_for_lock(&store, 1).await;
    // alice's second request: over her own bound (bounded here: without a bound it would
    // wait for the lock)
    let (code, response) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        get(port, runs, Some("alice")),
    )
    .await
    .expect("an answer while the first request holds alice's place");
    assert_eq!(code, 429, "{response}");
    assert!(response.contains("retry-after: 1"), "{response}");
    let status = json_body(&response);
    assert_eq!(
        (&status["kind"], &status["reason"]),
        (
            &serde_json::json!("Status"),
            &serde_json::json!("TooManyRequests")
        ),
        "{response}"
    );
    // bob has a place of his own; then the overall bound is reached
    let second = tokio::spawn(async move { get(port, runs, Some("bob")).await });
    waiting_for_lock(&store, 2).await;
    let (code, response) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        get(port, "/api/v1/dags", Some("carol")),
    )
    .await
    .expect("an answer while alice and bob hold every place");
    assert_eq!(code, 429, "over the overall bound: {response}");
    drop(lock);
    for (who, held) in [("alice", first), ("bob", second)] {
        let (code, response) = held.await.expect("the request");
        assert_eq!(code, 200, "{who}: {response}");
    }
    // the places are back
    let (code, response) = get(port, runs, Some("alice")).await;
    assert_eq!(code, 200, "{response}");
}

#[tokio::test]
async fn readers_holding_every_api_connection_leave_the_engines_pool_free() {
    use dag_operator::http::limit::QueryBounds;
    let store = common::fresh_store("api_own_pool").await;
    let api = api_pool(&store, 5, None);
    let bounds = QueryBounds {
        overall: 64,
        per_caller: 64,
        wait: std::time::Duration::from_secs(1),
    };
    let (port, _stop) = support::start_limited(api, vec![dag("a", "etl", &["t"])], bounds).await;
    let lock = lock_runs(&store).await;
    let readers: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                get(
                    port,
                    "/api/v1/namespaces/a/dags/etl/runs?limit=500",
                    Some("alice"),
                )
                .await
            })
        })
        .collect();
    // every connection the API may open waits for the lock
    waiting_for_lock(&store, 5).await;
    let engine: Result<i32, _> = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        sqlx::query_scalar("SELECT 1").fetch_one(store.pool()),
    )
    .await
    .expect("the engine's pool answers");
    assert_eq!(engine.expect("the engine's query"), 1);
    drop(lock);
    for reader in readers {
        let (code, response) = reader.await.expect("a reader");
        assert_eq!(code, 200, "{response}");
    }
}

#[tokio::test]
async fn the_dag_list_pages_without_duplicates_or_gaps() {
    let store = common::fresh_store("api_paging").await;
    let mut dags = Vec::new();
    for i in 0..130 {
        dags.push(dag("a", &format!("d{i:03}"), &["t"]));
    }
    for i in 0..40 {
        dags.push(dag("bench", &format!("b{i:02}"), &["t"]));
    }
    for i in 0..5 {
        dags.push(dag("b", &format!("secret{i}"), &["t"]));
    }
    let (port, _stop) = start(store, dags).await;
    // every readable DAG, 7 a page
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/api/v1/dags?limit=7".to_string();
    let mut pages = 0;
    loop {
        let (code, response) = get(port, &path, Some("alice")).await;
        assert_eq!(code, 200, "{response}");
        let list = json_body(&response);
        let items = list["items"].as_array().expect("items");
        assert!(items.len() <= 7, "{}", items.len());
        seen.extend(items.iter().map(|d| {
            format!(
                "{}/{}",
                d["namespace"].as_str().unwrap_or(""),
                d["name"].as_str().unwrap_or("")
            )
        }));
        pages += 1;
        assert!(pages <= 100, "the pages never end");
        match list["metadata"]["continue"].as_str() {
            Some(token) => path = format!("/api/v1/dags?limit=7&continue={token}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..130).map(|i| format!("a/d{i:03}")).collect();
    expected.extend((0..40).map(|i| format!("bench/b{i:02}")));
    assert_eq!(seen, expected, "every readable DAG once, in order");
    assert_eq!(pages, 170_usize.div_ceil(7));

    // a namespace, at the default page size
    let (code, response) = get(port, "/api/v1/namespaces/a/dags", Some("alice")).await;
    assert_eq!(code, 200, "{response}");
    let list = json_body(&response);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(100));
    let token = list["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    let (code, response) = get(
        port,
        &format!("/api/v1/namespaces/a/dags?continue={token}"),
        Some("alice"),
    )
    .await;
    assert_eq!(code, 200, "{response}");
    let list = json_body(&response);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(30));
    assert_eq!(list["items"][0]["name"], "d100");
    assert!(list["metadata"]["continue"].is_null(), "{response}");

    // limits and tokens it did not give are refused with a Status
    for bad in ["?limit=0", "?limit=501", "?continue=zz", "?continue=6e6f"] {
        let (code, response) = get(port, &format!("/api/v1/dags{bad}"), Some("alice")).await;
        assert_eq!(code, 400, "{bad}: {response}");
        assert_eq!(json_body(&response)["kind"], "Status", "{response}");
    }

    // the UI's index: a page, and a link to the next
    let (code, page) = get(port, "/?namespace=a", Some("alice")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("/ui/namespaces/a/dags/d099\""), "{page}");
    assert!(!page.contains("/ui/namespaces/a/dags/d100\""), "{page}");
    let more = page
        .split("id=\"more\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to more DAGs")
        .replace("&amp;", "&");
    let (code, page) = get(port, &more, Some("alice")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("/ui/namespaces/a/dags/d129\""), "{page}");
    assert!(!page.contains("id=\"more\""), "{page}");
}

/// The DAG list (issue 29, item 1): searched by part of a name, filtered by health, failing
/// DAGs first on request; the next page's link keeps the filters.
#[tokio::test]
async fn the_dag_list_is_searched_filtered_and_sorted_failing_first() {
    let store = common::fresh_store("api_list_filters").await;
    let mut failing = dag("a", "zz-load-orders", &["t"]);
    failing.status = Some(dag_operator::api::DagStatus {
        conditions: vec![dag_operator::api::Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "RunsFailing".into(),
            message: "the newest 3 runs failed".into(),
            last_transition_time: chrono::Utc::now(),
            observed_generation: None,
        }],
        ..Default::default()
    });
    let mut paused = dag("a", "load-customers", &["t"]);
    paused.spec.suspend = true;
    let dags = vec![dag("a", "etl", &["t"]), failing, paused];
    let (port, _stop) = start(store, dags).await;
    let rows = |page: &str| -> Vec<(String, String)> {
        page.split("<tr data-health=\"")
            .skip(1)
            .filter_map(|row| {
                let (health, rest) = row.split_once('"')?;
                let name = rest.split("/dags/").nth(1)?.split('"').next()?;
                Some((health.to_string(), name.to_string()))
            })
            .collect()
    };
    let (code, page) = get(port, "/?q=LOAD", Some("alice")).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        rows(&page),
        [
            ("suspended".to_string(), "load-customers".to_string()),
            ("failing".to_string(), "zz-load-orders".to_string())
        ]
    );
    let (_, page) = get(port, "/?q=load&failing_first=true", Some("alice")).await;
    assert_eq!(
        rows(&page).first().map(|r| r.1.as_str()),
        Some("zz-load-orders"),
        "{page}"
    );
    let (_, page) = get(port, "/?health=failing", Some("alice")).await;
    assert_eq!(rows(&page).len(), 1, "{page}");
    let (code, page) = get(port, "/?health=sad", Some("alice")).await;
    assert_eq!(code, 400, "{page}");
}
