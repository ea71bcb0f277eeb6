//! The UI's actions: a trigger form on a DAG's page, cancel / re-run / mark buttons on a
//! run's page, and on each task row "Clear" / "Mark success" / "Mark failed" (with downstream /
//! upstream boxes) leading to a confirmation page that lists exactly what will change —
//! decided by the same function the leader carries the action out with — and posts it. Plain HTML forms posted with the session cookie; each is checked like the API
//! (`update dags/runs`) and recorded the same way. Against cross-site requests: the cookie is
//! `SameSite=Strict`, actions are POST only, a request whose `Origin` or `Sec-Fetch-Site`
//! says it comes from another site is refused, and one by the session cookie that does not
//! show it comes from the UI's own origin is refused (`guard::forgery`, for the API too).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::ApiState;
use super::actions::{ActionBody, Asked, TriggerBody, actor, request, trigger};
use super::api::{ApiError, find_dag};
use super::extract::{Form, Path, Query};
use super::ui::{page, refused, run_link};
use crate::key::DagKey;
use crate::store::{ActionOutcome, RunChange, TaskEffect};

#[derive(Deserialize)]
pub struct TriggerForm {
    /// a JSON object, or empty
    #[serde(default)]
    params: String,
}

/// `POST /ui/namespaces/{ns}/dags/{name}/trigger`: back to the DAG's page.
pub async fn post_trigger(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Form(form): Form<TriggerForm>,
) -> Response {
    let done = async {
        let dag = DagKey::new(&ns, &name);
        let who = actor(&s, &headers, &dag).await?;
        find_dag(&s, &ns, &name)?;
        let params =
            match form.params.trim() {
                "" => None,
                text => Some(serde_json::from_str(text).map_err(|e| {
                    ApiError::BadRequest(format!("params are not a JSON object: {e}"))
                })?),
            };
        let body = TriggerBody {
            params,
            logical_date: None,
        };
        trigger(&s, &who, &dag, &body).await
    };
    match done.await {
        Ok(action) => Redirect::to(&format!(
            "/ui/namespaces/{ns}/dags/{name}?triggered={}",
            action.id
        ))
        .into_response(),
        Err(e) => refused(e),
    }
}

/// A run action (a button), or a task action (a task row's form, then its confirmation).
#[derive(Deserialize)]
pub struct ActionForm {
    action: String,
    #[serde(default)]
    task: Option<String>,
    /// a checkbox: present (`on`, or `true` from the confirmation) when ticked
    #[serde(default)]
    downstream: Option<String>,
    #[serde(default)]
    upstream: Option<String>,
}

fn ticked(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|v| v == "on" || v == "true")
}

impl ActionForm {
    fn body(&self) -> ActionBody {
        ActionBody {
            action: self.action.clone(),
            task: self.task.clone().filter(|t| !t.is_empty()),
            downstream: ticked(&self.downstream),
            upstream: ticked(&self.upstream),
        }
    }
}

/// `POST /ui/namespaces/{ns}/runs/{id}/actions`: back to the run's page.
pub async fn post_action(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    match request(&s, &headers, &ns, &id, &form.body(), false).await {
        Ok(Asked::Recorded(action)) => Redirect::to(&format!(
            "/ui/namespaces/{ns}/runs/{id}?asked={}",
            action.id
        ))
        .into_response(),
        Ok(Asked::Preview(..)) => {
            Redirect::to(&format!("/ui/namespaces/{ns}/runs/{id}")).into_response()
        }
        Err(e) => refused(e),
    }
}

/// `GET /ui/namespaces/{ns}/runs/{id}/confirm?action=…&task=…&downstream=on`: what a task
/// action would change, listed, with the button that asks for it (nothing changes before).
pub async fn confirm(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
    Query(form): Query<ActionForm>,
) -> Response {
    let body = form.body();
    let (run, write, kind, task) = match request(&s, &headers, &ns, &id, &body, true).await {
        Ok(Asked::Preview(run, write, kind, task)) => (run, write, kind, task),
        Ok(Asked::Recorded(_)) => {
            return Redirect::to(&format!("/ui/namespaces/{ns}/runs/{id}")).into_response();
        }
        Err(e) => return refused(e),
    };
    let here = run_link(&run);
    let changes = match &write.change {
        Some(RunChange::Tasks { changes, .. }) => changes.clone(),
        _ => Vec::new(),
    };
    let what = task.as_ref().map_or_else(String::new, |t| {
        let mut with = Vec::new();
        if t.downstream {
            with.push("downstream");
        }
        if t.upstream {
            with.push("upstream");
        }
        if with.is_empty() {
            format!("task {}", t.task)
        } else {
            format!("task {} with its {} tasks", t.task, with.join(" and "))
        }
    });
    page(
        &format!("confirm {} of {what}", kind.as_str()),
        maud::html! {
            p { "Run " a href=(here) { (run.id) } " (" (run.state.as_str()) ") of DAG " (run.dag) }
            @if write.outcome == ActionOutcome::Done {
                p { "This " strong { (kind.as_str()) } " of " (what) " will change:" }
                table id="changes" {
                    tr { th { "task" } th { "try" } th { "now" } th { "becomes" } th { "Pod" } th { "why" } }
                    @for c in &changes {
                        tr id=(format!("change-{}", c.task)) {
                            td { (c.task) }
                            td { (c.try_number) }
                            td { (c.from.as_str()) }
                            td { @if c.effect == TaskEffect::NewTry { "pending (try " (c.try_number + 1) ")" } @else { (c.to().as_str()) } }
                            td { @if c.kills() { "deleted" } }
                            td { @if c.why == crate::store::ChangeReason::Selected { "chosen" } @else { "below a changed task, never ran: decided again" } }
                        }
                    }
                }
                @if run.state != crate::store::RunState::Running {
                    p { "The run goes from " (run.state.as_str()) " back to running." }
                }
                form id="confirm" method="post" action=(format!("{here}/actions")) {
                    input type="hidden" name="action" value=(kind.as_str());
                    @if let Some(t) = &task {
                        input type="hidden" name="task" value=(t.task);
                        @if t.downstream { input type="hidden" name="downstream" value="true"; }
                        @if t.upstream { input type="hidden" name="upstream" value="true"; }
                    }
                    button type="submit" { "Confirm" } " "
                    a href=(here) { "Back" }
                }
            } @else {
                p id="refused" { "Nothing to do: " (write.message) }
                p { a href=(here) { "Back" } }
            }
        },
    )
    .into_response()
}
