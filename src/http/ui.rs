//! The UI: server-rendered pages over the same reads and the same reviews as the JSON API.
//! The token is asked for once (`/login`) and kept in an HttpOnly session cookie; every page
//! is reviewed like an API request. No build chain: HTML, a little CSS, and a few lines of
//! script only where a running try's log is followed.
//!
//! - `/` — DAGs of every namespace the caller may read (`?namespace=` filters): schedule,
//!   zone, next run, suspended, Ready/Stalled with message, the newest 25 runs as squares
//! - `/ui/namespaces/{ns}/dags/{name}` — the grid (runs × tasks, each cell the latest try),
//!   the tasks with their upstreams and the newest run's states; filters by state, type and
//!   date; pages through history of any length
//! - `/ui/namespaces/{ns}/runs/{id}` — one run: params, data interval, spec version, every try
//!   with a link to its log, the actions asked of it, and buttons to act (`ui_actions.rs`)
//! - `/ui/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log` — a try's log (`logs.rs`)
//! - `/ui/namespaces/{ns}/backfills`, `…/pools` — progress bars and slots (`resources.rs`)

use std::collections::HashMap;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use uuid::Uuid;

use super::api::{
    ApiError, caller, find_dag, namespace_page, page_of, readable_page, reader, run_with_tries,
};
use super::auth::SESSION_COOKIE;
use super::directory::{DagSummary, Health};
use super::extract::{Form, Path, Query};
use super::guard::{AuthenticationFailed, MAX_TOKEN_BYTES, too_long};
use super::page::DagPageQuery;
use super::{ApiState, UiSecurity};
use crate::graph::TaskState;
use crate::key::DagKey;
use crate::store::{RunQuery, RunRow, RunState, RunStore, RunType, latest_tries};

/// Runs per page of the grid, and squares per DAG in the list.
const GRID_RUNS: i64 = 25;

/// Weeks the calendar of daily outcomes shows.
const CALENDAR_WEEKS: u32 = 12;

const STYLE: &str = r#"
:root{color-scheme:light dark}
body{font:14px system-ui,sans-serif;margin:0;color:#222;background:#fff}
header{background:#017cee;color:#fff;padding:8px 16px;display:flex;flex-wrap:wrap;gap:16px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:16px}
table{border-collapse:collapse}
th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.sq{display:inline-block;width:12px;height:12px;margin:1px;border:1px solid #999;font-size:9px;line-height:12px;text-align:center;color:#000;text-decoration:none;overflow:hidden}
.cell{display:block;width:16px;height:16px;border:1px solid #999;font-size:11px;line-height:16px;text-align:center;color:#000;text-decoration:none;overflow:hidden}
.msg{color:#555;max-width:40em}
.bad{color:#b00}
.graph-scroll{overflow-x:auto;max-width:100%}
svg.graph text{font-family:system-ui,sans-serif;fill:#222}
svg.graph a:focus rect,svg.graph a:hover rect{stroke-width:5}
a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible,textarea:focus-visible{outline:3px solid #e69f00;outline-offset:1px}
form.filters{margin:8px 0;display:flex;flex-wrap:wrap;gap:8px;align-items:end}
pre{background:#f6f6f6;padding:8px;overflow-x:auto}
@media (max-width:760px){main{padding:8px}table{display:block;overflow-x:auto;max-width:100%}}
@media (prefers-color-scheme:dark){
body{background:#15181c;color:#ddd}
header{background:#0b4f8a}
th,td{border-bottom-color:#333}
.msg{color:#aaa}
.bad{color:#ff8a80}
pre{background:#22262b}
a{color:#8ab4f8}
svg.gantt text,svg.durations text,svg.calendar text{fill:#ddd}
}
"#;

/// A task state's colour: Okabe and Ito's palette, told apart with each colour-blindness
/// (issue 29, item 8), in Airflow's order of meaning (no try yet: white). A state is never
/// shown by colour alone: its symbol (`svg::state_mark`) or its name goes with it.
pub(super) fn task_colour(state: Option<TaskState>) -> &'static str {
    match state {
        Some(TaskState::Success) => "#009e73",
        Some(TaskState::Failed) => "#d55e00",
        Some(TaskState::Running) => "#56b4e9",
        Some(TaskState::Queued) => "#999999",
        Some(TaskState::UpForRetry) => "#f0e442",
        Some(TaskState::UpstreamFailed) => "#e69f00",
        Some(TaskState::Skipped) => "#cc79a7",
        Some(TaskState::Cancelled) => "#c8c8c8",
        Some(TaskState::Pending) | None => "#ffffff",
    }
}

/// A run state's symbol: that of the task state of the same name.
fn run_mark(state: RunState) -> &'static str {
    super::svg::state_mark(Some(run_task_state(state)))
}

/// The task state a run state is drawn as.
fn run_task_state(state: RunState) -> TaskState {
    match state {
        RunState::Running => TaskState::Running,
        RunState::Success => TaskState::Success,
        RunState::Failed => TaskState::Failed,
        RunState::Cancelled => TaskState::Cancelled,
    }
}

/// A run state's colour: that of the task state of the same name.
pub(super) fn run_colour(state: RunState) -> &'static str {
    task_colour(Some(run_task_state(state)))
}

/// `name=value&…`, each value percent-encoded.
fn query_string(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            let encoded: String = value
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{name}={encoded}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The live pages' poller (`live.rs`), as a page ends with it.
fn live_script() -> Markup {
    html! {
        script data-every=(super::live::LIVE_INTERVAL_SECONDS) { (PreEscaped(super::live::LIVE_SCRIPT)) }
    }
}

pub(super) fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · dag-operator" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a href="/" { "dag-operator" }
                    span { (title) }
                    a href="/logout" style="margin-left:auto" { "log out" }
                }
                main { (body) }
            }
        }
    }
}

/// A failed page: to the login page when the caller is not known, else the error.
pub(super) fn refused(e: ApiError) -> Response {
    match e {
        ApiError::Unauthorized => {
            let mut response = Redirect::to("/login").into_response();
            response.extensions_mut().insert(AuthenticationFailed);
            response
        }
        ApiError::Forbidden(m) => (
            StatusCode::FORBIDDEN,
            page("Forbidden", html! { p.bad { (m) } }),
        )
            .into_response(),
        ApiError::NotFound(m) => (
            StatusCode::NOT_FOUND,
            page("Not found", html! { p { (m) } }),
        )
            .into_response(),
        ApiError::BadRequest(m) => (
            StatusCode::BAD_REQUEST,
            page("Bad request", html! { p.bad { (m) } }),
        )
            .into_response(),
        other => {
            // 429 (with when to come back), 504 for a query too slow, else 503
            let code = other.status();
            let retry = match &other {
                ApiError::Busy(b) => {
                    HeaderValue::from_str(&b.retry_after.as_secs().to_string()).ok()
                }
                _ => None,
            };
            let mut response = (
                code,
                page("Unavailable", html! { p.bad { (other.to_string()) } }),
            )
                .into_response();
            if let Some(secs) = retry {
                response.headers_mut().insert(header::RETRY_AFTER, secs);
            }
            response
        }
    }
}

pub(super) fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub(super) fn run_link(r: &RunRow) -> String {
    format!("/ui/namespaces/{}/runs/{}", r.dag.namespace, r.id)
}

/// `GET /login`
pub async fn login_form(security: Option<Extension<UiSecurity>>) -> Markup {
    login_page(audience(&security), None)
}

/// The audience UI tokens must be minted for, if one is required.
fn audience(security: &Option<Extension<UiSecurity>>) -> Option<&str> {
    security
        .as_ref()
        .and_then(|Extension(s)| s.token_audience.as_deref())
}

fn login_page(audience: Option<&str>, error: Option<&str>) -> Markup {
    let mint = match audience {
        Some(a) => format!("kubectl create token <service-account> --audience {a}"),
        None => "kubectl create token <service-account>".to_string(),
    };
    page(
        "Log in",
        html! {
            p { "Paste a Kubernetes token, e.g. from " code { (mint) } ". "
                @if audience.is_some() { "This UI takes only tokens minted for that audience. " }
                "It is kept for this browser session only; what you see is what its RBAC allows." }
            @if let Some(e) = error { p.bad { (e) } }
            form method="post" action="/login" {
                textarea name="token" rows="6" cols="80" autofocus {}
                br;
                button type="submit" { "Log in" }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: the token is reviewed before it is kept.
pub async fn login(
    State(s): State<ApiState>,
    security: Option<Extension<UiSecurity>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // login CSRF (another site logging the browser in under its own token): `guard::forgery`
    let secure = security
        .as_ref()
        .is_some_and(|Extension(s)| s.secure_cookies)
        || over_https(&headers);
    let token = form.token.trim().to_string();
    if token.len() > MAX_TOKEN_BYTES {
        return too_long().into_response();
    }
    let answer = if token.is_empty() {
        Ok(None)
    } else {
        s.reviewer.authenticate(&token).await
    };
    match answer {
        Ok(Some(_)) => {
            let cookie = session_cookie(&token, secure, false);
            let mut response = Redirect::to("/").into_response();
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    response.headers_mut().insert(header::SET_COOKIE, v);
                    response
                }
                Err(_) => (
                    StatusCode::BAD_REQUEST,
                    login_page(audience(&security), Some("that is not a token")),
                )
                    .into_response(),
            }
        }
        Ok(None) => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                login_page(
                    audience(&security),
                    Some("the API server does not accept this token"),
                ),
            )
                .into_response();
            response.extensions_mut().insert(AuthenticationFailed);
            response
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            login_page(audience(&security), Some(&e.to_string())),
        )
            .into_response(),
    }
}

/// `GET /logout`
pub async fn logout(security: Option<Extension<UiSecurity>>, headers: HeaderMap) -> Response {
    let secure = security.is_some_and(|Extension(s)| s.secure_cookies) || over_https(&headers);
    let mut response = Redirect::to("/login").into_response();
    let gone = session_cookie("", secure, true);
    if let Ok(v) = HeaderValue::from_str(&gone) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The session cookie's `Set-Cookie` value: HttpOnly (no page script reads it),
/// SameSite=Strict (no other site's request carries it), no expiry (gone with the browser
/// session; `gone`: expired now), and `Secure` when `secure`.
fn session_cookie(token: &str, secure: bool, gone: bool) -> String {
    let mut cookie = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        cookie.push_str("; Secure");
    }
    if gone {
        cookie.push_str("; Max-Age=0");
    }
    cookie
}

/// Whether the browser reached us over HTTPS, as a TLS-terminating proxy says
/// (`X-Forwarded-Proto: https`, `Forwarded: proto=https`). Trusted although anyone can send
/// it: it can only add `Secure` to the sender's own cookie.
pub(super) fn over_https(headers: &HeaderMap) -> bool {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    values("x-forwarded-proto")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("https"))
        || values("forwarded")
            .iter()
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("proto")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
            })
}

#[derive(Deserialize)]
pub struct ListFilter {
    namespace: Option<String>,
    /// part of the DAG's name, any case
    q: Option<String>,
    /// only DAGs of this health (`failing`, `suspended`, `running`, `ok`)
    health: Option<String>,
    /// failing DAGs first (within the page)
    #[serde(default)]
    failing_first: bool,
    /// the next page's token (`page.rs`)
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

fn condition_cell(dag: &DagSummary) -> Markup {
    let stalled = dag.stalled.as_ref().filter(|c| c.status);
    html! {
        @match (stalled, &dag.ready) {
            (Some(c), _) => { span.bad { "Stalled: " (c.reason) } div.msg { (c.message) } }
            (None, Some(c)) if c.status => { span { "Ready" } div.msg { (c.message) } }
            (None, Some(c)) => { span.bad { (c.reason) } div.msg { (c.message) } }
            (None, None) => { span { "—" } }
        }
    }
}

/// `GET /`
pub async fn index(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(filter): Query<ListFilter>,
) -> Response {
    match index_page(&s, &headers, filter).await {
        Ok(m) => m.into_response(),
        Err(e) => refused(e),
    }
}

async fn index_page(
    s: &ApiState,
    headers: &HeaderMap,
    filter: ListFilter,
) -> Result<Markup, ApiError> {
    let wanted = page_of(&DagPageQuery {
        limit: None,
        continue_token: filter.continue_token.clone(),
    })?;
    let q = filter
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    let health = match filter.health.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => Some(Health::parse(h).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "no health {h:?}: failing, suspended, running or ok"
            ))
        })?),
        None => None,
    };
    let keep = |d: &DagSummary| {
        q.as_ref()
            .is_none_or(|q| d.key.name.to_lowercase().contains(q))
            && health.is_none_or(|h| d.health() == h)
    };
    let (mut dags, next) = match filter.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => {
            reader(s, headers, ns).await?;
            namespace_page(s, ns, &wanted, keep)
        }
        None => {
            let who = caller(s, headers).await?;
            readable_page(s, &who, &wanted, keep).await?
        }
    };
    if filter.failing_first {
        // stable: by name within each kind
        dags.sort_by_key(|d| d.health() != Health::Failing);
    }
    // the next page keeps the filters
    let more = next.map(|token| {
        let mut query = vec![("continue", token)];
        for (name, value) in [
            ("namespace", filter.namespace.clone()),
            ("q", filter.q.clone()),
            ("health", filter.health.clone()),
        ] {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                query.push((name, v));
            }
        }
        if filter.failing_first {
            query.push(("failing_first", "true".to_string()));
        }
        format!("/?{}", query_string(&query))
    });
    let keys: Vec<DagKey> = dags.iter().map(|d| d.key.clone()).collect();
    let recent = s.store.recent_runs(&keys, GRID_RUNS).await?;
    let runs_of: HashMap<&DagKey, &Vec<RunRow>> =
        recent.iter().map(|r| (&r.dag, &r.runs)).collect();
    Ok(page(
        "DAGs",
        html! {
            form.filters method="get" action="/" {
                label { "namespace " input name="namespace" value=(filter.namespace.clone().unwrap_or_default()); }
                label { "name " input name="q" type="search" placeholder="part of a name" value=(filter.q.clone().unwrap_or_default()); }
                label { "health " select name="health" {
                    option value="" { "any" }
                    @for h in [Health::Failing, Health::Suspended, Health::Running, Health::Ok] {
                        option value=(h.as_str()) selected[health == Some(h)] { (h.as_str()) }
                    }
                } }
                label { input type="checkbox" name="failing_first" value="true" checked[filter.failing_first]; " failing first" }
                button { "filter" }
            }
            table {
                tr { th { "namespace" } th { "DAG" } th { "schedule" } th { "zone" } th { "next run" }
                     th { "suspended" } th { "condition" } th { "runs (newest right)" } }
                @for (d, key) in dags.iter().zip(&keys) {
                    tr data-health=(d.health().as_str()) {
                        td { (key.namespace) }
                        td { a href=(format!("/ui/namespaces/{}/dags/{}", key.namespace, key.name)) { (key.name) } }
                        td { code { (d.schedule.clone().unwrap_or_default()) } }
                        td { (d.timezone.clone().unwrap_or_default()) }
                        td { (time(d.next_schedule_time)) }
                        td { @if d.suspend { "yes" } }
                        td { (condition_cell(d)) }
                        td {
                            @for r in runs_of.get(key).map(|v| v.as_slice()).unwrap_or_default().iter().rev() {
                                a.sq href=(run_link(r)) title=(format!("{} {}", r.logical_date.to_rfc3339(), r.state.as_str()))
                                    aria-label=(format!("run {} {}", r.logical_date.to_rfc3339(), r.state.as_str()))
                                    style=(format!("background:{}", run_colour(r.state))) { (run_mark(r.state)) }
                            }
                        }
                    }
                }
            }
            @if let Some(more) = more {
                p { a #more href=(more) { "more DAGs →" } }
            }
        },
    ))
}

#[derive(Deserialize, Default)]
pub struct GridFilter {
    before: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    state: Option<String>,
    #[serde(rename = "type")]
    run_type: Option<String>,
    /// the action id of a trigger just asked for
    triggered: Option<i64>,
}

/// `GET /ui/namespaces/{ns}/dags/{name}`
pub async fn dag_grid(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Query(filter): Query<GridFilter>,
) -> Response {
    match grid_page(&s, &headers, &ns, &name, filter).await {
        Ok(m) => super::live::conditional(&headers, m),
        Err(e) => refused(e),
    }
}

async fn grid_page(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
    filter: GridFilter,
) -> Result<Markup, ApiError> {
    reader(s, headers, ns).await?;
    let dag = find_dag(s, ns, name)?;
    let state = filter.state.as_deref().filter(|v| !v.is_empty());
    let run_type = filter.run_type.as_deref().filter(|v| !v.is_empty());
    let query = RunQuery {
        before: filter.before,
        since: filter.since,
        state: state
            .map(|v| {
                RunState::parse(v)
                    .ok_or_else(|| ApiError::BadRequest(format!("no run state {v:?}")))
            })
            .transpose()?,
        run_type: run_type
            .map(|v| {
                RunType::parse(v).ok_or_else(|| ApiError::BadRequest(format!("no run type {v:?}")))
            })
            .transpose()?,
        limit: GRID_RUNS,
    };
    let runs = s.store.query_runs(&DagKey::new(ns, name), &query).await?;
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let tries = s.store.task_instances(&ids).await?;
    let latest = latest_tries(&tries);
    let newest = runs.first();
    let next = (runs.len() as i64 == GRID_RUNS)
        .then(|| runs.last().map(|r| r.logical_date))
        .flatten();
    let here = format!("/ui/namespaces/{ns}/dags/{name}");
    let now = Utc::now();
    let (durations, longest) = super::charts::durations(&runs, now);
    let zone = dag.timezone.clone().unwrap_or_else(|| "UTC".to_string());
    let today = super::charts::today_in(&zone, now);
    let first = super::charts::calendar_start(today, CALENDAR_WEEKS);
    let since = super::charts::day_start(&zone, first);
    let counts = s
        .store
        .daily_outcomes(&DagKey::new(ns, name), since, &zone)
        .await?;
    let calendar = super::charts::calendar(&counts, today, CALENDAR_WEEKS);
    let keep = |before: DateTime<Utc>| {
        let mut q = format!("?before={}", before.to_rfc3339().replace('+', "%2B"));
        if let Some(v) = state {
            q.push_str(&format!("&state={v}"));
        }
        if let Some(v) = run_type {
            q.push_str(&format!("&type={v}"));
        }
        q
    };
    Ok(page(
        &format!("{ns}/{name}"),
        html! {
            p { a href=(format!("/ui/namespaces/{ns}/backfills")) { "Backfills" } " · "
                a href=(format!("/ui/namespaces/{ns}/pools")) { "Pools" } " of " (ns) }
            p { "schedule " code { (dag.schedule.clone().unwrap_or_else(|| "none".into())) }
                " in " (dag.timezone.clone().unwrap_or_else(|| "the operator's zone".into()))
                @if dag.suspend { " · suspended" } }
            (condition_cell(&dag))
            @if let Some(id) = filter.triggered { p id="notice" { "Triggered (action " (id) "): the run appears here once the operator handles the trigger." } }
            form id="trigger" method="post" action=(format!("{here}/trigger")) {
                label { "params (JSON object) " input name="params" placeholder=r#"{"key": "value"}"# size="40"; }
                " " button { "Trigger a run" }
            }
            div id="graph" data-live {
            h3 { "Tasks" @if let Some(r) = newest { " (states of the run for " (r.logical_date.to_rfc3339()) ")" } }
            div.graph-scroll {
                (super::svg::task_graph(&dag.tasks, |task| super::svg::TaskMark {
                    state: newest.and_then(|r| latest.get(&(r.id, task))).map(|t| t.state),
                    link: newest.map(|r| format!("{}#task-{task}", run_link(r))),
                }))
            }
            }
            div id="durations" data-live {
                @if !durations.is_empty() {
                    h3 { "Durations" }
                    div.graph-scroll {
                        (super::svg::durations_chart(&durations, longest, |b| format!("/ui/namespaces/{ns}/runs/{}", b.run)))
                    }
                }
            }
            h3 { "Calendar " small { "(dates in " (zone) ")" } }
            div.graph-scroll id="calendar" data-live {
                (super::svg::calendar_chart(&calendar, |date| {
                    let end = super::charts::day_start(&zone, date.succ_opt().unwrap_or(date));
                    format!("{here}{}", keep(end))
                }))
            }
            h3 { "Grid" }
            form.filters method="get" action=(here) {
                label { "state " select name="state" {
                    option value="" { "any" }
                    @for v in ["running", "success", "failed", "cancelled"] { option value=(v) selected[state == Some(v)] { (v) } }
                } }
                label { "type " select name="type" {
                    option value="" { "any" }
                    @for v in ["scheduled", "manual", "backfill"] { option value=(v) selected[run_type == Some(v)] { (v) } }
                } }
                label { "since " input name="since" placeholder="2024-01-01T00:00:00Z" value=(filter.since.map(|t| t.to_rfc3339()).unwrap_or_default()); }
                button { "filter" }
            }
            table id="grid" data-live {
                tr {
                    th { "task \\ run" }
                    @for r in runs.iter().rev() {
                        th { a.cell href=(run_link(r)) title=(format!("{} {} {}", r.run_type.as_str(), r.logical_date.to_rfc3339(), r.state.as_str()))
                            aria-label=(format!("run {} {}", r.logical_date.to_rfc3339(), r.state.as_str()))
                            style=(format!("background:{}", run_colour(r.state))) { (run_mark(r.state)) } }
                    }
                }
                @for t in &dag.tasks {
                    tr {
                        td { (t.name) }
                        @for r in runs.iter().rev() {
                            @let cell = latest.get(&(r.id, t.name.as_str()));
                            @let state = cell.map(|c| c.state);
                            @let st = state.map(TaskState::as_str).unwrap_or("none");
                            td { a.cell href=(format!("{}#task-{}", run_link(r), t.name)) title=(format!("{} · {} · try {}", t.name, st, cell.map(|c| c.try_number).unwrap_or(0)))
                                data-state=(st) style=(format!("background:{}", task_colour(state))) { (super::svg::state_mark(state)) } }
                        }
                    }
                }
            }
            @if runs.is_empty() { p { "No runs." } }
            @if let Some(b) = next { p { a href=(format!("{here}{}", keep(b))) { "older runs →" } } }
            (live_script())
        },
    ))
}

/// `GET /ui/namespaces/{ns}/runs/{id}`
#[derive(Deserialize, Default)]
pub struct RunPageQuery {
    /// the action id just asked for
    asked: Option<i64>,
}

pub async fn run_page(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
    Query(q): Query<RunPageQuery>,
) -> Response {
    match run_view(&s, &headers, &ns, &id, q).await {
        Ok(m) => super::live::conditional(&headers, m),
        Err(e) => refused(e),
    }
}

/// A task row's actions: clear or mark it (with its downstream / upstream tasks), each
/// leading to a confirmation page that lists what will change (nothing changes before).
fn task_actions(here: &str, task: &str) -> Markup {
    html! {
        form.task-actions method="get" action=(format!("{here}/confirm")) {
            input type="hidden" name="task" value=(task);
            label { input type="checkbox" name="downstream"; " downstream" } " "
            label { input type="checkbox" name="upstream"; " upstream" } " "
            button name="action" value="clear_task" { "Clear" } " "
            button name="action" value="mark_task_success" { "Mark success" } " "
            button name="action" value="mark_task_failed" { "Mark failed" }
        }
    }
}

async fn run_view(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    id: &str,
    q: RunPageQuery,
) -> Result<Markup, ApiError> {
    let (run, tries) = run_with_tries(s, headers, ns, id).await?;
    let latest = latest_tries(&tries);
    let actions = s.store.actions_of_run(run.id).await?;
    let params = serde_json::to_string_pretty(&run.params).unwrap_or_default();
    let dag_link = format!("/ui/namespaces/{}/dags/{}", run.dag.namespace, run.dag.name);
    let here = run_link(&run);
    Ok(page(
        &format!("run {}", run.id),
        html! {
            p { "DAG " a href=(dag_link) { (run.dag) } }
            @if let Some(a) = q.asked { p id="notice" { "Asked (action " (a) "): the operator carries it out in a moment, and this page follows." } }
            form id="actions" data-live method="post" action=(format!("{here}/actions")) {
                @if run.state == RunState::Running {
                    button name="action" value="cancel" { "Cancel run" } " "
                } @else {
                    button name="action" value="rerun" { "Re-run failed tasks" } " "
                }
                @if run.state != RunState::Success { button name="action" value="mark_success" { "Mark success" } " " }
                @if run.state != RunState::Failed { button name="action" value="mark_failed" { "Mark failed" } }
            }
            table id="summary" data-live {
                tr { th { "state" } td { span.sq style=(format!("background:{}", run_colour(run.state))) {} " " (run.state.as_str()) } }
                tr { th { "type" } td { (run.run_type.as_str()) @if let Some(b) = &run.backfill_name { " (Backfill " (b) ")" } } }
                tr { th { "logical date" } td { (run.logical_date.to_rfc3339()) } }
                tr { th { "data interval" } td { (run.data_interval_start.to_rfc3339()) " – " (run.data_interval_end.to_rfc3339()) } }
                tr { th { "started / ended" } td { (time(run.started_at)) " / " (time(run.ended_at)) } }
                tr { th { "attempt" } td { (run.attempt) } }
                tr { th { "spec version" } td { code { (run.spec_hash.clone().unwrap_or_else(|| "—".into())) } } }
            }
            h3 { "Params" }
            pre { (params) }
            div id="gantt" data-live {
                @if let Some(g) = super::charts::gantt(&tries, Utc::now()) {
                    h3 { "Gantt" }
                    div.graph-scroll {
                        (super::svg::gantt_chart(&g, |task, n| format!("{here}/tasks/{task}/tries/{n}/log")))
                    }
                }
            }
            h3 { "Tasks and tries" }
            table id="tries" data-live {
                tr { th { "task" } th { "try" } th { "state" } th { "started" } th { "ended" } th { "duration" }
                     th { "Pod" } th { "exit code" } th { "message" } th { "log" } th { "task actions" } }
                @for t in &tries {
                    tr id=(format!("task-{}", t.task_name)) {
                        td { (t.task_name) }
                        td { (t.try_number) }
                        td { span.sq style=(format!("background:{}", task_colour(Some(t.state)))) {} " " (t.state.as_str()) }
                        td { (time(t.started_at)) }
                        td { (time(t.ended_at)) }
                        td { @if let (Some(a), Some(b)) = (t.started_at, t.ended_at) { (format!("{:.1}s", (b - a).num_milliseconds() as f64 / 1000.0)) } }
                        td { code { (t.pod_name.clone().unwrap_or_default()) } }
                        td { (t.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                        td.msg { (t.message.clone().unwrap_or_default()) }
                        td { @if t.pod_name.is_some() { a href=(format!("{here}/tasks/{}/tries/{}/log", t.task_name, t.try_number)) { "log" } } }
                        td { @if latest.get(&(t.run_id, t.task_name.as_str())).is_some_and(|l| l.try_number == t.try_number) { (task_actions(&here, &t.task_name)) } }
                    }
                }
            }
            div id="asked-actions" data-live { @if !actions.is_empty() {
                h3 { "Actions" }
                table id="asked" {
                    tr { th { "asked" } th { "by" } th { "action" } th { "outcome" } th { "message" } }
                    @for a in &actions {
                        tr {
                            td { (time(Some(a.requested_at))) }
                            td { (a.requested_by) }
                            td { (a.kind.as_str()) }
                            td { (a.outcome.map(|o| o.as_str()).unwrap_or("pending")) }
                            td.msg { (a.message.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
            }
            (live_script())
        },
    ))
}
