//! kube-runtime controllers: they validate resources, hand changes to the engine, and write
//! status (by server-side apply) and events. The engine never talks to the API server itself.

pub mod backfill;
pub mod dag;
pub mod status;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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

/// Drops what no reconciler here reads and what is often most of a cached object's size:
/// `metadata.managedFields` and kubectl's last-applied annotation. Applied to objects before
/// they enter a watch cache.
pub fn trim_metadata<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Converts a Kubernetes timestamp (jiff) into chrono.
pub fn to_chrono(t: &Time) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

/// A reference to a DAG object for events.
pub fn dag_reference(key: &DagKey, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", crate::api::GROUP, crate::api::VERSION)),
        kind: Some("DAG".to_string()),
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        uid: uid.map(str::to_string),
        ..Default::default()
    }
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
