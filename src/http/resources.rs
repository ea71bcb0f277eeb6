//! Backfills and Pools of a namespace, as JSON and as pages: read from the API server (their
//! status is what the operator wrote), allowed by the caller's own `list` on `backfills` or
//! `pools`.
//!
//! - `GET /api/v1/namespaces/{ns}/backfills`, `/ui/namespaces/{ns}/backfills` — each with its
//!   DAG, range, phase and progress (the page refreshes itself while one is active)
//! - `GET /api/v1/namespaces/{ns}/pools`, `/ui/namespaces/{ns}/pools` — slots used, queued, open

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use kube::api::{Api, ListParams};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::api::{ApiError, ApiState, caller};
use super::auth::Access;
use super::extract::Path;
use super::ui::{page, refused, time};
use crate::api::backfill::BackfillPhase;
use crate::api::{Backfill, Pool};

/// The caller, allowed to list `resource` in `ns`.
async fn lister(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    resource: &'static str,
) -> Result<(), ApiError> {
    let who = caller(s, headers).await?;
    let access = Access {
        namespace: Some(ns.to_string()),
        group: crate::api::GROUP,
        verb: "list",
        resource,
        subresource: None,
        name: None,
    };
    if s.reviewer.allowed(&who, &access).await? {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "user {:?} cannot list {resource}.{} in namespace {ns:?}",
            who.user,
            crate::api::GROUP
        )))
    }
}

fn client(s: &ApiState) -> Result<kube::Client, ApiError> {
    s.kube
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this server has no Kubernetes client".into()))
}

fn unavailable(e: kube::Error) -> ApiError {
    ApiError::Unavailable(format!("cannot list from the API server: {e}"))
}

/// The objects of kind `K` in `ns` the caller may list, by name.
async fn listed<K>(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    resource: &'static str,
) -> Result<Vec<K>, ApiError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    lister(s, headers, ns, resource).await?;
    let api: Api<K> = Api::namespaced(client(s)?, ns);
    let mut items = api
        .list(&ListParams::default())
        .await
        .map_err(unavailable)?
        .items;
    items.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    Ok(items)
}

async fn backfills(s: &ApiState, headers: &HeaderMap, ns: &str) -> Result<Vec<Backfill>, ApiError> {
    listed(s, headers, ns, "backfills").await
}

async fn pools(s: &ApiState, headers: &HeaderMap, ns: &str) -> Result<Vec<Pool>, ApiError> {
    listed(s, headers, ns, "pools").await
}

fn phase_of(b: &Backfill) -> BackfillPhase {
    b.status
        .as_ref()
        .and_then(|st| st.phase)
        .unwrap_or(BackfillPhase::Pending)
}

fn backfill_view(b: &Backfill) -> Value {
    let st = b.status.clone().unwrap_or_default();
    json!({
        "name": b.metadata.name,
        "dag": b.spec.dag_ref.name,
        "start": b.spec.start.to_rfc3339(),
        "end": b.spec.end.to_rfc3339(),
        "suspend": b.spec.suspend,
        "phase": format!("{:?}", phase_of(b)),
        "totalRuns": st.total_runs,
        "skippedRuns": st.skipped_runs,
        "createdRuns": st.created_runs,
        "activeRuns": st.active_runs,
        "succeededRuns": st.succeeded_runs,
        "failedRuns": st.failed_runs,
        "progress": st.progress,
        "startedAt": st.started_at.map(|t| t.to_rfc3339()),
        "completedAt": st.completed_at.map(|t| t.to_rfc3339()),
    })
}

fn pool_view(p: &Pool) -> Value {
    let st = p.status.clone().unwrap_or_default();
    json!({
        "name": p.metadata.name,
        "slots": p.spec.slots,
        "usedSlots": st.used_slots,
        "queuedTasks": st.queued_tasks,
        "openSlots": st.open_slots,
    })
}

/// `GET /api/v1/namespaces/{ns}/backfills`
pub async fn list_backfills(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let items = backfills(&s, &headers, &ns).await?;
    Ok(Json(
        json!({"kind": "BackfillList", "items": items.iter().map(backfill_view).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/v1/namespaces/{ns}/pools`
pub async fn list_pools(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let items = pools(&s, &headers, &ns).await?;
    Ok(Json(
        json!({"kind": "PoolList", "items": items.iter().map(pool_view).collect::<Vec<_>>()}),
    ))
}

/// Seconds between refreshes of a page that shows something in progress.
const LIVE_REFRESH_SECS: u32 = 5;

fn backfills_markup(ns: &str, items: &[Backfill]) -> Markup {
    let live = items
        .iter()
        .any(|b| matches!(phase_of(b), BackfillPhase::Pending | BackfillPhase::Running));
    html! {
        @if live { meta http-equiv="refresh" content=(LIVE_REFRESH_SECS); }
        p { a href=(format!("/ui/namespaces/{ns}/pools")) { "Pools of " (ns) } }
        table id="backfills" {
            tr { th { "Backfill" } th { "DAG" } th { "range" } th { "phase" } th { "progress" }
                 th { "active" } th { "succeeded" } th { "failed" } th { "skipped" } th { "started / completed" } }
            @for b in items {
                @let st = b.status.clone().unwrap_or_default();
                @let done = st.succeeded_runs + st.failed_runs + st.skipped_runs;
                tr {
                    td { (b.metadata.name.clone().unwrap_or_default()) }
                    td { a href=(format!("/ui/namespaces/{ns}/dags/{}?type=backfill", b.spec.dag_ref.name)) { (b.spec.dag_ref.name) } }
                    td { (b.spec.start.to_rfc3339()) " – " (b.spec.end.to_rfc3339()) }
                    td { (format!("{:?}", phase_of(b))) @if b.spec.suspend { " (suspended)" } }
                    td { progress value=(done) max=(st.total_runs.max(1)) {} " " (st.progress.clone().unwrap_or_default()) }
                    td { (st.active_runs) }
                    td { (st.succeeded_runs) }
                    td { (st.failed_runs) }
                    td { (st.skipped_runs) }
                    td { (time(st.started_at)) " / " (time(st.completed_at)) }
                }
            }
        }
        @if items.is_empty() { p { "No Backfills." } }
    }
}

/// `GET /ui/namespaces/{ns}/backfills`
pub async fn backfills_page(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Response {
    match backfills(&s, &headers, &ns).await {
        Ok(items) => {
            page(&format!("Backfills of {ns}"), backfills_markup(&ns, &items)).into_response()
        }
        Err(e) => refused(e),
    }
}

/// `GET /ui/namespaces/{ns}/pools`
pub async fn pools_page(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Response {
    match pools(&s, &headers, &ns).await {
        Ok(items) => page(
            &format!("Pools of {ns}"),
            html! {
                p { a href=(format!("/ui/namespaces/{ns}/backfills")) { "Backfills of " (ns) } }
                table id="pools" {
                    tr { th { "Pool" } th { "slots" } th { "used" } th { "queued" } th { "open" } th { "" } }
                    @for p in &items {
                        @let st = p.status.clone().unwrap_or_default();
                        tr {
                            td { (p.metadata.name.clone().unwrap_or_default()) }
                            td { (p.spec.slots) }
                            td { (st.used_slots) }
                            td { (st.queued_tasks) }
                            td { (st.open_slots) }
                            td { progress value=(st.used_slots) max=(p.spec.slots.max(1)) {} }
                        }
                    }
                }
                @if items.is_empty() { p { "No Pools." } }
            },
        )
        .into_response(),
        Err(e) => refused(e),
    }
}
