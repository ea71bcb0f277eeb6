//! Kubernetes Events on the operator's behalf, and the throttle that keeps a busy DAG from
//! flooding the API server: per object and reason at most one Event per window; the ones held
//! back are counted into the next ("and 9 more since ...").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::key::Subject;
use crate::report::Notice;

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

/// At most one Event per object and reason per window.
pub const EVENT_WINDOW: Duration = Duration::from_secs(10);

/// What the throttle knows of one (object, reason).
#[derive(Clone, Copy, Debug)]
struct Sent {
    at: Instant,
    /// held back since
    held: u32,
}

/// Decides which notices become Events (pure: the caller passes the time).
#[derive(Debug, Default)]
pub struct Throttle {
    sent: HashMap<(Subject, &'static str), Sent>,
}

impl Throttle {
    /// The notice to publish now (its message telling how many were held back before it),
    /// or `None` when one of the same object and reason went out within [`EVENT_WINDOW`].
    pub fn admit(&mut self, mut notice: Notice, now: Instant) -> Option<Notice> {
        let key = (notice.subject.clone(), notice.reason);
        match self.sent.get_mut(&key) {
            Some(s) if now.duration_since(s.at) < EVENT_WINDOW => {
                s.held += 1;
                None
            }
            Some(s) => {
                if s.held > 0 {
                    notice.message = format!(
                        "{} (and {} more {} in the {}s before)",
                        notice.message,
                        s.held,
                        notice.reason,
                        now.duration_since(s.at).as_secs()
                    );
                }
                *s = Sent { at: now, held: 0 };
                Some(notice)
            }
            None => {
                self.sent.insert(key, Sent { at: now, held: 0 });
                Some(notice)
            }
        }
    }

    /// Forgets what went out more than ten windows ago (call now and then; keeps the map
    /// small); a count held back that long is dropped.
    pub fn prune(&mut self, now: Instant) {
        self.sent
            .retain(|_, s| now.duration_since(s.at) < EVENT_WINDOW * 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::DagKey;

    fn n(reason: &'static str) -> Notice {
        Notice::normal(
            Subject::Dag(DagKey::new("ns", "tick")),
            reason,
            "run x".into(),
        )
    }

    #[test]
    fn an_every_second_dag_gets_one_event_per_reason_per_window() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let mut published = Vec::new();
        for s in 0..60 {
            let now = t0 + Duration::from_secs(s);
            for reason in ["RunSucceeded", "RunFailed"] {
                if let Some(p) = t.admit(n(reason), now) {
                    published.push(p);
                }
            }
        }
        // 60 s, two reasons, one per 10 s window each
        assert_eq!(published.len(), 12, "{published:?}");
        assert!(
            published[2].message.contains("and 9 more RunSucceeded"),
            "{}",
            published[2].message
        );
        // another DAG is not held back by this one
        let other = Notice::normal(
            Subject::Dag(DagKey::new("ns", "other")),
            "RunSucceeded",
            "m".into(),
        );
        assert!(t.admit(other, t0 + Duration::from_secs(59)).is_some());
        t.prune(t0 + Duration::from_secs(200));
        assert!(t.sent.is_empty());
    }
}
