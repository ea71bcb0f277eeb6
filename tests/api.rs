//! The HTTP API's authorization beside the real one (e2e/tests/api.rs): the real router and
//! PostgreSQL, a table standing in for the API server's reviews, DAGs of two namespaces in the
//! cache. Nothing of a namespace the caller may not read shows in any answer.

mod common;
#[path = "support/api.rs"]
mod support;

use support::{dag, exchange, get, start};

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
