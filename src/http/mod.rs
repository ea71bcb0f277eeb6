//! The operator's HTTP API (and, built on it, the UI): every replica serves it on `--ui-addr`.
//! Reads come from the replica's own DAG watch cache and from PostgreSQL; callers are
//! authenticated and authorized by the API server (`auth.rs`). Paths follow Kubernetes' shape:
//!
//! - `GET /api/v1/dags?limit=&continue=` — the DAGs of every namespace the caller may read, a
//!   page at a time (`page.rs`)
//! - `GET /api/v1/namespaces/{ns}/dags?limit=&continue=`, `…/dags/{name}` — DAGs with their
//!   newest 25 runs
//! - `GET /api/v1/namespaces/{ns}/dags/{name}/runs?before=&limit=` — runs, newest first, each
//!   with the latest try of every task (the grid), paged by logical date
//! - `GET /api/v1/namespaces/{ns}/runs/{id}` — one run with every try
//! - `POST /api/v1/namespaces/{ns}/dags/{name}/runs` — trigger a run (`actions.rs`)
//! - `POST /api/v1/namespaces/{ns}/runs/{id}/actions` — cancel, re-run, mark a run; clear or
//!   mark one of its tasks (`?dryRun=true`: what it would change, nothing recorded);
//!   `GET …/runs/{id}/actions`, `GET /api/v1/namespaces/{ns}/actions/{id}` — what was asked
//! - `GET …/runs/{id}/tasks/{task}/tries/{n}/log[?follow=true]` — a try's log (`logs.rs`)
//! - `GET /api/v1/namespaces/{ns}/backfills`, `…/pools` — with their progress and slots
//!   (`resources.rs`)

pub mod actions;
pub mod api;
pub mod auth;
pub mod charts;
pub mod directory;
pub mod epoch;
pub mod extract;
pub mod guard;
pub mod headers;
pub mod layout;
pub mod limit;
pub mod live;
pub mod logs;
pub mod page;
pub mod resources;
pub mod svg;
pub mod tls;
pub mod ui;
pub mod ui_actions;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::Request;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use self::api::ApiState;
pub use self::directory::DagDirectory;

/// The routes of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/dags", get(api::list_all_dags))
        .route("/api/v1/namespaces/{ns}/dags", get(api::list_dags))
        .route("/api/v1/namespaces/{ns}/dags/{name}", get(api::get_dag))
        .route(
            "/api/v1/namespaces/{ns}/dags/{name}/runs",
            get(api::list_runs).post(actions::post_trigger),
        )
        .route("/api/v1/namespaces/{ns}/runs/{id}", get(api::get_run))
        .route(
            "/api/v1/namespaces/{ns}/runs/{id}/actions",
            get(actions::list_actions).post(actions::post_action),
        )
        .route(
            "/api/v1/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log",
            get(logs::get_log),
        )
        .route(
            "/api/v1/namespaces/{ns}/actions/{id}",
            get(actions::get_action),
        )
        .route(
            "/api/v1/namespaces/{ns}/backfills",
            get(resources::list_backfills),
        )
        .route("/api/v1/namespaces/{ns}/pools", get(resources::list_pools))
        .route(
            "/ui/namespaces/{ns}/backfills",
            get(resources::backfills_page),
        )
        .route("/ui/namespaces/{ns}/pools", get(resources::pools_page))
        .route("/", get(ui::index))
        .route(
            "/login",
            get(ui::login_form)
                .post(ui::login)
                .layer(DefaultBodyLimit::max(guard::LOGIN_BODY_LIMIT)),
        )
        .route("/logout", get(ui::logout))
        .route("/ui/namespaces/{ns}/dags/{name}", get(ui::dag_grid))
        .route("/ui/namespaces/{ns}/runs/{id}", get(ui::run_page))
        .route(
            "/ui/namespaces/{ns}/runs/{id}/actions",
            axum::routing::post(ui_actions::post_action),
        )
        .route(
            "/ui/namespaces/{ns}/runs/{id}/confirm",
            get(ui_actions::confirm),
        )
        .route(
            "/ui/namespaces/{ns}/dags/{name}/trigger",
            axum::routing::post(ui_actions::post_trigger),
        )
        .route(
            "/ui/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log",
            get(logs::log_page),
        )
        .fallback(extract::no_route)
        .method_not_allowed_fallback(extract::no_method)
        .layer(axum::Extension(Arc::new(logs::FollowLimit::default())))
        .layer(axum::middleware::from_fn(limit::scope))
        .layer(DefaultBodyLimit::max(guard::BODY_LIMIT))
        .layer(axum::middleware::from_fn(guard::forgery))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard::FailureLimit::default()),
            guard::guard,
        ))
        .layer(axum::middleware::from_fn(headers::secure))
        .with_state(state)
}

/// How long a client may take to send a request's head (request line and headers).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The UI's session settings (issue 28, finding 6; `dag-operator run --ui-*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UiSecurity {
    /// every session cookie `Secure`, whatever the request came over (the UI is reached over
    /// HTTPS only, e.g. through an Ingress that does not send `X-Forwarded-Proto`)
    pub secure_cookies: bool,
    /// the audience every token must be minted for (`kubectl create token --audience`):
    /// asked for in each TokenReview and refused unless the review confirms it (none: any
    /// token the API server accepts)
    pub token_audience: Option<String>,
    /// HTTPS only, with this PEM certificate chain and key (`tls.rs`); every session cookie is
    /// then `Secure`
    pub tls: Option<UiTls>,
}

/// The UI's certificate and key files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiTls {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

/// Binds `addr` (`host:port`, `:port`) and serves the API until `shutdown` completes; returns
/// the bound address.
pub async fn serve<F>(addr: &str, state: ApiState, shutdown: F) -> io::Result<SocketAddr>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(addr, state, HEADER_READ_TIMEOUT, shutdown).await
}

/// [`serve`] with the UI's session settings, on a runtime of its own: one thread named
/// `dagop-api` runs every connection and handler, so however much CPU readers make the API
/// spend (building a 500-run answer), the workers the engine and executor run on are never
/// held by it (issue 28, finding 2; docs/BENCHMARKS.md). Returns once the listener is bound.
pub async fn serve_ui<F>(
    addr: &str,
    state: ApiState,
    security: UiSecurity,
    shutdown: F,
) -> io::Result<SocketAddr>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let addr = addr.to_string();
    std::thread::Builder::new()
        .name("dagop-api".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match listen(&addr, state, security, HEADER_READ_TIMEOUT, shutdown).await {
                    Ok((bound, serving)) => {
                        let _ = bound_tx.send(Ok(bound));
                        serving.await;
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            });
        })?;
    bound_rx
        .await
        .map_err(|_| io::Error::other("the API's thread ended before it listened"))?
}

/// [`serve`], closing a connection whose request head has not arrived within
/// `header_read_timeout`.
pub async fn serve_with<F>(
    addr: &str,
    state: ApiState,
    header_read_timeout: Duration,
    shutdown: F,
) -> io::Result<SocketAddr>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_configured(
        addr,
        state,
        UiSecurity::default(),
        header_read_timeout,
        shutdown,
    )
    .await
}

/// [`serve_with`] and [`serve_ui`] in one (on the current runtime).
pub async fn serve_configured<F>(
    addr: &str,
    state: ApiState,
    security: UiSecurity,
    header_read_timeout: Duration,
    shutdown: F,
) -> io::Result<SocketAddr>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (bound, serving) = listen(addr, state, security, header_read_timeout, shutdown).await?;
    tokio::spawn(serving);
    Ok(bound)
}

/// Binds `addr`; the bound address and the future that serves it until `shutdown`.
async fn listen<F>(
    addr: &str,
    state: ApiState,
    security: UiSecurity,
    header_read_timeout: Duration,
    shutdown: F,
) -> io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut security = security;
    let tls = match &security.tls {
        Some(files) => Some(tls::acceptor(&files.cert_file, &files.key_file)?),
        None => None,
    };
    security.secure_cookies |= tls.is_some();
    let target = crate::telemetry::resolve_addr(addr, "API").await?;
    let listener = TcpListener::bind(target).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for the API: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    let serving = accept(
        listener,
        router(state).layer(axum::Extension(security)),
        tls,
        header_read_timeout,
        shutdown,
    );
    Ok((bound, serving))
}

/// Serves connections on `listener` until `shutdown`, then waits for those open to end. Each
/// request carries its peer's address ([`ConnectInfo`], for [`guard`]).
async fn accept<F>(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_read_timeout: Duration,
    shutdown: F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // out of file descriptors and the like: a pause, not a spin
                    tracing::warn!(error = %e, "cannot accept an API connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let http = http.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let ended = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(tls) => {
                    // the handshake is part of the request head's time
                    let stream =
                        match tokio::time::timeout(header_read_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "API connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
