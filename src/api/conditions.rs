//! Status conditions in the Kubernetes convention, shared by every resource of this API.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One condition (`type`, `status`, `reason`, `message`, `lastTransitionTime`,
/// `observedGeneration`), as kstatus-based tools expect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Stalled` or `Reconciling`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why, in one UpperCamelCase word (e.g. `InvalidSchedule`, `RunsFailing`).
    pub reason: String,
    /// Why, for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub const READY: &str = "Ready";
/// kstatus: the resource cannot make progress without a change (a person must act).
pub const STALLED: &str = "Stalled";
/// kstatus: the controller is still working toward the desired state.
pub const RECONCILING: &str = "Reconciling";
/// True while a DAG's `spec.priority` is above its namespace's ceiling and runs are queued at
/// the ceiling (absent otherwise).
pub const PRIORITY_CLAMPED: &str = "PriorityClamped";

impl Condition {
    pub fn new(
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: generation,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Puts `new` into `conditions`, keeping the old `lastTransitionTime` when the status did not
/// change (so a condition's age means "in this status since").
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time;
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
        let t1: DateTime<Utc> = "2024-01-02T00:00:00Z".parse().unwrap();
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            Condition::new(READY, false, "InvalidSchedule", "a", Some(1), t0),
        );
        set_condition(
            &mut cs,
            Condition::new(READY, false, "InvalidTimezone", "b", Some(2), t1),
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, t0);
        assert_eq!(cs[0].reason, "InvalidTimezone");
        set_condition(
            &mut cs,
            Condition::new(READY, true, "Scheduling", "", Some(2), t1),
        );
        assert_eq!(cs[0].last_transition_time, t1);
        assert!(find(&cs, READY).is_some_and(Condition::is_true));
    }
}
