//! What the engine and the executor tell users, shared by both: an event on one of our
//! objects. Each layer has its own output enum (`engine::Output`, `executor::ExecOutput`),
//! split the same way — status, events, telemetry, work for the other parts — and the
//! operator's routers (`operator/route.rs`) deliver each part to its one consumer.

use crate::key::Subject;

/// Why something cannot go on: a condition's reason (UpperCamelCase) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &str, message: String) -> Self {
        Problem {
            reason: reason.to_string(),
            message,
        }
    }
}

/// An event to publish on a DAG or a Backfill (Kubernetes Event semantics: a reason in
/// UpperCamelCase, a human message, Warning when something needs attention).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub subject: Subject,
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Notice {
    pub fn normal(subject: Subject, reason: &'static str, message: String) -> Self {
        Notice {
            subject,
            warning: false,
            reason,
            message,
        }
    }

    pub fn warning(subject: Subject, reason: &'static str, message: String) -> Self {
        Notice {
            subject,
            warning: true,
            reason,
            message,
        }
    }
}
