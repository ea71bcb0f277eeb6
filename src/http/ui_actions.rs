//! The UI's actions: a trigger form on a DAG's page, and cancel / re-run / mark buttons on a
//! run's page. Plain HTML forms posted with the session cookie; each is checked like the API
//! (`update dags/runs`) and recorded the same way. Against cross-site requests: the cookie is
//! `SameSite=Strict`, actions are POST only, a request whose `Origin` or `Sec-Fetch-Site`
//! says it comes from another site is refused, and one by the session cookie that does not
//! show it comes from the UI's own origin is refused (`guard::forgery`, for the API too).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::ApiState;
use super::actions::{TriggerBody, actor, request, trigger};
use super::api::{ApiError, find_dag};
use super::extract::{Form, Path};
use super::ui::refused;
use crate::key::DagKey;

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

#[derive(Deserialize)]
pub struct ActionForm {
    action: String,
}

/// `POST /ui/namespaces/{ns}/runs/{id}/actions`: back to the run's page.
pub async fn post_action(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let done = request(&s, &headers, &ns, &id, &form.action);
    match done.await {
        Ok(action) => Redirect::to(&format!(
            "/ui/namespaces/{ns}/runs/{id}?asked={}",
            action.id
        ))
        .into_response(),
        Err(e) => refused(e),
    }
}
