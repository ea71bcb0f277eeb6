//! The scheduler's record beside the runs (issue 13): what it decided, written in the same
//! transaction as the runs the decision created — trigger values handled, each DAG's
//! schedule position, each Backfill's done dates and lifetime.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DagKey, NewRun, Rerun, RunRow, SpecRow};

/// A DAG's schedule position (`dag_positions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub dag: DagKey,
    /// the DAG object the position is of (a DAG re-created under the name starts afresh)
    pub dag_uid: String,
    /// the schedule and zone (`<schedule>|<zone>`) the position is of
    pub schedule: String,
    /// when that schedule began: the DAG's creation, or the change to it
    pub since: DateTime<Utc>,
    /// the latest scheduled tick decided: a run created, or the tick skipped
    pub last_tick: Option<DateTime<Utc>>,
    /// BufferOne: the tick waiting in the buffer while `last_tick` moved past it (a newer
    /// tick skipped); queued again when the DAG is taken up, unless a run has it
    pub buffered: Option<DateTime<Utc>>,
}

impl Position {
    /// Tick `tick` was decided: the position is at least there, and a buffered tick decided
    /// is no longer buffered.
    pub fn decide(&mut self, tick: DateTime<Utc>) {
        self.last_tick = self.last_tick.max(Some(tick));
        if self.buffered == Some(tick) {
            self.buffered = None;
        }
    }
}

/// What the store knows of a DAG when the scheduler takes it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DagRecord {
    pub dag: DagKey,
    pub position: Option<Position>,
    /// the latest logical date of a scheduled run of the DAG (of any object of the name)
    pub last_scheduled: Option<DateTime<Utc>>,
    /// the trigger value handled last (`status.lastHandledTrigger`)
    pub last_trigger: Option<String>,
}

/// When a DAG's newest run that succeeded, and its newest run that failed, ended (what the
/// `dagop_dag_last_{success,failure}_timestamp_seconds` gauges are seeded with at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastEnds {
    pub dag: DagKey,
    pub success: Option<DateTime<Utc>>,
    pub failure: Option<DateTime<Utc>>,
}

/// A trigger value refused before it became a run (suspended DAG, malformed params).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedTrigger {
    pub dag: DagKey,
    pub value: String,
    pub message: String,
}

/// What became of a trigger value at admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// it created this run
    Created(Uuid),
    /// it was refused, for this reason
    Refused(String),
    /// it was recorded before (by another replica, or before a restart): nothing was done
    Known,
}

/// A Backfill object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackfillRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A date a Backfill passed over (a run existed that `reprocess` leaves alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillSkip {
    pub backfill: BackfillRef,
    pub logical_date: DateTime<Utc>,
}

/// A Backfill's lifetime, as recorded (`backfills`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackfillRecord {
    pub total: Option<i64>,
    /// a dry run: the dates it would skip
    pub would_skip: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    /// set when it ended: a finished Backfill is never planned again
    pub completed_at: Option<DateTime<Utc>>,
    pub phase: Option<String>,
}

/// Everything one admission pass writes, in one transaction: the spec versions the runs
/// name, the new runs (trigger runs claim their value first: a value recorded before yields
/// nothing), the re-runs, triggers refused, schedule positions, Backfill dates skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admission {
    pub specs: Vec<SpecRow>,
    pub runs: Vec<NewRun>,
    pub reruns: Vec<Rerun>,
    pub refused: Vec<RefusedTrigger>,
    pub positions: Vec<Position>,
    pub skips: Vec<BackfillSkip>,
    /// runs recorded as failed at once, never started (a `dependsOn` wait that timed out):
    /// their tasks `upstream_failed` with the message
    pub failed: Vec<FailedRun>,
}

/// A run created failed, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedRun {
    pub run: NewRun,
    pub message: String,
}

impl Admission {
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
            && self.runs.is_empty()
            && self.failed.is_empty()
            && self.reruns.is_empty()
            && self.refused.is_empty()
            && self.positions.is_empty()
            && self.skips.is_empty()
    }
}

/// What an admission wrote: the runs created or re-run (in the order given), the runs created
/// failed, and what became of each trigger value it carried (runs' and refused ones).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admitted {
    /// the runs created (running) and re-run in place
    pub runs: Vec<RunRow>,
    /// the runs created failed (`Admission::failed` whose date was free)
    pub failed: Vec<RunRow>,
    pub triggers: Vec<(DagKey, String, TriggerOutcome)>,
}
