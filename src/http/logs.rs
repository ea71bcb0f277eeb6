//! `GET /api/v1/namespaces/{ns}/runs/{id}/tasks/{task}/tries/{n}/log[?follow=true]`: a try's
//! log as plain text — streamed from its Pod while the Pod exists (followed while it runs
//! when asked), else the end of the log the operator kept when the try ended. The header
//! `X-Dagop-Log-Source` says which (`pod` or `kept`); a kept tail that is not the whole log
//! says so with `X-Dagop-Log-Complete: false`.
//!
//! Reading a log needs the caller's own `get pods/log` in the namespace as well as
//! `get dags` (issue 28): the operator reads Pods' logs with its own right, so without this a
//! viewer of DAGs would read what `kubectl logs` would refuse them — the kept tails the same.
//! A caller may follow at most [`FOLLOWS_PER_USER`] logs at once, and the server
//! [`FOLLOWS`] in all (429 past either); a slot is given back when its stream ends or its
//! client goes.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::api::{ApiError, ApiState, reader, run_with_tries};
use super::auth::{Access, Caller};
use super::extract::{Path, Query};
use crate::executor::PodKey;
use crate::store::{RunRow, TaskRow, TryKey};

/// Followed logs (`?follow=true`) open at once per caller (by the user name the
/// TokenReview gives) …
pub const FOLLOWS_PER_USER: usize = 4;

/// … and in all, on one server.
pub const FOLLOWS: usize = 64;

/// The followed logs open: in all, and per user.
#[derive(Default)]
pub struct FollowLimit {
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One followed log's place in a [`FollowLimit`], given back when dropped.
pub struct FollowSlot {
    limit: Arc<FollowLimit>,
    user: String,
}

impl FollowLimit {
    /// A slot for `user`, or 429 when they (or the server) follow as many logs as allowed.
    pub fn take(self: &Arc<Self>, user: &str) -> Result<FollowSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (all, users) = &mut *open;
        let mine = users.get(user).copied().unwrap_or(0);
        if mine >= FOLLOWS_PER_USER {
            return Err(ApiError::Rejected(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "user {user:?} follows {mine} logs already: at most {FOLLOWS_PER_USER} at once"
                ),
            ));
        }
        if *all >= FOLLOWS {
            return Err(ApiError::Rejected(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this server follows {FOLLOWS} logs already: try again later"),
            ));
        }
        *all += 1;
        users.insert(user.to_string(), mine + 1);
        Ok(FollowSlot {
            limit: self.clone(),
            user: user.to_string(),
        })
    }

    /// The followed logs open: in all, and of `user`.
    pub fn open(&self, user: &str) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        (open.0, open.1.get(user).copied().unwrap_or(0))
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock().unwrap_or_else(|p| p.into_inner());
        let (all, users) = &mut *open;
        *all = all.saturating_sub(1);
        if let Some(mine) = users.get_mut(&self.user) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                users.remove(&self.user);
            }
        }
    }
}

/// A followed log: its slot is given back as soon as the log ends (before the response's
/// end reaches the client), or when the response is dropped (the client went).
struct Followed {
    inner: crate::logs::LogStream,
    slot: Option<FollowSlot>,
}

impl Stream for Followed {
    type Item = <crate::logs::LogStream as Stream>::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            self.slot = None;
        }
        next
    }
}

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

/// The caller, allowed to read DAGs and Pods' logs in `ns` (403 otherwise).
async fn log_reader(s: &ApiState, headers: &HeaderMap, ns: &str) -> Result<Caller, ApiError> {
    let who = reader(s, headers, ns).await?;
    if s.reviewer.allowed(&who, &Access::pod_logs(ns)).await? {
        Ok(who)
    } else {
        Err(ApiError::Forbidden(format!(
            "user {:?} cannot get pods/log in namespace {ns:?}: task logs are read with the \
             caller's own right to Pod logs",
            who.user
        )))
    }
}

/// The try `n` of `task` of run `id` in namespace `ns`, for a caller who may read it and
/// its log.
pub(super) async fn try_of(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    id: &str,
    task: &str,
    n: i32,
) -> Result<(Caller, RunRow, TaskRow), ApiError> {
    let who = log_reader(s, headers, ns).await?;
    let (run, tries) = run_with_tries(s, headers, ns, id).await?;
    let t = tries
        .into_iter()
        .find(|t| t.task_name == task && t.try_number == n)
        .ok_or_else(|| ApiError::NotFound(format!("run {id} has no try {n} of task {task:?}")))?;
    Ok((who, run, t))
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
    Extension(follows): Extension<Arc<FollowLimit>>,
    headers: HeaderMap,
    Path((ns, id, task, n)): Path<(String, String, String, i32)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let (who, run, t) = try_of(&s, &headers, &ns, &id, &task, n).await?;
    let slot = if q.follow {
        Some(follows.take(&who.user)?)
    } else {
        None
    };
    let log = log_of(&s, &run, &t, q.follow).await?;
    let text = HeaderValue::from_static("text/plain; charset=utf-8");
    Ok(match log {
        TryLog::Pod(stream) => {
            let stream = Followed {
                inner: stream,
                slot,
            };
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
    let (_, run, t) = try_of(s, headers, ns, id, task, n).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_slots_are_capped_per_user_and_in_all_and_given_back() {
        let limit = Arc::new(FollowLimit::default());
        let mine: Vec<_> = (0..FOLLOWS_PER_USER)
            .map(|_| limit.take("alice").expect("a slot"))
            .collect();
        assert!(limit.take("alice").is_err());
        drop(mine);
        assert_eq!(limit.open("alice"), (0, 0));
        let all: Vec<_> = (0..FOLLOWS)
            .map(|n| limit.take(&format!("user{n}")).expect("a slot"))
            .collect();
        assert!(limit.take("alice").is_err());
        drop(all);
        assert!(limit.take("alice").is_ok());
        assert_eq!(
            limit.open("alice"),
            (0, 0),
            "an unused slot is given back too"
        );
    }
}
