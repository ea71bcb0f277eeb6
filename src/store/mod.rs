//! PostgreSQL, the system of record (SPEC §6): runs and task instances. All SQL lives here.
//! The engine talks to the store through [`RunStore`], implemented by [`PgStore`].

pub mod action;
mod pg;
mod record;

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use self::action::{
    ActionKind, ActionOutcome, ActionWrite, ActionWritten, ChangeReason, NewAction, RunAction,
    RunChange, TaskChange, TaskEffect, TaskTarget,
};
pub use crate::graph::TaskState;
pub use pg::{
    AppliedMigration, DailyCount, NamespaceIncarnation, PgStore, PoolSettings, PurgeDue, PurgeStep,
    RunQuery, StoredLog,
};
pub use record::{
    Admission, Admitted, BackfillRecord, BackfillRef, BackfillSkip, DagRecord, FailedRun, LastEnds,
    Position, RefusedTrigger, TriggerOutcome,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unexpected value in column {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
}

/// How a run came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunType {
    Scheduled,
    Manual,
    Backfill,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [RunType::Scheduled, RunType::Manual, RunType::Backfill]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// A run's priority class (SPEC §4): manual > scheduled > backfill.
impl From<RunType> for crate::queue::RunClass {
    fn from(t: RunType) -> Self {
        match t {
            RunType::Manual => crate::queue::RunClass::Manual,
            RunType::Scheduled => crate::queue::RunClass::Scheduled,
            RunType::Backfill => crate::queue::RunClass::Backfill,
        }
    }
}

/// Run states (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    Running,
    Success,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RunState::Running,
            RunState::Success,
            RunState::Failed,
            RunState::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

pub use crate::key::{BackfillKey, DagKey};

/// A task instance to create with its run, `pending`, try 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask {
    pub task_name: String,
    pub pool: Option<String>,
    pub pool_slots: i32,
}

/// An admitted run to persist as `running`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    pub dag: DagKey,
    pub dag_uid: String,
    pub run_type: RunType,
    pub backfill_name: Option<String>,
    /// the uid of the Backfill object that plans it (its done date is recorded with it)
    pub backfill_uid: Option<String>,
    /// the trigger value that asks for it (a manual run): claimed in the same transaction
    pub trigger: Option<String>,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub priority: i32,
    pub params: serde_json::Value,
    /// the DAG spec version the run executes (stored with it, or by [`RunStore::save_specs`])
    pub spec_hash: Option<String>,
    pub tasks: Vec<NewTask>,
}

/// A version of a DAG's spec: its JSON and the SHA-256 of that JSON (hex).
#[derive(Clone, Debug, PartialEq)]
pub struct SpecRow {
    pub hash: String,
    pub spec: serde_json::Value,
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    pub id: Uuid,
    pub dag: DagKey,
    pub dag_uid: String,
    pub run_type: RunType,
    pub backfill_name: Option<String>,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub priority: i32,
    pub state: RunState,
    pub params: serde_json::Value,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// the DAG spec version the run executes (none for runs admitted before versions)
    pub spec_hash: Option<String>,
}

/// A task instance as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub run_id: Uuid,
    pub task_name: String,
    pub try_number: i32,
    pub state: TaskState,
    pub pool: Option<String>,
    pub pool_slots: i32,
    pub pod_name: Option<String>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// the run attempt this try belongs to (a Backfill's reprocess starts a new one)
    pub attempt: i32,
}

/// The latest try of each (run, task): the one the grid, a re-run and a run's outcome look at.
/// Try numbers grow across a run's attempts, so the highest (attempt, try) is the latest.
pub fn latest_tries(tries: &[TaskRow]) -> std::collections::HashMap<(Uuid, &str), &TaskRow> {
    let mut latest: std::collections::HashMap<(Uuid, &str), &TaskRow> =
        std::collections::HashMap::new();
    for t in tries {
        let slot = latest.entry((t.run_id, t.task_name.as_str())).or_insert(t);
        if (t.attempt, t.try_number) > (slot.attempt, slot.try_number) {
            *slot = t;
        }
    }
    latest
}

/// What a Backfill needs to know of an existing run in its range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateRun {
    pub id: Uuid,
    pub logical_date: DateTime<Utc>,
    pub state: RunState,
    pub backfill_name: Option<String>,
}

/// A finished run to run again in place (Backfill `reprocess`): `attempt` + 1, `running`
/// now, new `pending` tries for `tasks`; earlier tries stay.
#[derive(Clone, Debug, PartialEq)]
pub struct Rerun {
    pub id: Uuid,
    pub backfill_name: String,
    /// the uid of the Backfill object (its done date is recorded with the re-run)
    pub backfill_uid: String,
    pub params: serde_json::Value,
    /// the DAG spec version the run executes (stored by [`RunStore::save_specs`] first)
    pub spec_hash: Option<String>,
    pub tasks: Vec<NewTask>,
}

/// The dates a Backfill is done with: the runs it created or re-ran, by state, and the
/// dates it skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackfillCounts {
    pub running: i64,
    pub success: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub skipped: i64,
}

impl BackfillCounts {
    /// Runs created or re-run.
    pub fn total(&self) -> i64 {
        self.running + self.success + self.failed + self.cancelled
    }
}

/// Which runs `list_runs` returns (newest logical date first).
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub namespace: Option<String>,
    pub dag_name: Option<String>,
    pub state: Option<RunState>,
    /// Most runs returned; `0` (the default) or less: no limit.
    pub limit: i64,
}

/// What the engine needs of the store.
pub trait RunStore: Send + Sync + 'static {
    /// Cheap round trip: is the database reachable?
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes what one admission pass decided, in one transaction (see [`Admission`]).
    /// New runs are inserted `running` (started now) with their task instances `pending`, in
    /// a constant number of round trips; a run whose (namespace, dag, logical date) exists
    /// already is skipped, and so is a trigger run whose value is recorded already. Returns
    /// the runs created or re-run.
    fn admit(
        &self,
        admission: &Admission,
    ) -> impl Future<Output = Result<Admitted, StoreError>> + Send;

    /// [`RunStore::admit`] of new runs only. Returns the runs inserted.
    fn insert_runs(
        &self,
        runs: &[NewRun],
    ) -> impl Future<Output = Result<Vec<RunRow>, StoreError>> + Send {
        let admission = Admission {
            runs: runs.to_vec(),
            ..Admission::default()
        };
        async move { self.admit(&admission).await.map(|a| a.runs) }
    }

    /// What the store knows of these DAGs (position, last scheduled run, last trigger).
    fn dag_records(
        &self,
        dags: &[DagKey],
    ) -> impl Future<Output = Result<Vec<DagRecord>, StoreError>> + Send;

    /// Which of these (DAG, trigger value) pairs are recorded (handled before).
    fn recorded_triggers(
        &self,
        values: &[(DagKey, String)],
    ) -> impl Future<Output = Result<Vec<(DagKey, String)>, StoreError>> + Send;

    /// A Backfill's recorded lifetime.
    fn backfill_record(
        &self,
        backfill: &BackfillRef,
    ) -> impl Future<Output = Result<Option<BackfillRecord>, StoreError>> + Send;

    /// Records a Backfill's lifetime (an existing record is replaced).
    fn save_backfill(
        &self,
        backfill: &BackfillRef,
        record: &BackfillRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The dates in `[from, to]` a Backfill is done with (created, re-ran or skipped).
    fn backfill_done(
        &self,
        backfill: &BackfillRef,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<DateTime<Utc>>, StoreError>> + Send;

    /// Per DAG of one namespace or of all: when its newest successful run and its newest
    /// failed run ended (one query; DAGs with neither are left out).
    fn last_ends(
        &self,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<Vec<LastEnds>, StoreError>> + Send;

    /// Every run in state `running`, of one namespace or of all.
    fn running_runs(
        &self,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<Vec<RunRow>, StoreError>> + Send;

    /// Stores spec versions (idempotent: a known hash is left as it is).
    fn save_specs(&self, specs: &[SpecRow]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The stored spec versions of the given hashes (unknown hashes are left out).
    fn specs(
        &self,
        hashes: &[String],
    ) -> impl Future<Output = Result<Vec<SpecRow>, StoreError>> + Send;

    /// Pins a spec version to runs admitted before versions existed (only where none is set).
    fn pin_spec(
        &self,
        run_ids: &[Uuid],
        hash: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks runs `cancelled` (ended now) and their unfinished task instances `cancelled`.
    /// Returns how many runs changed.
    fn cancel_runs(&self, ids: &[Uuid]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// One run, if it exists.
    fn run(&self, id: Uuid) -> impl Future<Output = Result<Option<RunRow>, StoreError>> + Send;

    /// Actions not carried out yet, oldest first, of one namespace or of all.
    fn pending_actions(
        &self,
        namespace: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<RunAction>, StoreError>> + Send;

    /// Carries out an action: its run change and its outcome in one transaction (see
    /// [`ActionWrite`]).
    fn write_action(
        &self,
        write: &ActionWrite,
    ) -> impl Future<Output = Result<ActionWritten, StoreError>> + Send;

    /// Runs matching the filter, newest logical date first.
    fn list_runs(
        &self,
        filter: &RunFilter,
    ) -> impl Future<Output = Result<Vec<RunRow>, StoreError>> + Send;

    /// Task instances of the given runs, by run, task name and try.
    fn task_instances(
        &self,
        run_ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<TaskRow>, StoreError>> + Send;

    /// Applies one batch of task and run changes in one transaction; each change is guarded by
    /// the state it leaves, so a change someone else made first is skipped (reported `false`).
    fn write_changes(
        &self,
        changes: &Changes,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send;

    /// The newest `limit` runs of each DAG, and when its newest successful run ended.
    fn recent_runs(
        &self,
        dags: &[DagKey],
        limit: i64,
    ) -> impl Future<Output = Result<Vec<RecentRuns>, StoreError>> + Send;

    /// At most `limit` runs of a DAG with a logical date in `[from, end)`, oldest first (a
    /// page of a long range).
    fn runs_page(
        &self,
        dag: &DagKey,
        from: DateTime<Utc>,
        end: DateTime<Utc>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<DateRun>, StoreError>> + Send;

    /// The runs of a DAG with a logical date in `[start, end)`, oldest first.
    fn runs_between(
        &self,
        dag: &DagKey,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<DateRun>, StoreError>> + Send;

    /// The dates a Backfill is done with: skipped ones, and the runs it created or re-ran by
    /// their state now.
    fn backfill_counts(
        &self,
        backfill: &BackfillRef,
    ) -> impl Future<Output = Result<BackfillCounts, StoreError>> + Send;
}

/// One try of one task of one run.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TryKey {
    pub run_id: Uuid,
    pub task_name: String,
    pub try_number: i32,
}

impl TryKey {
    pub fn of(row: &TaskRow) -> Self {
        TryKey {
            run_id: row.run_id,
            task_name: row.task_name.clone(),
            try_number: row.try_number,
        }
    }
}

impl std::fmt::Display for TryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.run_id, self.task_name, self.try_number)
    }
}

/// Which timestamp of a try a move sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    None,
    Queued,
    Started,
    Ended,
}

impl Stamp {
    fn as_str(self) -> &'static str {
        match self {
            Stamp::None => "none",
            Stamp::Queued => "queued",
            Stamp::Started => "started",
            Stamp::Ended => "ended",
        }
    }
}

/// A task try moving from one state to another, guarded by the state it leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMove {
    pub key: TryKey,
    pub from: TaskState,
    pub to: TaskState,
    /// when it happened; written to the column `stamp` names
    pub at: DateTime<Utc>,
    pub stamp: Stamp,
    pub pod_name: Option<String>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
}

impl TaskMove {
    pub fn new(key: TryKey, from: TaskState, to: TaskState, at: DateTime<Utc>) -> Self {
        TaskMove {
            key,
            from,
            to,
            at,
            stamp: Stamp::None,
            pod_name: None,
            exit_code: None,
            message: None,
        }
    }
}

/// A retry: try `key` leaves `up_for_retry` for `failed` and the next try is added `queued`
/// (same pool, same attempt), both or neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextTry {
    pub key: TryKey,
    pub at: DateTime<Utc>,
}

/// A running run ending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEnd {
    pub id: Uuid,
    pub state: RunState,
    pub at: DateTime<Utc>,
}

/// What one executor step writes, in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub moves: Vec<TaskMove>,
    pub retries: Vec<NextTry>,
    pub run_ends: Vec<RunEnd>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty() && self.retries.is_empty() && self.run_ends.is_empty()
    }
}

/// Which changes of a [`Changes`] took effect, index for index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub moves: Vec<bool>,
    pub retries: Vec<bool>,
    pub run_ends: Vec<bool>,
}

/// The newest runs of a DAG (newest first) and when its newest successful run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentRuns {
    pub dag: DagKey,
    pub runs: Vec<RunRow>,
    pub last_success: Option<DateTime<Utc>>,
}
