//! kube-runtime controllers: they validate resources, hand changes to the engine, and write
//! status (by server-side apply) and events. The engine never talks to the API server itself.

pub mod backfill;
pub mod dag;
pub mod dag_status;
mod events;
pub mod namespace;
pub mod pool;
pub mod relist;
pub mod status;
mod watch;

pub use self::events::{Events, Throttle};

use k8s_openapi::api::core::v1::ObjectReference;

use crate::key::{DagKey, Subject};

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
