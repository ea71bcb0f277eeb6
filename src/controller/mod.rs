//! kube-runtime controllers: they validate resources, hand changes to the engine, and write
//! status (by server-side apply) and events. The engine never talks to the API server itself.

pub mod backfill;
pub mod dag;
pub mod status;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::store::DagKey;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "dag-operator";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the engine stopped")]
    EngineGone,
    #[error("object has no {0}")]
    Missing(&'static str),
}

/// A reference to a DAG object for events.
pub fn dag_reference(key: &DagKey, uid: Option<&str>) -> ObjectReference {
    crate::k8s::reference("DAG", key, uid)
}

/// Publishes events on the operator's behalf (failures are logged, never fatal).
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: "dag-operator".to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Events {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Logs the event and publishes it in the background (the caller does not wait).
    pub fn spawn_publish(
        &self,
        reference: ObjectReference,
        warning: bool,
        reason: &'static str,
        note: String,
    ) {
        tracing::info!(
            object = %format!(
                "{}/{}",
                reference.namespace.as_deref().unwrap_or_default(),
                reference.name.as_deref().unwrap_or_default()
            ),
            kind = reference.kind.as_deref().unwrap_or_default(),
            reason,
            %note,
            "event"
        );
        let events = self.clone();
        tokio::spawn(async move { events.publish(&reference, warning, reason, note).await });
    }

    pub async fn publish(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(truncate(note, 1000)),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
