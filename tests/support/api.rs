//! The HTTP API on a free local port, with a table in place of the API server's reviews:
//! token "alice" is alice, who may `get` in namespace "a" and "bench" only (Pod logs too);
//! token "bob" is bob, who may also act (`update dags/runs`) in "a"; token "carol" is carol,
//! who may `get` DAGs there but not Pod logs (`pods/log`). Shared by tests/api.rs and
//! benches/api.rs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dag_operator::api::{DAG, DagSpec};
use dag_operator::http::auth::{Access, Caller, PathAccess, ReviewError, Reviewer};
use dag_operator::http::limit::{QueryBounds, QueryLimit};
use dag_operator::http::{
    ApiState, DagDirectory, HEADER_READ_TIMEOUT, UiSecurity, serve_configured,
};
use dag_operator::store::PgStore;
use futures::future::BoxFuture;
use kube::runtime::watcher::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The table; `reviews` counts the tokens it was asked about (each would be a TokenReview).
#[derive(Default)]
pub struct Table {
    pub reviews: Arc<AtomicUsize>,
}

impl Reviewer for Table {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Caller>, ReviewError>> {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(
                (token == "alice" || token == "bob" || token == "carol").then(|| Caller {
                    user: token.into(),
                    uid: None,
                    groups: vec![],
                    extra: BTreeMap::new(),
                }),
            )
        })
    }

    fn allowed<'a>(
        &'a self,
        caller: &'a Caller,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(async move {
            let ns = access.namespace.as_deref();
            let reads = (ns == Some("a") || ns == Some("bench"))
                && access.verb == "get"
                && (access.resource != "pods" || caller.user != "carol");
            let acts = caller.user == "bob"
                && ns == Some("a")
                && access.verb == "update"
                && access.subresource == Some("runs");
            Ok(reads || acts)
        })
    }

    fn allowed_path<'a>(
        &'a self,
        _caller: &'a Caller,
        _access: &'a PathAccess,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(async { Ok(false) })
    }
}

/// A DAG of `tasks` independent tasks.
pub fn dag(ns: &str, name: &str, tasks: &[&str]) -> DAG {
    let list: String = tasks
        .iter()
        .map(|t| format!("- name: {t}\n  container: {{image: busybox}}\n"))
        .collect();
    let spec: DagSpec =
        serde_yaml::from_str(&format!("schedule: '0 2 * * *'\ntasks:\n{list}")).expect("spec");
    let mut d = DAG::new(name, spec);
    d.metadata.namespace = Some(ns.to_string());
    d
}

/// Serves the API over `store` with `dags` in the cache until the returned sender drops; the
/// port it listens on.
pub async fn start(store: PgStore, dags: Vec<DAG>) -> (u16, tokio::sync::oneshot::Sender<()>) {
    start_with(store, dags, None).await
}

/// [`start`], reading Pod logs from `logs`.
pub async fn start_with(
    store: PgStore,
    dags: Vec<DAG>,
    logs: Option<Arc<dyn dag_operator::logs::LogSource>>,
) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let (port, stop, _) = start_counting(store, dags, logs, HEADER_READ_TIMEOUT).await;
    (port, stop)
}

/// [`start_with`], waiting `header_read_timeout` for a request's head; also the count of
/// tokens the table was asked about.
pub async fn start_counting(
    store: PgStore,
    dags: Vec<DAG>,
    logs: Option<Arc<dyn dag_operator::logs::LogSource>>,
    header_read_timeout: Duration,
) -> (u16, tokio::sync::oneshot::Sender<()>, Arc<AtomicUsize>) {
    start_secured(
        store,
        dags,
        logs,
        header_read_timeout,
        UiSecurity::default(),
    )
    .await
}

/// [`start_counting`] with the UI's session settings.
pub async fn start_secured(
    store: PgStore,
    dags: Vec<DAG>,
    logs: Option<Arc<dyn dag_operator::logs::LogSource>>,
    header_read_timeout: Duration,
    security: UiSecurity,
) -> (u16, tokio::sync::oneshot::Sender<()>, Arc<AtomicUsize>) {
    start_bounded(
        store,
        dags,
        logs,
        header_read_timeout,
        security,
        QueryBounds::default(),
    )
    .await
}

/// [`start`], serving at most as many requests at once as `bounds` allow.
#[allow(dead_code)] // tests/api.rs bounds; the bench does not
pub async fn start_limited(
    store: PgStore,
    dags: Vec<DAG>,
    bounds: QueryBounds,
) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let (port, stop, _) = start_bounded(
        store,
        dags,
        None,
        HEADER_READ_TIMEOUT,
        UiSecurity::default(),
        bounds,
    )
    .await;
    (port, stop)
}

/// [`start_secured`] with request bounds.
async fn start_bounded(
    store: PgStore,
    dags: Vec<DAG>,
    logs: Option<Arc<dyn dag_operator::logs::LogSource>>,
    header_read_timeout: Duration,
    security: UiSecurity,
    bounds: QueryBounds,
) -> (u16, tokio::sync::oneshot::Sender<()>, Arc<AtomicUsize>) {
    let directory = DagDirectory::default();
    let mut relisting = None;
    directory.observe(Event::Init, &mut relisting);
    for d in dags {
        directory.observe(Event::InitApply(d), &mut relisting);
    }
    directory.observe(Event::InitDone, &mut relisting);
    let reviews = Arc::new(AtomicUsize::new(0));
    let state = ApiState {
        store,
        queries: Arc::new(QueryLimit::new(bounds)),
        dags: directory,
        reviewer: Arc::new(Table {
            reviews: reviews.clone(),
        }),
        kube: None,
        logs,
        namespaces: Arc::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = serve_configured(
        "127.0.0.1:0",
        state,
        security,
        header_read_timeout,
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("serve");
    (addr.port(), stop, reviews)
}

/// Sends one raw HTTP/1.1 request; the status and the whole response (headers and body).
pub async fn exchange(port: u16, request: String) -> (u16, String) {
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

/// `GET path` with `Authorization: Bearer <token>` when given.
pub async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await
}

/// `POST path` with a JSON body and `Authorization: Bearer <token>` when given.
#[allow(dead_code)] // tests/api.rs posts; the bench only reads
pub async fn post(port: u16, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    exchange(
        port,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}
