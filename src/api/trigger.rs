//! Manual triggers (SPEC §3.5): how a DAG's annotations ask for manual runs.
//!
//! Two forms, both read on every DAG:
//! - `dagoperator.io/trigger: <value>` (with `dagoperator.io/trigger-params: <JSON object>`):
//!   one trigger at a time; an RFC3339 value is the run's logical date.
//! - `trigger.dagoperator.io/<id>: <JSON>`: any number pending at once (what
//!   `dag-operator trigger` writes: it adds one, never overwrites another). The value is
//!   `{"params": {…}, "logicalDate": "<RFC3339>"}`, both optional (empty means `{}`); `<id>` is
//!   the trigger's value.
//!
//! Each value is handled once: the operator records it in PostgreSQL in the same transaction
//! as its run (or its refusal), so a value yields exactly one run across crashes, restarts
//! and replicas; re-applying it does nothing. Handled `trigger.dagoperator.io/` annotations are
//! removed by the operator.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// The single-trigger annotation.
pub const TRIGGER_ANNOTATION: &str = "dagoperator.io/trigger";
/// The params of the single-trigger annotation (a JSON object merged over `spec.params`).
pub const TRIGGER_PARAMS_ANNOTATION: &str = "dagoperator.io/trigger-params";
/// The prefix of the many-triggers annotations: `trigger.dagoperator.io/<id>`.
pub const TRIGGER_PREFIX: &str = "trigger.dagoperator.io/";

/// One trigger a DAG's annotations ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerRequest {
    /// the trigger's value: recorded once, shown as `status.lastHandledTrigger`
    pub value: String,
    /// a JSON object (text) merged over `spec.params`
    pub params: Option<String>,
    /// the run's logical date, if the trigger names one
    pub logical_date: Option<DateTime<Utc>>,
    /// why the trigger cannot be honoured (its annotation is malformed)
    pub malformed: Option<String>,
    /// the annotation it came from is one of the many-triggers form (removed once handled)
    pub removable: bool,
}

/// The triggers a DAG's annotations ask for, the single form first, then the many form in
/// the order of their ids.
pub fn requests(annotations: &BTreeMap<String, String>) -> Vec<TriggerRequest> {
    let mut out = Vec::new();
    if let Some(value) = annotations
        .get(TRIGGER_ANNOTATION)
        .filter(|v| !v.is_empty())
    {
        out.push(TriggerRequest {
            value: value.clone(),
            params: annotations.get(TRIGGER_PARAMS_ANNOTATION).cloned(),
            logical_date: DateTime::parse_from_rfc3339(value)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            malformed: None,
            removable: false,
        });
    }
    for (key, body) in annotations {
        let Some(id) = key.strip_prefix(TRIGGER_PREFIX).filter(|id| !id.is_empty()) else {
            continue;
        };
        out.push(many_form(id, body));
    }
    out
}

/// Reads a `trigger.dagoperator.io/<id>` annotation.
fn many_form(id: &str, body: &str) -> TriggerRequest {
    let mut request = TriggerRequest {
        value: id.to_string(),
        params: None,
        logical_date: None,
        malformed: None,
        removable: true,
    };
    if body.trim().is_empty() {
        return request;
    }
    let parsed: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            request.malformed = Some(format!("the trigger annotation is not valid JSON: {e}"));
            return request;
        }
    };
    let Some(obj) = parsed.as_object() else {
        request.malformed = Some("the trigger annotation must be a JSON object".into());
        return request;
    };
    if let Some(params) = obj.get("params") {
        request.params = Some(params.to_string());
    }
    match obj.get("logicalDate") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => request.logical_date = Some(t.with_timezone(&Utc)),
            Err(e) => {
                request.malformed = Some(format!("logicalDate {s:?} is not RFC3339: {e}"));
            }
        },
        Some(other) => {
            request.malformed = Some(format!(
                "logicalDate must be an RFC3339 string, not {other}"
            ));
        }
    }
    request
}

/// The annotation value `dag-operator trigger` writes for one trigger.
pub fn annotation_body(
    params: Option<&serde_json::Value>,
    logical_date: Option<DateTime<Utc>>,
) -> String {
    let mut obj = serde_json::Map::new();
    if let Some(p) = params {
        obj.insert("params".into(), p.clone());
    }
    if let Some(t) = logical_date {
        obj.insert(
            "logicalDate".into(),
            serde_json::Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        );
    }
    serde_json::Value::Object(obj).to_string()
}

/// A fresh trigger id: `manual-<UTC time to the microsecond>-<4 random hex digits>` (a valid
/// annotation name, and the value `status.lastHandledTrigger` shows).
pub fn new_trigger_id(now: DateTime<Utc>) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "manual-{}-{}",
        now.format("%Y%m%dt%H%M%S%6fz"),
        &random[..4]
    )
}

/// The merge patch that adds trigger `id` (with `params` and a logical date) to a DAG.
pub fn trigger_patch(
    id: &str,
    params: Option<&serde_json::Value>,
    logical_date: Option<DateTime<Utc>>,
) -> serde_json::Value {
    let key = format!("{TRIGGER_PREFIX}{id}");
    serde_json::json!({"metadata": {"annotations": {key: annotation_body(params, logical_date)}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_patch_adds_one_annotation() {
        let at: DateTime<Utc> = "2026-01-02T03:04:05.000006Z".parse().unwrap();
        let id = new_trigger_id(at);
        assert!(id.starts_with("manual-20260102t030405000006z-"), "{id}");
        let patch = trigger_patch(&id, Some(&serde_json::json!({"a": 1})), None);
        let annotations = patch["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(annotations.len(), 1);
        let got = requests(
            &annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].value.as_str(), got[0].params.as_deref()),
            (id.as_str(), Some(r#"{"a":1}"#))
        );
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn both_forms_are_read_single_first() {
        let a = annotations(&[
            ("trigger.dagoperator.io/manual-b", r#"{"params": {"x": 1}}"#),
            ("trigger.dagoperator.io/manual-a", ""),
            (TRIGGER_ANNOTATION, "2024-01-01T00:00:00Z"),
            (TRIGGER_PARAMS_ANNOTATION, r#"{"y": 2}"#),
            ("unrelated", "x"),
        ]);
        let r = requests(&a);
        let values: Vec<&str> = r.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(values, ["2024-01-01T00:00:00Z", "manual-a", "manual-b"]);
        assert_eq!(
            r[0].logical_date,
            Some("2024-01-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(r[0].params.as_deref(), Some(r#"{"y": 2}"#));
        assert!(!r[0].removable && r[1].removable);
        assert_eq!(r[1].params, None);
        assert_eq!(r[2].params.as_deref(), Some(r#"{"x":1}"#));
    }

    #[test]
    fn a_body_written_by_the_cli_reads_back() {
        let t: DateTime<Utc> = "2024-05-01T10:00:00Z".parse().unwrap();
        let body = annotation_body(Some(&serde_json::json!({"a": 1})), Some(t));
        let r = many_form("manual-1", &body);
        assert_eq!(r.logical_date, Some(t));
        assert_eq!(r.params.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(r.malformed, None);
    }

    #[test]
    fn malformed_bodies_say_why() {
        assert!(
            many_form("x", "{not json")
                .malformed
                .unwrap()
                .contains("not valid JSON")
        );
        assert!(
            many_form("x", "[1]")
                .malformed
                .unwrap()
                .contains("JSON object")
        );
        assert!(
            many_form("x", r#"{"logicalDate": "yesterday"}"#)
                .malformed
                .unwrap()
                .contains("RFC3339")
        );
        // a plain value with no body is a trigger without params
        assert_eq!(many_form("x", "").malformed, None);
    }
}
