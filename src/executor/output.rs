//! What the executor reports, by destination: [`ExecStatus`] for the status writer (DAGs and
//! Pools), [`Notice`]s for events, [`TaskTelemetry`] for metrics, and the runs that ended for
//! the engine. The controllers read these types and nothing else of the executor.

/// Whether the executor is admitting: what it tells the writers that give way to its creates.
pub use super::admitting::Admitting;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::gate::GateScope;
use crate::graph::TaskState;
use crate::key::{DagKey, PoolKey, Subject};
use crate::report::Notice;
use crate::store::{RecentRuns, RunState, RunType, TryKey};

use super::PodKey;

/// A Pool's usage: what its status shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub key: PoolKey,
    pub generation: Option<i64>,
    pub slots: i32,
    /// slots held by running tries
    pub used: i32,
    /// tries waiting for a slot of the pool
    pub queued: i32,
}

/// What the status writer shows.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecStatus {
    /// the newest runs of a DAG changed
    RecentRuns(RecentRuns),
    /// the usage of Pools that changed
    Pools(Vec<PoolUsage>),
    /// Pools that were deleted
    PoolsGone(Vec<PoolKey>),
    /// the API server refuses a DAG's Pods (the last message), or creates them again (None)
    LaunchHealth(DagKey, Option<String>),
    /// reachability of the gate changed (false: no task is admitted, fail closed)
    GateHealth(bool),
}

/// The try that failed a run for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedTry {
    pub task: String,
    pub try_number: i32,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
}

/// A run that ended (success or failed), for events and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFinished {
    pub dag: DagKey,
    pub id: Uuid,
    pub run_type: RunType,
    pub logical_date: DateTime<Utc>,
    pub state: RunState,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
    /// why it failed: the first task to fail for good
    pub failed_task: Option<FailedTry>,
    /// it failed because it ran longer than `runTimeoutSeconds` (this many seconds)
    pub timed_out_after: Option<i64>,
}

impl RunFinished {
    /// The run as it ended: its final state, and the task that failed it.
    pub(super) fn of(run: &super::state::LiveRun, state: RunState, now: DateTime<Utc>) -> Self {
        let failed_task = run
            .tasks
            .iter()
            .filter(|t| t.row.state == TaskState::Failed)
            .min_by_key(|t| t.row.ended_at)
            .map(|t| FailedTry {
                task: t.row.task_name.clone(),
                try_number: t.row.try_number,
                exit_code: t.row.exit_code,
                message: t.row.message.clone(),
            });
        RunFinished {
            dag: run.run.dag.clone(),
            id: run.run.id,
            run_type: run.run.run_type,
            logical_date: run.run.logical_date,
            state,
            started_at: run.run.started_at,
            ended_at: now,
            failed_task,
            timed_out_after: None,
        }
    }

    /// `RunSucceeded` or `RunFailed` (with the failed task, try, exit code and message).
    pub fn notice(&self) -> Notice {
        let subject = Subject::Dag(self.dag.clone());
        let took = self
            .duration_secs()
            .map(|s| format!(" in {s:.1}s"))
            .unwrap_or_default();
        let run = format!(
            "{} run {} for {}",
            self.run_type.as_str(),
            self.id,
            self.logical_date.to_rfc3339()
        );
        if self.state == RunState::Success {
            return Notice::normal(subject, "RunSucceeded", format!("{run} succeeded{took}"));
        }
        if let Some(limit) = self.timed_out_after {
            let stopped = match &self.failed_task {
                Some(f) => format!("; task {:?} was stopped", f.task),
                None => String::new(),
            };
            return Notice::warning(
                subject,
                "RunTimedOut",
                format!(
                    "{run} failed: not finished within runTimeoutSeconds ({limit}s){stopped}; its \
                     unfinished tasks are skipped"
                ),
            );
        }
        let why = match &self.failed_task {
            Some(f) => format!(
                ": task {:?} try {} failed{}{}",
                f.task,
                f.try_number,
                f.exit_code
                    .map(|c| format!(" with exit code {c}"))
                    .unwrap_or_default(),
                f.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        Notice::warning(subject, "RunFailed", format!("{run} failed{took}{why}"))
    }

    /// Seconds from admission to the end.
    pub fn duration_secs(&self) -> Option<f64> {
        self.started_at
            .map(|s| ((self.ended_at - s).num_milliseconds() as f64 / 1000.0).max(0.0))
    }
}

/// `TaskRetrying`: a try failed and the next one comes after `delay`.
pub fn retry_notice(
    dag: &DagKey,
    task: &str,
    failed_try: i32,
    exit_code: Option<i32>,
    message: Option<&str>,
    delay: std::time::Duration,
) -> Notice {
    Notice::warning(
        Subject::Dag(dag.clone()),
        "TaskRetrying",
        format!(
            "task {task:?} try {failed_try} failed{}{}; try {} in {}s",
            exit_code
                .map(|c| format!(" with exit code {c}"))
                .unwrap_or_default(),
            message.map(|m| format!(": {m}")).unwrap_or_default(),
            failed_try + 1,
            delay.as_secs()
        ),
    )
}

/// A task try that ended, and how long it ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TryFinished {
    pub state: TaskState,
    pub secs: f64,
}

/// What the metrics count, after each step.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskTelemetry {
    /// the latest tries of running runs, by state
    pub by_state: Vec<(TaskState, i64)>,
    /// the transitions made
    pub transitions: Vec<TaskState>,
    /// the gate's refusals and errors, by scope
    pub gate_refused: Vec<GateScope>,
    pub gate_errors: Vec<GateScope>,
    /// runs that ended since the last report
    pub runs_finished: Vec<RunFinished>,
    /// tries that ended since the last report
    pub tries_finished: Vec<TryFinished>,
}

/// A try whose Pod finished: the end of its log is kept (see `crate::logs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedTry {
    pub key: TryKey,
    pub pod: PodKey,
}

/// What the executor reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecOutput {
    Status(ExecStatus),
    /// an event on a DAG
    Event(Notice),
    Telemetry(TaskTelemetry),
    /// runs that ended (success, failed): their slots are free
    RunsEnded(Vec<Uuid>),
    /// tries that ended with a Pod: their logs' tails are kept
    TriesEnded(Vec<EndedTry>),
    /// a step failed and is retried: the error's `metric_label()` (`store`, `gate`)
    StepFailed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(state: RunState, failed_task: Option<FailedTry>) -> RunFinished {
        let at: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
        RunFinished {
            dag: DagKey::new("ns", "etl"),
            id: Uuid::nil(),
            run_type: RunType::Scheduled,
            logical_date: at,
            state,
            started_at: Some(at),
            ended_at: at + chrono::Duration::seconds(90),
            failed_task,
            timed_out_after: None,
        }
    }

    #[test]
    fn a_timed_out_run_says_so() {
        let mut run = finished(
            RunState::Failed,
            Some(FailedTry {
                task: "load".into(),
                try_number: 1,
                exit_code: None,
                message: Some("run timed out after 60s (runTimeoutSeconds)".into()),
            }),
        );
        run.timed_out_after = Some(60);
        let n = run.notice();
        assert_eq!((n.reason, n.warning), ("RunTimedOut", true));
        assert!(
            n.message.contains("runTimeoutSeconds (60s)"),
            "{}",
            n.message
        );
        assert!(
            n.message.contains("task \"load\" was stopped"),
            "{}",
            n.message
        );
    }

    #[test]
    fn run_notices_say_what_happened() {
        let ok = finished(RunState::Success, None).notice();
        assert_eq!((ok.reason, ok.warning), ("RunSucceeded", false));
        assert!(ok.message.contains("succeeded in 90.0s"), "{}", ok.message);
        let failed = finished(
            RunState::Failed,
            Some(FailedTry {
                task: "load".into(),
                try_number: 3,
                exit_code: Some(2),
                message: Some("Error".into()),
            }),
        )
        .notice();
        assert_eq!((failed.reason, failed.warning), ("RunFailed", true));
        assert!(
            failed
                .message
                .ends_with("failed in 90.0s: task \"load\" try 3 failed with exit code 2: Error"),
            "{}",
            failed.message
        );
        let retry = retry_notice(
            &DagKey::new("ns", "etl"),
            "load",
            1,
            Some(1),
            None,
            std::time::Duration::from_secs(30),
        );
        assert_eq!(retry.reason, "TaskRetrying");
        assert_eq!(
            retry.message,
            "task \"load\" try 1 failed with exit code 1; try 2 in 30s"
        );
    }
}
