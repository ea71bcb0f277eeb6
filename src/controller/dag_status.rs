//! A DAG's status: what its three producers say — the DAG controller (is the spec valid?), the
//! engine (schedule times, counts, triggers) and the executor (recent runs, Pods refused) —
//! merged with the store's and the gate's health into one `DagStatus`.

use chrono::{DateTime, Utc};

use crate::api::DagStatus;
use crate::api::conditions::{
    Condition, PRIORITY_CLAMPED, READY, RECONCILING, STALLED, set_condition,
};
use crate::api::dag::{AutoSuspension, RunSummary};
use crate::engine::SchedulingStatus;
use crate::store::RunState;

pub use crate::report::Problem;

/// Whether the controller found the spec schedulable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    pub generation: Option<i64>,
    /// `None` when valid
    pub problem: Option<Problem>,
    /// `status.lastHandledTrigger` as the object carries it (until the engine reports)
    pub observed_trigger: Option<String>,
    /// `spec.priority` lowered to the namespace's ceiling (the `PriorityClamped` condition)
    pub priority_clamped: Option<Problem>,
    /// `status.autoSuspension` as the object carries it (until the engine reports)
    pub observed_auto_suspension: Option<AutoSuspension>,
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
    /// upstream DAGs named that do not exist (`UpstreamNotFound`)
    pub(super) missing_upstreams: Option<Problem>,
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

/// What the three kstatus conditions say.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    ready: bool,
    /// Ready's reason and message
    why: Problem,
    /// the spec or the cluster needs a person: kstatus `Failed`
    stalled: bool,
    /// the operator is still working toward it (or waits for something that comes by
    /// itself): kstatus `InProgress`
    reconciling: bool,
}

impl Verdict {
    fn new(ready: bool, reason: &str, message: String) -> Self {
        Verdict {
            ready,
            why: Problem::new(reason, message),
            stalled: false,
            reconciling: false,
        }
    }

    fn stalled(mut self) -> Self {
        self.stalled = true;
        self
    }

    fn reconciling(mut self) -> Self {
        self.reconciling = true;
        self
    }
}

/// The newest finished runs that failed, in a row (running ones are passed over).
fn failing_streak(recent: &[RunSummary]) -> Vec<&RunSummary> {
    recent
        .iter()
        .filter(|r| r.state != RunState::Running.as_str())
        .take_while(|r| r.state == RunState::Failed.as_str())
        .collect()
}

/// The conditions from what is known, most pressing first (docs/SEMANTICS.md, "Conditions").
fn verdict(model: &DagModel, store_ok: bool, gate_ok: bool) -> Verdict {
    if let Some(Problem { reason, message }) =
        model.validity.as_ref().and_then(|v| v.problem.clone())
    {
        return Verdict::new(false, &reason, message).stalled();
    }
    if !model.missing_pools.is_empty() {
        let named = model
            .missing_pools
            .iter()
            .map(|p| format!("pool {p:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Verdict::new(
            false,
            "PoolNotFound",
            format!("tasks naming {named} wait: no such Pool in this namespace"),
        )
        .reconciling();
    }
    if let Some(Problem { reason, message }) = &model.missing_upstreams {
        return Verdict::new(false, reason, message.clone()).reconciling();
    }
    if let Some(refused) = &model.launch_refused {
        return Verdict::new(
            false,
            "FailedCreate",
            format!("the API server refuses the task Pods: {refused}"),
        )
        .stalled();
    }
    if !store_ok {
        return Verdict::new(
            false,
            "StoreUnavailable",
            "PostgreSQL is unreachable: admission is paused; due runs are created once it returns"
                .to_string(),
        )
        .reconciling();
    }
    if !gate_ok {
        return Verdict::new(
            false,
            "GateUnavailable",
            "the concurrency gate (Redis) is unreachable: admission is paused so no limit is \
             exceeded; it resumes by itself"
                .to_string(),
        )
        .reconciling();
    }
    if let Some(a) = model
        .scheduling
        .as_ref()
        .filter(|s| s.auto_suspended)
        .and_then(|s| s.auto_suspension.as_ref())
    {
        return Verdict::new(
            false,
            "AutoSuspended",
            format!(
                "suspended itself after {} failed scheduled runs in a row (the newest for {}; \
                 maxConsecutiveFailures): no new scheduled runs until the spec changes (e.g. \
                 toggle suspend)",
                a.failures,
                a.through.to_rfc3339()
            ),
        )
        .stalled();
    }
    let failing = failing_streak(&model.recent_runs);
    if let Some(newest) = failing.first() {
        let runs = if failing.len() == 1 {
            "the last finished run failed".to_string()
        } else {
            format!("the last {} finished runs failed", failing.len())
        };
        return Verdict::new(
            false,
            "RunsFailing",
            format!(
                "{runs} (newest: run {} for {}); see the DAG's RunFailed events",
                newest.id,
                newest.logical_date.to_rfc3339()
            ),
        );
    }
    let Some(scheduling) = &model.scheduling else {
        return Verdict::new(
            true,
            "Scheduling",
            "valid; the scheduler is taking it up".to_string(),
        )
        .reconciling();
    };
    if scheduling.suspended {
        return Verdict::new(
            true,
            "Suspended",
            "suspended: no new scheduled runs".to_string(),
        );
    }
    Verdict::new(
        true,
        "Scheduling",
        match scheduling.next_schedule_time {
            Some(t) => format!("next run at {}", t.to_rfc3339()),
            None => "no upcoming tick (manual triggers and backfills only)".to_string(),
        },
    )
}

/// Builds the full status of a DAG from what is known of it.
pub(super) fn render(
    model: &mut DagModel,
    store_ok: bool,
    gate_ok: bool,
    now: DateTime<Utc>,
) -> DagStatus {
    let generation = model.validity.as_ref().and_then(|v| v.generation);
    let v = verdict(model, store_ok, gate_ok);
    let (reason, message) = (v.why.reason.as_str(), v.why.message.clone());
    set_condition(
        &mut model.conditions,
        Condition::new(READY, v.ready, reason, message.clone(), generation, now),
    );
    let (stalled_reason, stalled_message) = if v.stalled {
        (reason, message.clone())
    } else {
        (
            "Schedulable",
            "the spec is valid and its Pods are accepted".to_string(),
        )
    };
    set_condition(
        &mut model.conditions,
        Condition::new(
            STALLED,
            v.stalled,
            stalled_reason,
            stalled_message,
            generation,
            now,
        ),
    );
    let (reconciling_reason, reconciling_message) = if v.reconciling {
        (reason, message)
    } else {
        (
            "Reconciled",
            "the operator has taken this generation up".to_string(),
        )
    };
    set_condition(
        &mut model.conditions,
        Condition::new(
            RECONCILING,
            v.reconciling,
            reconciling_reason,
            reconciling_message,
            generation,
            now,
        ),
    );
    match model
        .validity
        .as_ref()
        .and_then(|v| v.priority_clamped.as_ref())
    {
        Some(Problem { reason, message }) => set_condition(
            &mut model.conditions,
            Condition::new(
                PRIORITY_CLAMPED,
                true,
                reason,
                message.clone(),
                generation,
                now,
            ),
        ),
        None => model.conditions.retain(|c| c.type_ != PRIORITY_CLAMPED),
    }
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
        // the engine's record once it has one, else what the object says
        auto_suspension: s.auto_suspension.clone().or_else(|| {
            model
                .validity
                .as_ref()
                .and_then(|v| v.observed_auto_suspension.clone())
        }),
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
                priority_clamped: None,
                observed_auto_suspension: None,
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
            priority_clamped: None,
            observed_auto_suspension: None,
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

    /// Issue 27: an upstream DAG that does not exist is `Ready=False`, reason
    /// `UpstreamNotFound`, and `Reconciling` (it may yet be applied), not silently Ready.
    #[test]
    fn a_missing_upstream_is_not_ready_until_it_appears() {
        let now = Utc::now();
        let mut m = DagModel {
            validity: Some(Validity {
                generation: Some(1),
                problem: None,
                observed_trigger: None,
                priority_clamped: None,
                observed_auto_suspension: None,
            }),
            scheduling: Some(SchedulingStatus::default()),
            missing_upstreams: Some(Problem::new(
                "UpstreamNotFound",
                "dependsOn \"up\": no such DAG in this namespace".into(),
            )),
            ..Default::default()
        };
        let s = render(&mut m, true, true, now);
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "UpstreamNotFound")
        );
        assert!(ready.message.contains("\"up\""), "{}", ready.message);
        assert!(condition(&s, RECONCILING).is_true());
        assert!(!condition(&s, STALLED).is_true());
        m.missing_upstreams = None;
        let s = render(&mut m, true, true, now);
        assert!(condition(&s, READY).is_true());
    }

    fn condition<'a>(s: &'a DagStatus, type_: &str) -> &'a Condition {
        crate::api::conditions::find(&s.conditions, type_).expect("condition set")
    }

    fn run(state: &str, day: u32) -> RunSummary {
        RunSummary {
            id: format!("run-{day}"),
            type_: "scheduled".into(),
            logical_date: format!("2024-01-{day:02}T00:00:00Z").parse().unwrap(),
            state: state.into(),
            started_at: None,
            ended_at: None,
        }
    }

    #[test]
    fn a_clamped_priority_is_a_condition_while_it_lasts() {
        let now = Utc::now();
        let clamped = Problem::new("AboveNamespaceCeiling", "spec.priority 5000 …".into());
        let mut m = DagModel {
            validity: Some(Validity {
                generation: Some(1),
                problem: None,
                observed_trigger: None,
                priority_clamped: Some(clamped),
                observed_auto_suspension: None,
            }),
            ..Default::default()
        };
        let s = render(&mut m, true, true, now);
        let c = condition(&s, PRIORITY_CLAMPED);
        assert!(c.is_true());
        assert_eq!(c.reason, "AboveNamespaceCeiling");
        // clamping does not make the DAG unready
        assert!(condition(&s, READY).is_true());
        if let Some(v) = m.validity.as_mut() {
            v.priority_clamped = None;
        }
        let s = render(&mut m, true, true, now);
        assert!(s.conditions.iter().all(|c| c.type_ != PRIORITY_CLAMPED));
    }

    #[test]
    fn kstatus_conditions() {
        let now = Utc::now();
        let mut m = DagModel {
            validity: Some(Validity {
                generation: Some(7),
                problem: Some(Problem::new("InvalidDateRange", "end before start".into())),
                observed_trigger: None,
                priority_clamped: None,
                observed_auto_suspension: None,
            }),
            ..Default::default()
        };
        // an invalid spec: Stalled, for this generation
        let s = render(&mut m, true, true, now);
        for (type_, status, reason) in [
            (READY, "False", "InvalidDateRange"),
            (STALLED, "True", "InvalidDateRange"),
            (RECONCILING, "False", "Reconciled"),
        ] {
            let c = condition(&s, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (status, reason),
                "{type_}"
            );
            assert_eq!(c.observed_generation, Some(7));
        }
        // fixed, not taken up yet: Ready and Reconciling
        m.validity = Some(Validity {
            generation: Some(8),
            problem: None,
            observed_trigger: None,
            priority_clamped: None,
            observed_auto_suspension: None,
        });
        let s = render(&mut m, true, true, now);
        assert!(condition(&s, READY).is_true());
        assert!(condition(&s, RECONCILING).is_true());
        assert!(!condition(&s, STALLED).is_true());
        // taken up; the store down: Reconciling (it resumes by itself), never Stalled
        m.scheduling = Some(SchedulingStatus::default());
        let s = render(&mut m, false, true, now);
        assert_eq!(condition(&s, READY).reason, "StoreUnavailable");
        assert!(condition(&s, RECONCILING).is_true());
        assert!(!condition(&s, STALLED).is_true());
        // the newest finished runs failed: RunsFailing, not Stalled
        m.recent_runs = vec![
            run("running", 5),
            run("failed", 4),
            run("failed", 3),
            run("success", 2),
        ];
        let s = render(&mut m, true, true, now);
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RunsFailing")
        );
        assert!(
            ready.message.contains("the last 2 finished runs failed"),
            "{}",
            ready.message
        );
        assert!(ready.message.contains("run-4"), "{}", ready.message);
        assert!(!condition(&s, STALLED).is_true());
        assert!(!condition(&s, RECONCILING).is_true());
        // a success after them: Ready again
        m.recent_runs.insert(0, run("success", 6));
        let s = render(&mut m, true, true, now);
        assert!(condition(&s, READY).is_true());
        // Pods refused: Stalled (a person must act)
        m.launch_refused = Some("forbidden: exceeded quota".into());
        let s = render(&mut m, true, true, now);
        assert!(condition(&s, STALLED).is_true());
        assert_eq!(condition(&s, STALLED).reason, "FailedCreate");
    }
}
