//! A DAG's status: what its three producers say — the DAG controller (is the spec valid?), the
//! engine (schedule times, counts, triggers) and the executor (recent runs, Pods refused) —
//! merged with the store's and the gate's health into one `DagStatus`.

use chrono::{DateTime, Utc};

use crate::api::DagStatus;
use crate::api::conditions::{Condition, READY, set_condition};
use crate::api::dag::RunSummary;
use crate::engine::SchedulingStatus;

pub use crate::report::Problem;

/// Whether the controller found the spec schedulable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    pub generation: Option<i64>,
    /// `None` when valid
    pub problem: Option<Problem>,
    /// `status.lastHandledTrigger` as the object carries it (until the engine reports)
    pub observed_trigger: Option<String>,
}

/// What is known of one DAG, from its three producers.
#[derive(Default)]
pub(super) struct DagModel {
    pub(super) validity: Option<Validity>,
    /// what the engine says, once it has taken the DAG up
    pub(super) scheduling: Option<SchedulingStatus>,
    pub(super) conditions: Vec<Condition>,
    pub(super) recent_runs: Vec<RunSummary>,
    pub(super) last_successful_time: Option<DateTime<Utc>>,
    pub(super) missing_pools: Vec<String>,
    pub(super) launch_refused: Option<String>,
}

/// A stored run as `status.recentRuns` shows it.
pub fn summary(run: &crate::store::RunRow) -> RunSummary {
    RunSummary {
        id: run.id.to_string(),
        type_: run.run_type.as_str().to_string(),
        logical_date: run.logical_date,
        state: run.state.as_str().to_string(),
        started_at: run.started_at,
        ended_at: run.ended_at,
    }
}

/// Builds the full status of a DAG from what is known of it.
pub(super) fn render(
    model: &mut DagModel,
    store_ok: bool,
    gate_ok: bool,
    now: DateTime<Utc>,
) -> DagStatus {
    let generation = model.validity.as_ref().and_then(|v| v.generation);
    let (ready, reason, message) = match model.validity.as_ref().and_then(|v| v.problem.clone()) {
        Some(Problem { reason, message }) => (false, reason, message),
        None if !model.missing_pools.is_empty() => (
            false,
            "PoolNotFound".to_string(),
            format!(
                "tasks naming {} wait: no such Pool in this namespace",
                model
                    .missing_pools
                    .iter()
                    .map(|p| format!("pool {p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        None if model.launch_refused.is_some() => (
            false,
            "FailedCreate".to_string(),
            format!(
                "the API server refuses the task Pods: {}",
                model.launch_refused.clone().unwrap_or_default()
            ),
        ),
        None if !store_ok => (
            false,
            "StoreUnavailable".to_string(),
            "PostgreSQL is unreachable: admission is paused; due runs are created once it returns"
                .to_string(),
        ),
        None if !gate_ok => (
            false,
            "GateUnavailable".to_string(),
            "the concurrency gate (Redis) is unreachable: admission is paused so no limit is \
             exceeded; it resumes by itself"
                .to_string(),
        ),
        None if model.scheduling.as_ref().is_some_and(|s| s.suspended) => (
            true,
            "Suspended".to_string(),
            "suspended: no new scheduled runs".to_string(),
        ),
        None => (
            true,
            "Scheduling".to_string(),
            match model.scheduling.as_ref().and_then(|s| s.next_schedule_time) {
                Some(t) => format!("next run at {}", t.to_rfc3339()),
                None => "no upcoming tick (manual triggers and backfills only)".to_string(),
            },
        ),
    };
    set_condition(
        &mut model.conditions,
        Condition::new(READY, ready, &reason, message, generation, now),
    );
    let observed = model
        .validity
        .as_ref()
        .and_then(|v| v.observed_trigger.clone());
    let default = SchedulingStatus::default();
    let s = model.scheduling.as_ref().unwrap_or(&default);
    DagStatus {
        observed_generation: generation,
        conditions: model.conditions.clone(),
        next_schedule_time: s.next_schedule_time,
        last_schedule_time: s.last_schedule_time,
        last_successful_time: model.last_successful_time,
        active_runs: s.active_runs,
        queued_runs: s.queued_runs,
        // the engine's value (from the record) once it has one, else what the object says
        last_handled_trigger: s.last_handled_trigger.clone().or(observed),
        recent_runs: model.recent_runs.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reasons() {
        let now = Utc::now();
        let mut m = DagModel {
            validity: Some(Validity {
                generation: Some(3),
                problem: Some(Problem {
                    reason: "InvalidSchedule".into(),
                    message: "bad".into(),
                }),
                observed_trigger: Some("t-1".into()),
            }),
            ..Default::default()
        };
        let s = render(&mut m, true, true, now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions[0].reason, "InvalidSchedule");
        assert!(!s.conditions[0].is_true());

        // until the engine reports, the trigger the object carries is kept
        assert_eq!(s.last_handled_trigger.as_deref(), Some("t-1"));
        m.validity = Some(Validity {
            generation: Some(4),
            problem: None,
            observed_trigger: Some("t-1".into()),
        });
        assert_eq!(
            render(&mut m, false, true, now).conditions[0].reason,
            "StoreUnavailable"
        );
        m.scheduling = Some(SchedulingStatus {
            suspended: true,
            last_handled_trigger: Some("t-2".into()),
            ..Default::default()
        });
        assert_eq!(
            render(&mut m, true, false, now).conditions[0].reason,
            "GateUnavailable"
        );
        let s = render(&mut m, true, true, now);
        assert_eq!(s.conditions[0].reason, "Suspended");
        assert_eq!(
            s.last_handled_trigger.as_deref(),
            Some("t-2"),
            "the engine's value wins"
        );
        assert!(s.conditions[0].is_true());
        m.missing_pools = vec!["db".into()];
        let s = render(&mut m, true, true, now);
        assert_eq!(s.conditions[0].reason, "PoolNotFound");
        assert!(s.conditions[0].message.contains("pool \"db\""));
        m.missing_pools.clear();
        m.launch_refused = Some("spec.containers[0].image: Required value".into());
        let s = render(&mut m, true, true, now);
        assert_eq!(s.conditions[0].reason, "FailedCreate");
        assert!(!s.conditions[0].is_true());
        assert!(
            s.conditions[0].message.contains("image: Required"),
            "{}",
            s.conditions[0].message
        );
        assert!(!s.conditions[0].is_true());
    }
}
