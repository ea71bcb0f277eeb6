//! The HTTP API's authorization beside the real one (e2e/tests/api.rs): the real router and
//! PostgreSQL, a table standing in for the API server's reviews, DAGs of two namespaces in the
//! cache. Nothing of a namespace the caller may not read shows in any answer.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use dag_operator::api::{DAG, DagSpec};
use dag_operator::http::auth::{Access, Caller, ReviewError, Reviewer};
use dag_operator::http::{ApiState, serve};
use futures::future::BoxFuture;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Token "alice" is alice, who may read namespace "a" only.
struct Table;

impl Reviewer for Table {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Caller>, ReviewError>> {
        Box::pin(async move {
            Ok((token == "alice").then(|| Caller {
                user: "alice".into(),
                uid: None,
                groups: vec![],
                extra: BTreeMap::new(),
            }))
        })
    }

    fn allowed<'a>(
        &'a self,
        _caller: &'a Caller,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(
            async move { Ok(access.namespace.as_deref() == Some("a") && access.verb == "get") },
        )
    }
}

fn dag(ns: &str, name: &str) -> DAG {
    let spec: DagSpec = serde_yaml::from_str(
        "schedule: '0 2 * * *'\ntasks:\n- name: t\n  container: {image: busybox}\n",
    )
    .expect("spec");
    let mut d = DAG::new(name, spec);
    d.metadata.namespace = Some(ns.to_string());
    d
}

async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await
}

/// Sends one raw request; the status and the whole response (headers and body).
async fn exchange(port: u16, request: String) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

#[tokio::test]
async fn only_readable_namespaces_show() {
    let store = common::fresh_store("api").await;
    let (reader, mut writer) = reflector::store::<DAG>();
    writer.apply_watcher_event(&Event::Init);
    for (ns, name) in [("a", "etl"), ("a", "report"), ("b", "payroll")] {
        writer.apply_watcher_event(&Event::InitApply(dag(ns, name)));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let state = ApiState {
        store,
        dags: reader,
        reviewer: Arc::new(Table),
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = serve("127.0.0.1:0", state, async move {
        let _ = stopped.await;
    })
    .await
    .expect("serve");
    let port = addr.port();

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
    let (reader, mut writer) = reflector::store::<DAG>();
    writer.apply_watcher_event(&Event::Init);
    for (ns, name) in [("a", "etl"), ("b", "payroll")] {
        writer.apply_watcher_event(&Event::InitApply(dag(ns, name)));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let state = ApiState {
        store,
        dags: reader,
        reviewer: Arc::new(Table),
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let port = serve("127.0.0.1:0", state, async move {
        let _ = stopped.await;
    })
    .await
    .expect("serve")
    .port();

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
