//! What users ask of runs (issue 16): trigger, cancel, re-run, mark. Each request is recorded
//! (who, when, what) by the replica that received it; the leader's executor carries out the
//! pending ones and records the outcome in the same transaction as its change.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DagKey, NewTask, RunState};

/// What is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// a manual run (carried out at once as a trigger annotation on the DAG)
    Trigger,
    /// a running run ends `cancelled`: its Pods deleted, its slots freed
    Cancel,
    /// a finished run's failed, upstream-failed and cancelled tasks run again in place
    Rerun,
    /// the run ends (or is re-labelled) `success`
    MarkSuccess,
    /// the run ends (or is re-labelled) `failed`
    MarkFailed,
}

impl ActionKind {
    pub const ALL: [ActionKind; 5] = [
        ActionKind::Trigger,
        ActionKind::Cancel,
        ActionKind::Rerun,
        ActionKind::MarkSuccess,
        ActionKind::MarkFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Trigger => "trigger",
            ActionKind::Cancel => "cancel",
            ActionKind::Rerun => "rerun",
            ActionKind::MarkSuccess => "mark_success",
            ActionKind::MarkFailed => "mark_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a carried-out action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionOutcome {
    Done,
    /// not possible in the run's state (e.g. cancelling a finished run); the message says why
    Refused,
}

impl ActionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Done => "done",
            ActionOutcome::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ActionOutcome::Done, ActionOutcome::Refused]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// An action to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAction {
    pub dag: DagKey,
    pub run_id: Option<Uuid>,
    pub kind: ActionKind,
    /// a trigger's id and params
    pub detail: serde_json::Value,
    /// the user, as the TokenReview names them
    pub requested_by: String,
    /// recorded as already carried out (a trigger), with this message
    pub done: Option<String>,
}

/// An action as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct RunAction {
    pub id: i64,
    pub dag: DagKey,
    pub run_id: Option<Uuid>,
    pub kind: ActionKind,
    pub detail: serde_json::Value,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
    pub outcome: Option<ActionOutcome>,
    pub message: Option<String>,
}

/// A change of a run that carries out an action, guarded by the state it was decided from.
#[derive(Clone, Debug, PartialEq)]
pub enum RunChange {
    /// the run goes from `from` to `to` (ended now if it was running); its unfinished tries
    /// (pending, queued, running, up for retry) become `tries_to`
    SetState {
        run: Uuid,
        from: RunState,
        to: RunState,
        tries_to: super::TaskState,
    },
    /// a finished run runs again in place: `attempt` + 1, `running` now, a new `pending` try
    /// after the latest of each of `tasks`; the other tasks keep their tries
    Rerun {
        run: Uuid,
        from: RunState,
        tasks: Vec<NewTask>,
    },
}

/// One action carried out: its outcome, and the change that does it (applied in the same
/// transaction; if the run is no longer in the state the change expects, nothing is written
/// and the action stays pending, to be decided again).
#[derive(Clone, Debug, PartialEq)]
pub struct ActionWrite {
    pub action: i64,
    pub outcome: ActionOutcome,
    pub message: String,
    pub change: Option<RunChange>,
}

/// What writing an [`ActionWrite`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionWritten {
    /// recorded; the run as it is now (when the action changed one)
    Recorded(Option<Box<super::RunRow>>),
    /// the run was not in the expected state: nothing written
    Stale,
}
