//! The JSON API (`/api/v1/...`, paths shaped like Kubernetes'): DAGs from the watch cache,
//! runs and task tries from PostgreSQL. Every request names its caller by a bearer token and
//! is allowed by the API server (`auth.rs`); nothing of a namespace the caller may not read
//! shows in any answer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::{Access, Caller, ReviewError, Reviewer, token_of};
use super::directory::{ConditionSummary, DagDirectory, DagSummary};
use super::extract::{Path, Query};
use super::guard::AuthenticationFailed;
use super::limit::{self, Busy, QueryLimit};
use super::page::{DagPage, DagPageQuery};
use crate::key::DagKey;
use crate::store::{PgStore, RunQuery, RunRow, RunStore, StoreError, TaskRow, latest_tries};

/// What every handler works with.
#[derive(Clone)]
pub struct ApiState {
    pub store: PgStore,
    pub dags: DagDirectory,
    pub reviewer: Arc<dyn Reviewer>,
    /// the operator's client: triggers (a DAG annotation) and Pod logs; none in tests of
    /// the reads alone
    pub kube: Option<kube::Client>,
    /// where Pod logs are read (the kept tails come from `store`)
    pub logs: Option<Arc<dyn crate::logs::LogSource>>,
    /// the namespaces' current incarnations: no history from before one is served
    pub namespaces: Arc<super::epoch::NamespaceEpochs>,
    /// how many requests are served at once, per caller and overall (`limit.rs`)
    pub queries: Arc<QueryLimit>,
}

/// Why a request was not answered; rendered as a Kubernetes `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "no valid bearer token: send `Authorization: Bearer <token>` (e.g. from `kubectl create token`)"
    )]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "too many requests at once (of this user, or of all): try again in {}s",
        .0.retry_after.as_secs()
    )]
    Busy(Busy),
    /// a request axum's extractors refused, or a limit: the code and why
    #[error("{1}")]
    Rejected(StatusCode, String),
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Busy> for ApiError {
    fn from(b: Busy) -> Self {
        ApiError::Busy(b)
    }
}

/// Seconds a client is told to wait before asking again when the database had no connection.
const RETRY_UNAVAILABLE: u64 = 1;

impl ApiError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            // the statement ran past --api-statement-timeout
            ApiError::Store(e) if e.timed_out() => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Rejected(code, _) => *code,
            ApiError::Unavailable(_) | ApiError::Review(_) | ApiError::Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status();
        let message = match &self {
            ApiError::Store(e) if e.timed_out() => format!(
                "the query took longer than the API allows (--api-statement-timeout): ask for less (a smaller limit) ({e})"
            ),
            other => other.to_string(),
        };
        let retry_after = match &self {
            ApiError::Busy(b) => Some(b.retry_after.as_secs().max(1)),
            ApiError::Store(StoreError::Database(sqlx::Error::PoolTimedOut)) => {
                Some(RETRY_UNAVAILABLE)
            }
            _ => None,
        };
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason(code),
            "code": code.as_u16(),
        });
        if let Some(secs) = retry_after {
            // as the API server says it
            body["details"] = json!({"retryAfterSeconds": secs});
        }
        let mut response = (code, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if code == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            response.extensions_mut().insert(AuthenticationFailed);
        }
        response
    }
}

/// The `reason` of a `Status` with `code`, as the API server names it.
fn reason(code: StatusCode) -> String {
    match code.as_u16() {
        413 => "RequestEntityTooLarge".into(),
        504 => "Timeout".into(),
        422 => "Invalid".into(),
        other => code
            .canonical_reason()
            .map(|r| r.replace([' ', '-'], ""))
            .unwrap_or_else(|| other.to_string()),
    }
}

type Answer = Result<Json<Value>, ApiError>;

/// The caller of a request (401 without a valid token), holding one of the places
/// `limit.rs` bounds for the rest of the request (429 when none frees in time).
pub(super) async fn caller(s: &ApiState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = token_of(headers).ok_or(ApiError::Unauthorized)?;
    let who = s
        .reviewer
        .authenticate(&token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if !limit::holds_place() {
        limit::keep(s.queries.enter(&who.user).await?);
    }
    Ok(who)
}

/// The caller, allowed to read DAGs in `namespace` (403 otherwise).
pub(super) async fn reader(
    s: &ApiState,
    headers: &HeaderMap,
    namespace: &str,
) -> Result<Caller, ApiError> {
    let who = caller(s, headers).await?;
    let access = Access::read(namespace);
    if s.reviewer.allowed(&who, &access).await? {
        s.namespaces.confirm(&s.store, namespace).await?;
        Ok(who)
    } else {
        Err(ApiError::Forbidden(format!(
            "user {:?} cannot get dags.{} in namespace {namespace:?}",
            who.user,
            crate::api::GROUP
        )))
    }
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn condition_view(c: &Option<ConditionSummary>) -> Value {
    c.as_ref().map_or(Value::Null, |c| {
        json!({"status": if c.status { "True" } else { "False" }, "reason": c.reason, "message": c.message})
    })
}

fn dag_view(dag: &DagSummary, recent: &[RunRow]) -> Value {
    json!({
        "namespace": dag.key.namespace,
        "name": dag.key.name,
        "schedule": dag.schedule,
        "timezone": dag.timezone,
        "suspend": dag.suspend,
        "tasks": dag.tasks.iter().map(|t| json!({"name": t.name, "dependsOn": t.depends_on})).collect::<Vec<_>>(),
        "ready": condition_view(&dag.ready),
        "stalled": condition_view(&dag.stalled),
        "nextScheduleTime": time(dag.next_schedule_time),
        "lastScheduleTime": time(dag.last_schedule_time),
        "lastSuccessfulTime": time(dag.last_successful_time),
        "activeRuns": dag.active_runs,
        "queuedRuns": dag.queued_runs,
        "recentRuns": recent.iter().map(run_view).collect::<Vec<_>>(),
    })
}

fn run_view(r: &RunRow) -> Value {
    json!({
        "id": r.id,
        "namespace": r.dag.namespace,
        "dag": r.dag.name,
        "type": r.run_type.as_str(),
        "backfill": r.backfill_name,
        "logicalDate": r.logical_date.to_rfc3339(),
        "dataIntervalStart": r.data_interval_start.to_rfc3339(),
        "dataIntervalEnd": r.data_interval_end.to_rfc3339(),
        "state": r.state.as_str(),
        "params": r.params,
        "attempt": r.attempt,
        "createdAt": r.created_at.to_rfc3339(),
        "startedAt": time(r.started_at),
        "endedAt": time(r.ended_at),
        "specVersion": r.spec_hash,
    })
}

fn try_view(t: &TaskRow) -> Value {
    let duration = match (t.started_at, t.ended_at) {
        (Some(s), Some(e)) => json!(((e - s).num_milliseconds() as f64 / 1000.0).max(0.0)),
        _ => Value::Null,
    };
    json!({
        "task": t.task_name,
        "try": t.try_number,
        "attempt": t.attempt,
        "state": t.state.as_str(),
        "pod": t.pod_name,
        "exitCode": t.exit_code,
        "message": t.message,
        "queuedAt": time(t.queued_at),
        "startedAt": time(t.started_at),
        "endedAt": time(t.ended_at),
        "durationSeconds": duration,
        "pool": t.pool,
    })
}

/// The DAGs of `namespace`, by name.
pub(super) fn dags_in(s: &ApiState, namespace: &str) -> Vec<Arc<DagSummary>> {
    s.dags.in_namespace(namespace)
}

/// How many runs each DAG of a listing shows.
const LISTED_RUNS: i64 = 25;

/// A page of DAGs with their newest runs (one query for the whole page) and the token of the
/// next page.
async fn listing(s: &ApiState, dags: Vec<Arc<DagSummary>>, next: Option<String>) -> Answer {
    let keys: Vec<DagKey> = dags.iter().map(|d| d.key.clone()).collect();
    let recent = s.store.recent_runs(&keys, LISTED_RUNS).await?;
    let runs_of: HashMap<&DagKey, &[RunRow]> =
        recent.iter().map(|r| (&r.dag, r.runs.as_slice())).collect();
    let items: Vec<Value> = dags
        .iter()
        .map(|d| dag_view(d, runs_of.get(&d.key).copied().unwrap_or_default()))
        .collect();
    let mut metadata = json!({});
    if let Some(token) = next {
        metadata["continue"] = Value::String(token);
    }
    Ok(Json(
        json!({"kind": "DAGList", "apiVersion": "v1", "metadata": metadata, "items": items}),
    ))
}

/// The page `query` asks for (400 when malformed).
pub(super) fn page_of(query: &DagPageQuery) -> Result<DagPage, ApiError> {
    query.page().map_err(ApiError::BadRequest)
}

/// `GET /api/v1/namespaces/{ns}/dags?limit=&continue=`
pub async fn list_dags(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(query): Query<DagPageQuery>,
) -> Answer {
    let page = page_of(&query)?;
    reader(&s, &headers, &ns).await?;
    let (dags, next) = namespace_page(&s, &ns, &page, |_| true);
    listing(&s, dags, next).await
}

/// `GET /api/v1/dags?limit=&continue=`: the DAGs of every namespace the caller may read.
pub async fn list_all_dags(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<DagPageQuery>,
) -> Answer {
    let page = page_of(&query)?;
    let who = caller(&s, &headers).await?;
    let (dags, next) = readable_page(&s, &who, &page, |_| true).await?;
    listing(&s, dags, next).await
}

/// A page of the DAGs of `namespace` that `keep` keeps, by name, and the next page's token.
pub(super) fn namespace_page(
    s: &ApiState,
    namespace: &str,
    page: &DagPage,
    keep: impl Fn(&DagSummary) -> bool,
) -> (Vec<Arc<DagSummary>>, Option<String>) {
    let dags: Vec<Arc<DagSummary>> = dags_in(s, namespace)
        .into_iter()
        .filter(|d| page.admits(&d.key) && keep(d))
        .take(page.limit + 1)
        .collect();
    page.cut(dags, |d| &d.key)
}

/// A page of the DAGs that `keep` keeps of every namespace `who` may read, by namespace and
/// name, and the next page's token. Namespaces before the page's start are not asked about.
pub(super) async fn readable_page(
    s: &ApiState,
    who: &Caller,
    page: &DagPage,
    keep: impl Fn(&DagSummary) -> bool,
) -> Result<(Vec<Arc<DagSummary>>, Option<String>), ApiError> {
    let mut dags = Vec::new();
    for ns in s.dags.namespaces() {
        if dags.len() > page.limit {
            break;
        }
        if !page.reaches(&ns)
            || !s.reviewer.allowed(who, &Access::read(&ns)).await?
            || s.namespaces.confirm(&s.store, &ns).await.is_err()
        {
            continue;
        }
        dags.extend(
            dags_in(s, &ns)
                .into_iter()
                .filter(|d| page.admits(&d.key) && keep(d))
                .take(page.limit + 1 - dags.len()),
        );
    }
    Ok(page.cut(dags, |d| &d.key))
}

pub(super) fn find_dag(s: &ApiState, ns: &str, name: &str) -> Result<Arc<DagSummary>, ApiError> {
    s.dags
        .get(&DagKey::new(ns, name))
        .ok_or_else(|| ApiError::NotFound(format!("dag {name:?} not found in namespace {ns:?}")))
}

/// `GET /api/v1/namespaces/{ns}/dags/{name}`
pub async fn get_dag(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Answer {
    reader(&s, &headers, &ns).await?;
    let dag = find_dag(&s, &ns, &name)?;
    let recent = s
        .store
        .recent_runs(&[DagKey::new(&ns, &name)], LISTED_RUNS)
        .await?;
    let runs = recent
        .first()
        .map(|r| r.runs.as_slice())
        .unwrap_or_default();
    Ok(Json(dag_view(&dag, runs)))
}

/// Paging of a DAG's runs, newest first.
#[derive(Debug, Deserialize)]
pub struct RunPage {
    /// runs with a logical date before this (the `next` of the previous page)
    pub before: Option<DateTime<Utc>>,
    /// at most this many (1 to 500; default 50)
    pub limit: Option<i64>,
}

/// `GET /api/v1/namespaces/{ns}/dags/{name}/runs?before=&limit=`
pub async fn list_runs(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Query(page): Query<RunPage>,
) -> Answer {
    reader(&s, &headers, &ns).await?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} is not in 1..=500"
        )));
    }
    let query = RunQuery {
        before: page.before,
        limit,
        ..RunQuery::default()
    };
    let runs = s.store.query_runs(&DagKey::new(&ns, &name), &query).await?;
    let next = (runs.len() as i64 == limit)
        .then(|| runs.last().map(|r| r.logical_date.to_rfc3339()))
        .flatten();
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let tries = s.store.task_instances(&ids).await?;
    // the latest try of each task, by run: the grid's cells (one pass, not one per run)
    let mut cells_of: HashMap<Uuid, Vec<&TaskRow>> = HashMap::new();
    for ((run, _), t) in latest_tries(&tries) {
        cells_of.entry(run).or_default().push(t);
    }
    let items: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut v = run_view(r);
            let mut cells = cells_of.remove(&r.id).unwrap_or_default();
            cells.sort_by(|a, b| a.task_name.cmp(&b.task_name));
            v["tasks"] = cells.into_iter().map(try_view).collect();
            v
        })
        .collect();
    Ok(Json(
        json!({"kind": "RunList", "items": items, "next": next}),
    ))
}

/// Run `id` of namespace `ns` (404 when there is none there); the caller's right to read the
/// namespace is checked before.
pub(super) async fn run_in(s: &ApiState, ns: &str, id: &str) -> Result<RunRow, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no run {id:?}")))?;
    s.store
        .run(id)
        .await?
        .filter(|r| r.dag.namespace == ns)
        .ok_or_else(|| ApiError::NotFound(format!("run {id} not found in namespace {ns:?}")))
}

/// A run of namespace `ns` the caller may read, with every try (by task, attempt, try).
pub(super) async fn run_with_tries(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    id: &str,
) -> Result<(RunRow, Vec<TaskRow>), ApiError> {
    reader(s, headers, ns).await?;
    let run = run_in(s, ns, id).await?;
    let mut tries = s.store.task_instances(&[run.id]).await?;
    tries.sort_by(|a, b| {
        (a.task_name.as_str(), a.attempt, a.try_number).cmp(&(
            b.task_name.as_str(),
            b.attempt,
            b.try_number,
        ))
    });
    Ok((run, tries))
}

/// `GET /api/v1/namespaces/{ns}/runs/{id}`
pub async fn get_run(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
) -> Answer {
    let (run, tries) = run_with_tries(&s, &headers, &ns, &id).await?;
    let mut v = run_view(&run);
    v["tries"] = tries.iter().map(try_view).collect();
    Ok(Json(v))
}
