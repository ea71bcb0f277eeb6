//! The operator's HTTP API (and, built on it, the UI): every replica serves it on `--ui-addr`.
//! Reads come from the replica's own DAG watch cache and from PostgreSQL; callers are
//! authenticated and authorized by the API server (`auth.rs`). Paths follow Kubernetes' shape:
//!
//! - `GET /api/v1/dags` — the DAGs of every namespace the caller may read
//! - `GET /api/v1/namespaces/{ns}/dags`, `…/dags/{name}` — DAGs with their newest 25 runs
//! - `GET /api/v1/namespaces/{ns}/dags/{name}/runs?before=&limit=` — runs, newest first, each
//!   with the latest try of every task (the grid), paged by logical date
//! - `GET /api/v1/namespaces/{ns}/runs/{id}` — one run with every try
//! - `POST /api/v1/namespaces/{ns}/dags/{name}/runs` — trigger a run (`actions.rs`)
//! - `POST /api/v1/namespaces/{ns}/runs/{id}/actions` — cancel, re-run, mark a run;
//!   `GET …/runs/{id}/actions`, `GET /api/v1/namespaces/{ns}/actions/{id}` — what was asked
//! - `GET …/runs/{id}/tasks/{task}/tries/{n}/log[?follow=true]` — a try's log (`logs.rs`)
//! - `GET /api/v1/namespaces/{ns}/backfills`, `…/pools` — with their progress and slots
//!   (`resources.rs`)

pub mod actions;
pub mod api;
pub mod auth;
pub mod directory;
pub mod logs;
pub mod resources;
pub mod ui;
pub mod ui_actions;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

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
        .route("/login", get(ui::login_form).post(ui::login))
        .route("/logout", get(ui::logout))
        .route("/ui/namespaces/{ns}/dags/{name}", get(ui::dag_grid))
        .route("/ui/namespaces/{ns}/runs/{id}", get(ui::run_page))
        .route(
            "/ui/namespaces/{ns}/runs/{id}/actions",
            axum::routing::post(ui_actions::post_action),
        )
        .route(
            "/ui/namespaces/{ns}/dags/{name}/trigger",
            axum::routing::post(ui_actions::post_trigger),
        )
        .route(
            "/ui/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log",
            get(logs::log_page),
        )
        .with_state(state)
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
