//! `GET /api/v1/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log[?follow=true]`: a try's
//! log as plain text — streamed from its Pod while the Pod exists (followed while it runs
//! when asked), else the end of the log the operator kept when the try ended. The header
//! `X-Dagop-Log-Source` says which (`pod` or `kept`); a kept tail that is not the whole log
//! says so with `X-Dagop-Log-Complete: false`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::api::{ApiError, ApiState, run_with_tries};
use super::extract::{Path, Query};
use crate::executor::PodKey;
use crate::store::{RunRow, TaskRow, TryKey};

/// The header naming where a log came from.
pub const LOG_SOURCE_HEADER: &str = "x-dagop-log-source";

#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    /// keep the response open and send the log as it grows (while the Pod runs)
    #[serde(default)]
    pub follow: bool,
}

/// A try's log: where it came from and its bytes.
pub enum TryLog {
    Pod(crate::logs::LogStream),
    Kept { text: String, complete: bool },
}

/// The try `n` of `task` of run `id` in namespace `ns`, checked like every read.
pub(super) async fn try_of(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    id: &str,
    task: &str,
    n: i32,
) -> Result<(RunRow, TaskRow), ApiError> {
    let (run, tries) = run_with_tries(s, headers, ns, id).await?;
    let t = tries
        .into_iter()
        .find(|t| t.task_name == task && t.try_number == n)
        .ok_or_else(|| ApiError::NotFound(format!("run {id} has no try {n} of task {task:?}")))?;
    Ok((run, t))
}

/// The log of a try: from its Pod if it exists, else the kept tail.
pub(super) async fn log_of(
    s: &ApiState,
    run: &RunRow,
    t: &TaskRow,
    follow: bool,
) -> Result<TryLog, ApiError> {
    let mut pod_error = None;
    if let (Some(source), Some(pod)) = (&s.logs, &t.pod_name) {
        let key = PodKey::new(run.dag.namespace.clone(), pod.clone());
        match source.stream(&key, follow).await {
            Ok(Some(stream)) => return Ok(TryLog::Pod(stream)),
            Ok(None) => {}
            Err(e) => pod_error = Some(e.to_string()),
        }
    }
    match s.store.log(&TryKey::of(t)).await? {
        Some(kept) => Ok(TryLog::Kept {
            text: kept.text,
            complete: kept.complete,
        }),
        None => Err(match pod_error {
            Some(e) => ApiError::Unavailable(format!("{e}; and no end of the log was kept")),
            None => ApiError::NotFound(match &t.pod_name {
                Some(pod) => format!(
                    "no log: Pod {pod} is gone and no end of its log was kept (--log-tail-bytes)"
                ),
                None => format!(
                    "try {} of task {:?} has had no Pod",
                    t.try_number, t.task_name
                ),
            }),
        }),
    }
}

/// `GET …/runs/{id}/tasks/{task}/tries/{n}/log`
pub async fn get_log(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id, task, n)): Path<(String, String, String, i32)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let (run, t) = try_of(&s, &headers, &ns, &id, &task, n).await?;
    let log = log_of(&s, &run, &t, q.follow).await?;
    let text = HeaderValue::from_static("text/plain; charset=utf-8");
    Ok(match log {
        TryLog::Pod(stream) => {
            let body = Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other)));
            let mut r = body.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, text);
            r.headers_mut()
                .insert(LOG_SOURCE_HEADER, HeaderValue::from_static("pod"));
            r
        }
        TryLog::Kept {
            text: log,
            complete,
        } => {
            let mut r = log.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, text);
            r.headers_mut()
                .insert(LOG_SOURCE_HEADER, HeaderValue::from_static("kept"));
            r.headers_mut().insert(
                "x-dagop-log-complete",
                HeaderValue::from_static(if complete { "true" } else { "false" }),
            );
            r
        }
    })
}

/// Most bytes of a finished try's log a page shows (the API serves all of it).
const PAGE_BYTES: usize = 1024 * 1024;

/// `GET /ui/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log`: a finished try's log on
/// the page; a running one's followed by a few lines of script reading the API.
pub async fn log_page(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id, task, n)): Path<(String, String, String, i32)>,
) -> Response {
    match log_markup(&s, &headers, &ns, &id, &task, n).await {
        Ok(m) => m.into_response(),
        Err(e) => super::ui::refused(e),
    }
}

/// Streams the API's log into `#log` as it grows.
pub(super) const FOLLOW_SCRIPT: &str = r#"
const pre = document.getElementById('log');
fetch(pre.dataset.src, {credentials: 'same-origin'}).then(async (r) => {
  document.getElementById('source').textContent = r.headers.get('x-dagop-log-source') || '';
  if (!r.ok) { pre.textContent = await r.text(); return; }
  const reader = r.body.getReader();
  const text = new TextDecoder();
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    pre.textContent += text.decode(value, {stream: true});
  }
});
"#;

async fn log_markup(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    id: &str,
    task: &str,
    n: i32,
) -> Result<maud::Markup, ApiError> {
    use maud::{PreEscaped, html};
    let (run, t) = try_of(s, headers, ns, id, task, n).await?;
    let title = format!("{task} try {n}");
    let back = super::ui::run_link(&run);
    let running = t.state == crate::graph::TaskState::Running;
    let head = html! {
        p { "run " a href=(back) { (run.id) } " · " (t.state.as_str())
            @if let Some(pod) = &t.pod_name { " · Pod " code { (pod) } } }
    };
    if running {
        let src =
            format!("/api/v1/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log?follow=true");
        return Ok(super::ui::page(
            &title,
            html! {
                (head)
                p { "following the Pod's log " small id="source" {} }
                pre id="log" data-src=(src) {}
                script { (PreEscaped(FOLLOW_SCRIPT)) }
            },
        ));
    }
    let (source, text, complete) = match log_of(s, &run, &t, false).await {
        Ok(TryLog::Kept { text, complete }) => ("kept by the operator", text, complete),
        Ok(TryLog::Pod(mut stream)) => {
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| ApiError::Unavailable(e.to_string()))?);
                if bytes.len() > PAGE_BYTES {
                    break;
                }
            }
            let tail = crate::logs::LogTail::of(&bytes, PAGE_BYTES);
            ("from the Pod", tail.text, tail.complete)
        }
        Err(ApiError::NotFound(m)) => ("", m, true),
        Err(e) => return Err(e),
    };
    Ok(super::ui::page(
        &title,
        html! {
            (head)
            @if !source.is_empty() { p id="source" { (source) @if !complete { " (its end only)" } } }
            pre id="log" { (text) }
        },
    ))
}
