//! The operator's HTTP API (and, built on it, the UI): every replica serves it on `--ui-addr`.
//! Reads come from the replica's own DAG watch cache and from PostgreSQL; callers are
//! authenticated and authorized by the API server (`auth.rs`). Paths follow Kubernetes' shape:
//!
//! - `GET /api/v1/dags` — the DAGs of every namespace the caller may read
//! - `GET /api/v1/namespaces/{ns}/dags`, `…/dags/{name}` — DAGs with their newest 25 runs
//! - `GET /api/v1/namespaces/{ns}/dags/{name}/runs?before=&limit=` — runs, newest first, each
//!   with the latest try of every task (the grid), paged by logical date
//! - `GET /api/v1/namespaces/{ns}/runs/{id}` — one run with every try

pub mod api;
pub mod auth;
pub mod ui;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::api::DAG;
use axum::routing::get;
use tokio::net::TcpListener;

pub use self::api::ApiState;

/// The routes of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/dags", get(api::list_all_dags))
        .route("/api/v1/namespaces/{ns}/dags", get(api::list_dags))
        .route("/api/v1/namespaces/{ns}/dags/{name}", get(api::get_dag))
        .route(
            "/api/v1/namespaces/{ns}/dags/{name}/runs",
            get(api::list_runs),
        )
        .route("/api/v1/namespaces/{ns}/runs/{id}", get(api::get_run))
        .route("/", get(ui::index))
        .route("/login", get(ui::login_form).post(ui::login))
        .route("/logout", get(ui::logout))
        .route("/ui/namespaces/{ns}/dags/{name}", get(ui::dag_grid))
        .route("/ui/namespaces/{ns}/runs/{id}", get(ui::run_page))
        .with_state(state)
}

/// A watch cache of the DAGs (of `namespace`, or all) for the API, trimmed of what it never
/// reads. Every replica keeps one: a standby answers reads too.
pub fn dag_cache(client: kube::Client, namespace: Option<&str>) -> reflector::Store<DAG> {
    let (reader, writer) = reflector::store();
    let stream = watcher(
        crate::k8s::api::<DAG>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(crate::k8s::trim_metadata)
    .reflect(writer)
    .applied_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "API DAG watch error (retrying)");
            }
        }
    });
    reader
}

/// Binds `addr` (`host:port`, `:port`) and serves the API until `shutdown` completes; returns
/// the bound address.
pub async fn serve<F>(addr: &str, state: ApiState, shutdown: F) -> io::Result<SocketAddr>
where
    F: Future<Output = ()> + Send + 'static,
{
    let target = crate::telemetry::resolve_addr(addr, "API").await?;
    let listener = TcpListener::bind(target).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for the API: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "the API server stopped");
        }
    });
    Ok(bound)
}
