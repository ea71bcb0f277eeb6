//! What users ask of runs (issue 16): trigger, cancel, re-run, mark — and of one task of a run
//! (issue 29): clear it, mark it success or failed. Each request is recorded
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
    /// one task (and the chosen relatives) runs again in the same run: a new `pending` try
    ClearTask,
    /// one task's (and the chosen relatives') latest try takes `success`
    MarkTaskSuccess,
    /// one task's (and the chosen relatives') latest try takes `failed`
    MarkTaskFailed,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::Trigger,
        ActionKind::Cancel,
        ActionKind::Rerun,
        ActionKind::MarkSuccess,
        ActionKind::MarkFailed,
        ActionKind::ClearTask,
        ActionKind::MarkTaskSuccess,
        ActionKind::MarkTaskFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Trigger => "trigger",
            ActionKind::Cancel => "cancel",
            ActionKind::Rerun => "rerun",
            ActionKind::MarkSuccess => "mark_success",
            ActionKind::MarkFailed => "mark_failed",
            ActionKind::ClearTask => "clear_task",
            ActionKind::MarkTaskSuccess => "mark_task_success",
            ActionKind::MarkTaskFailed => "mark_task_failed",
        }
    }

    /// Whether it acts on one task of a run (and names it).
    pub fn is_task_action(self) -> bool {
        matches!(
            self,
            ActionKind::ClearTask | ActionKind::MarkTaskSuccess | ActionKind::MarkTaskFailed
        )
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

/// The task a task action acts on, and which of its relatives (transitively) go with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskTarget {
    pub task: String,
    /// every task below it too
    pub downstream: bool,
    /// every task above it too
    pub upstream: bool,
}

/// An action to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAction {
    pub dag: DagKey,
    pub run_id: Option<Uuid>,
    pub kind: ActionKind,
    /// a trigger's id and params
    pub detail: serde_json::Value,
    /// the task of a task action (none for a run action)
    pub task: Option<TaskTarget>,
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
    pub task: Option<TaskTarget>,
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
    /// tasks of a run change one by one (a task action): the run is (or goes back to)
    /// `running` with `attempt` + 1 — so a cleared task has its retries again — and each
    /// change is guarded by the latest try it was decided from
    Tasks {
        run: Uuid,
        from: RunState,
        changes: Vec<TaskChange>,
    },
}

/// What a task action does to one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEffect {
    /// a new `pending` try after the latest, which — when unfinished — ends `cancelled` first
    /// (its Pod deleted when it has one)
    NewTry,
    /// the latest try takes this state (ended now; its Pod deleted when it has one)
    Set(super::TaskState),
}

/// One task's change by a task action, decided from its latest try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskChange {
    pub task: String,
    /// the latest try decided from (0: the task has none)
    pub try_number: i32,
    /// its state
    pub from: super::TaskState,
    pub effect: TaskEffect,
    /// the Pool of a new try
    pub pool: Option<String>,
    pub pool_slots: i32,
    /// why: `selected` (the task or a chosen relative) or `redecided` (below a changed task,
    /// it never ran: its trigger rule decides it again)
    pub why: ChangeReason,
}

/// Why a task changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeReason {
    Selected,
    Redecided,
}

impl ChangeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeReason::Selected => "selected",
            ChangeReason::Redecided => "redecided",
        }
    }
}

impl TaskChange {
    /// Its state afterwards (`pending` for a new try).
    pub fn to(&self) -> super::TaskState {
        match &self.effect {
            TaskEffect::NewTry => super::TaskState::Pending,
            TaskEffect::Set(s) => *s,
        }
    }

    /// Whether its latest try may have a Pod to delete (queued or running).
    pub fn kills(&self) -> bool {
        matches!(
            self.from,
            super::TaskState::Queued | super::TaskState::Running
        )
    }
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
