//! Actions through the API: trigger a DAG, and cancel, re-run or mark a run. Allowed by the
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
use super::extract::{JsonBody, Path};
use crate::api::DAG;
use crate::api::trigger::{new_trigger_id, trigger_patch};
use crate::key::DagKey;
use crate::store::{ActionKind, NewAction, RunAction};

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

/// The body of a run action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// `cancel`, `rerun`, `mark_success` or `mark_failed`
    pub action: String,
}

/// Records `kind` on run `id` of namespace `ns` for the caller: pending until the leader
/// carries it out. Shared by the API and the UI.
pub(super) async fn request(
    s: &ApiState,
    headers: &HeaderMap,
    ns: &str,
    id: &str,
    kind: &str,
) -> Result<RunAction, ApiError> {
    let kind = ActionKind::parse(kind)
        .filter(|k| *k != ActionKind::Trigger)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown action {kind:?}: expected cancel, rerun, mark_success or mark_failed"
            ))
        })?;
    // reading first: who may not read the namespace learns nothing of its runs
    let who = reader(s, headers, ns).await?;
    let run = run_in(s, ns, id).await?;
    let who = may_act(s, who, &run.dag).await?;
    let action = NewAction {
        dag: run.dag.clone(),
        run_id: Some(run.id),
        kind,
        detail: json!({}),
        requested_by: who.user,
        done: None,
    };
    Ok(s.store.record_action(&action).await?)
}

/// `POST /api/v1/namespaces/{ns}/runs/{id}/actions` (`{"action": "cancel"}`): 202 with the
/// recorded action (`state: pending` until the leader carries it out; poll
/// `GET /api/v1/namespaces/{ns}/actions/{id}`).
pub async fn post_action(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<ActionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let action = request(&s, &headers, &ns, &id, &body.action).await?;
    Ok((StatusCode::ACCEPTED, Json(action_view(&action))))
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
