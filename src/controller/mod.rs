//! kube-runtime controllers: they validate resources, hand changes to the engine, and write
//! status (by server-side apply) and events. The engine never talks to the API server itself.

pub mod backfill;
pub mod dag;
pub mod dag_status;
pub mod pool;
pub mod relist;
pub mod status;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::key::{DagKey, Subject};
use crate::report::Notice;

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

impl ControllerError {
    /// The `error` label of `dagop_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "kube",
            ControllerError::EngineGone => "engine_gone",
            ControllerError::Missing(_) => "missing_field",
        }
    }
}

/// A reference to a DAG object for events.
pub fn dag_reference(key: &DagKey, uid: Option<&str>) -> ObjectReference {
    crate::k8s::reference(&Subject::Dag(key.clone()), uid)
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

    /// Publishes what the engine and the executor report, in the background.
    pub fn spawn_notice(&self, notice: Notice) {
        let reference = crate::k8s::reference(&notice.subject, None);
        self.spawn_publish(reference, notice.warning, notice.reason, notice.message);
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

#[cfg(test)]
mod tests {
    use super::ControllerError;

    #[test]
    fn every_error_label_is_exported_from_the_start() {
        for e in [
            ControllerError::EngineGone,
            ControllerError::Missing("namespace"),
            ControllerError::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
        ] {
            assert!(
                crate::telemetry::RECONCILE_ERRORS.contains(&e.metric_label()),
                "{e}"
            );
        }
    }
}
