//! Actions through the API: trigger a DAG; cancel, re-run or mark a run; clear or mark one
//! task of a run (with its downstream and/or upstream tasks). `?dryRun=true` answers what an
//! action would change — decided by the very function the leader carries it out with — and
//! records nothing. Allowed by the
//! caller's RBAC: `update` on `dags/runs` (the `runs` subresource of `dags`, a name RBAC rules
//! can grant on its own) for the DAG, in its namespace. Every action is recorded (who, when,
//! what); a trigger is carried out at once (a trigger annotation on the DAG, which any replica
//! may write), the others by the leader's executor, which picks the pending records up — so an
//! action that reaches a standby is not lost.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, ApiState, find_dag, reader, run_in};
use super::auth::{Access, Caller};
use super::extract::{JsonBody, Path, Query};
use crate::api::DAG;
use crate::api::trigger::{new_trigger_id, trigger_patch};
use crate::executor::action::{decide, latest_of_run};
use crate::graph::TaskGraph;
use crate::key::DagKey;
use crate::store::{
    ActionKind, ActionOutcome, ActionWrite, NewAction, RunAction, RunChange, RunRow, RunStore,
    TaskEffect, TaskTarget,
};

/// The verb, resource and subresource an action needs.
pub const ACTION_VERB: &str = "update";
pub const ACTION_SUBRESOURCE: &str = "runs";

impl Access {
    /// Acting on the runs of DAG `name` in `namespace`: `update dags/runs`.
    pub fn act(namespace: &str, name: &str) -> Self {
        Access {
            namespace: Some(namespace.to_string()),
            group: crate::api::GROUP,
            verb: ACTION_VERB,
            resource: "dags",
            subresource: Some(ACTION_SUBRESOURCE),
            name: Some(name.to_string()),
        }
    }
}

/// The caller, allowed to act on the runs of `dag` (403 otherwise; 401 without a token; a
/// caller who may not even read the namespace learns nothing more).
pub(super) async fn actor(
    s: &ApiState,
    headers: &HeaderMap,
    dag: &DagKey,
) -> Result<Caller, ApiError> {
    let who = reader(s, headers, &dag.namespace).await?;
    may_act(s, who, dag).await
}

/// `who` (who may read the namespace), if allowed to act on the runs of `dag`.
async fn may_act(s: &ApiState, who: Caller, dag: &DagKey) -> Result<Caller, ApiError> {
    if s.reviewer
        .allowed(&who, &Access::act(&dag.namespace, &dag.name))
        .await?
    {
        Ok(who)
    } else {
        Err(ApiError::Forbidden(format!(
            "user {:?} cannot {ACTION_VERB} dags/{ACTION_SUBRESOURCE} of {:?} in namespace {:?}",
            who.user, dag.name, dag.namespace
        )))
    }
}

/// `action_view`: an action as the API shows it.
pub fn action_view(a: &RunAction) -> Value {
    json!({
        "kind": "RunAction",
        "id": a.id,
        "namespace": a.dag.namespace,
        "dag": a.dag.name,
        "run": a.run_id,
        "action": a.kind.as_str(),
        "detail": a.detail,
        "task": a.task.as_ref().map(|t| json!({
            "name": t.task, "downstream": t.downstream, "upstream": t.upstream,
        })),
        "requestedBy": a.requested_by,
        "requestedAt": a.requested_at.to_rfc3339(),
        "state": match a.outcome {
            None => "pending",
            Some(o) => o.as_str(),
        },
        "doneAt": a.done_at.map(|t| t.to_rfc3339()),
        "message": a.message,
    })
}

/// The body of a trigger.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerBody {
    /// merged over the DAG's `spec.params` for this run
    pub params: Option<Value>,
    /// the run's logical date (default: when the operator handles the trigger)
    pub logical_date: Option<DateTime<Utc>>,
}

/// Triggers DAG `dag` for `who`: a trigger annotation on the DAG (handled exactly once by the
/// leader), recorded as an action. Shared by the API and the UI.
pub(super) async fn trigger(
    s: &ApiState,
    who: &Caller,
    dag: &DagKey,
    body: &TriggerBody,
) -> Result<RunAction, ApiError> {
    if let Some(p) = &body.params {
        if !p.is_object() {
            return Err(ApiError::BadRequest("params must be a JSON object".into()));
        }
    }
    let client = s.kube.clone().ok_or_else(|| {
        ApiError::Unavailable("this server has no Kubernetes client to trigger with".into())
    })?;
    let id = new_trigger_id(Utc::now());
    let patch = trigger_patch(&id, body.params.as_ref(), body.logical_date);
    let dags: Api<DAG> = Api::namespaced(client, &dag.namespace);
    dags.patch(&dag.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => ApiError::NotFound(format!(
                "dag {:?} not found in namespace {:?}",
                dag.name, dag.namespace
            )),
            e => ApiError::Unavailable(format!("cannot trigger {dag}: {e}")),
        })?;
    let action = NewAction {
        dag: dag.clone(),
        run_id: None,
        kind: ActionKind::Trigger,
        detail: json!({"trigger": id, "params": body.params, "logicalDate": body.logical_date}),
        task: None,
        requested_by: who.user.clone(),
        done: Some(format!("trigger {id} added by {}", who.user)),
    };
    Ok(s.store.record_action(&action).await?)
}

/// `POST /api/v1/namespaces/{ns}/dags/{name}/runs` (`{"params": {…}, "logicalDate": …}`):
/// triggers a manual run. 201 with the recorded action.
pub async fn post_trigger(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    body: Option<JsonBody<TriggerBody>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let dag = DagKey::new(&ns, &name);
    let who = actor(&s, &headers, &dag).await?;
    find_dag(&s, &ns, &name)?;
    let body = body.map(|JsonBody(b)| b).unwrap_or_default();
    let action = trigger(&s, &who, &dag, &body).await?;
    Ok((StatusCode::CREATED, Json(action_view(&action))))
}

/// The body of a run action, or of a task action.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// `cancel`, `rerun`, `mark_success`, `mark_failed` (the run); `clear_task`,
    /// `mark_task_success`, `mark_task_failed` (one task, named by `task`)
    pub action: String,
    /// the task of a task action
    #[serde(default)]
    pub task: Option<String>,
    /// a task action takes every task below `task` too
    #[serde(default)]
    pub downstream: bool,
    /// a task action takes every task above `task` too
    #[serde(default)]
    pub upstream: bool,
}

/// The kind and task an action body asks for, checked.
fn asked(body: &ActionBody) -> Result<(ActionKind, Option<TaskTarget>), ApiError> {
    let kind = ActionKind::parse(&body.action)
        .filter(|k| *k != ActionKind::Trigger)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown action {:?}: expected cancel, rerun, mark_success, mark_failed, \
                 clear_task, mark_task_success or mark_task_failed",
                body.action
            ))
        })?;
    match (kind.is_task_action(), &body.task) {
        (true, Some(task)) if !task.is_empty() => Ok((
            kind,
            Some(TaskTarget {
                task: task.clone(),
                downstream: body.downstream,
                upstream: body.upstream,
            }),
        )),
        (true, _) => Err(ApiError::BadRequest(format!(
            "action {} needs the task it acts on: {{\"task\": \"<name>\"}}",
            kind.as_str()
        ))),
        (false, None) if !body.downstream && !body.upstream => Ok((kind, None)),
        (false, _) => Err(ApiError::BadRequest(format!(
            "action {} acts on the whole run: task, downstream and upstream are for \
             clear_task, mark_task_success and mark_task_failed",
            kind.as_str()
        ))),
    }
}

/// The task graph of the spec version `run` executes, if stored and readable.
async fn graph_of(s: &ApiState, run: &RunRow) -> Result<Option<TaskGraph>, ApiError> {
    let Some(hash) = &run.spec_hash else {
        return Ok(None);
    };
    let specs = s.store.specs(std::slice::from_ref(hash)).await?;
    Ok(specs
        .into_iter()
        .next()
        .and_then(|row| serde_json::from_value::<crate::api::DagSpec>(row.spec).ok())
        .and_then(|spec| spec.graph().ok()))
}

/// What the action would do now, decided as the leader decides it (nothing recorded).
async fn preview_of(
    s: &ApiState,
    run: &RunRow,
    kind: ActionKind,
    task: Option<TaskTarget>,
    who: &str,
) -> Result<ActionWrite, ApiError> {
    let graph = graph_of(s, run).await?;
    let tries = s.store.task_instances(&[run.id]).await?;
    let now = Utc::now();
    let action = RunAction {
        id: 0,
        dag: run.dag.clone(),
        run_id: Some(run.id),
        kind,
        detail: json!({}),
        task,
        requested_by: who.to_string(),
        requested_at: now,
        done_at: None,
        outcome: None,
        message: None,
    };
    Ok(decide(
        &action,
        Some(run),
        graph.as_ref(),
        &latest_of_run(&tries),
        now,
    ))
}

/// What an action asks: recorded for the leader, or (a dry run) only decided.
pub enum Asked {
    Recorded(RunAction),
    /// the run as it is, and what the action would write
    Preview(Box<RunRow>, ActionWrite, ActionKind, Option<TaskTarget>),
}

/// Records the action `body` asks on run `id` of namespace `ns` for the caller — pending
/// until the leader carries it out — or, with `dry_run`, decides what it would change and
/// records nothing. A task action naming a task the run's DAG lacks is refused at once.
/// Shared by the API and the UI.
pub(super) async fn request(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    id: &str,
    body: &ActionBody,
    dry_run: bool,
) -> Result<Asked, ApiError> {
    let (kind, task) = asked(body)?;
    // reading first: who may not read the namespace learns nothing of its runs
    let who = reader(s, headers, ns).await?;
    let run = run_in(s, ns, id).await?;
    let who = may_act(s, who, &run.dag).await?;
    if dry_run {
        let write = preview_of(s, &run, kind, task.clone(), &who.user).await?;
        return Ok(Asked::Preview(Box::new(run), write, kind, task));
    }
    if let Some(t) = &task {
        if let Some(graph) = graph_of(s, &run).await? {
            if graph.index_of(&t.task).is_none() {
                return Err(ApiError::BadRequest(format!(
                    "no task {:?} in the DAG of run {}",
                    t.task, run.id
                )));
            }
        }
    }
    let action = NewAction {
        dag: run.dag.clone(),
        run_id: Some(run.id),
        kind,
        detail: json!({}),
        task,
        requested_by: who.user,
        done: None,
    };
    Ok(Asked::Recorded(s.store.record_action(&action).await?))
}

/// A dry run's answer: what would change, task by task.
pub fn preview_view(
    run: &RunRow,
    write: &ActionWrite,
    kind: ActionKind,
    task: Option<&TaskTarget>,
) -> Value {
    let (run_to, changes) = match &write.change {
        None => (None, Vec::new()),
        Some(RunChange::SetState { to, tries_to, .. }) => (
            Some(to.as_str()),
            vec![json!({"unfinishedTries": tries_to.as_str()})],
        ),
        Some(RunChange::Rerun { tasks, .. }) => (
            Some("running"),
            tasks
                .iter()
                .map(|t| json!({"task": t.task_name, "to": "pending", "newTry": true}))
                .collect(),
        ),
        Some(RunChange::Tasks { changes, .. }) => (
            Some("running"),
            changes
                .iter()
                .map(|c| {
                    json!({
                        "task": c.task,
                        "try": c.try_number,
                        "from": c.from.as_str(),
                        "to": c.to().as_str(),
                        "newTry": c.effect == TaskEffect::NewTry,
                        "podDeleted": c.kills(),
                        "reason": c.why.as_str(),
                    })
                })
                .collect(),
        ),
    };
    json!({
        "kind": "RunActionPreview",
        "dryRun": true,
        "namespace": run.dag.namespace,
        "dag": run.dag.name,
        "run": run.id,
        "action": kind.as_str(),
        "task": task.map(|t| json!({
            "name": t.task, "downstream": t.downstream, "upstream": t.upstream,
        })),
        "allowed": write.outcome == ActionOutcome::Done,
        "message": write.message,
        "runState": {"from": run.state.as_str(), "to": run_to},
        "changes": changes,
    })
}

/// `?dryRun=true`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/namespaces/{ns}/runs/{id}/actions` (`{"action": "cancel"}`,
/// `{"action": "clear_task", "task": "load", "downstream": true}`): 202 with the recorded
/// action (`state: pending` until the leader carries it out; poll
/// `GET /api/v1/namespaces/{ns}/actions/{id}`). With `?dryRun=true`: 200 with what it would
/// change (`RunActionPreview`), nothing recorded.
pub async fn post_action(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
    Query(q): Query<DryRun>,
    JsonBody(body): JsonBody<ActionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match request(&s, &headers, &ns, &id, &body, q.dry_run).await? {
        Asked::Recorded(action) => Ok((StatusCode::ACCEPTED, Json(action_view(&action)))),
        Asked::Preview(run, write, kind, task) => Ok((
            StatusCode::OK,
            Json(preview_view(&run, &write, kind, task.as_ref())),
        )),
    }
}

/// `GET /api/v1/namespaces/{ns}/runs/{id}/actions`: what was asked of a run, oldest first.
pub async fn list_actions(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    reader(&s, &headers, &ns).await?;
    let run = run_in(&s, &ns, &id).await?;
    let actions = s.store.actions_of_run(run.id).await?;
    Ok(Json(
        json!({"kind": "RunActionList", "items": actions.iter().map(action_view).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/v1/namespaces/{ns}/actions/{id}`: one action (is it done?).
pub async fn get_action(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    reader(&s, &headers, &ns).await?;
    let action = s
        .store
        .action(id)
        .await?
        .filter(|a| a.dag.namespace == ns)
        .ok_or_else(|| ApiError::NotFound(format!("action {id} not found in namespace {ns:?}")))?;
    Ok(Json(action_view(&action)))
}
