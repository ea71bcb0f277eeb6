//! PostgreSQL, the system of record (SPEC §6): runs and task instances. All SQL lives here.
//! The engine talks to the store through [`RunStore`], implemented by [`PgStore`].

mod pg;

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use pg::{AppliedMigration, PgStore};

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

/// A DAG's identity in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DagKey {
    pub namespace: String,
    pub name: String,
}

impl DagKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        DagKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for DagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

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
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub priority: i32,
    pub params: serde_json::Value,
    pub tasks: Vec<NewTask>,
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
}

/// A task instance as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub run_id: Uuid,
    pub task_name: String,
    pub try_number: i32,
    pub state: String,
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
    pub params: serde_json::Value,
    pub tasks: Vec<NewTask>,
}

/// The runs a Backfill created or re-ran, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackfillCounts {
    pub running: i64,
    pub success: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl BackfillCounts {
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

    /// Inserts the runs as `running` (started now) with their task instances `pending`, in
    /// one transaction and a constant number of round trips. A run whose
    /// (namespace, dag, logical date) already exists is skipped. Returns the runs inserted.
    fn insert_runs(
        &self,
        runs: &[NewRun],
    ) -> impl Future<Output = Result<Vec<RunRow>, StoreError>> + Send;

    /// The latest logical date of a scheduled run of each DAG that has one.
    fn last_scheduled_ticks(
        &self,
    ) -> impl Future<Output = Result<Vec<(DagKey, DateTime<Utc>)>, StoreError>> + Send;

    /// Every run in state `running`.
    fn running_runs(&self) -> impl Future<Output = Result<Vec<RunRow>, StoreError>> + Send;

    /// Marks runs `cancelled` (ended now) and their unfinished task instances `cancelled`.
    /// Returns how many runs changed.
    fn cancel_runs(&self, ids: &[Uuid]) -> impl Future<Output = Result<u64, StoreError>> + Send;

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

    /// Moves one task try from `update.from` to `update.to` (and sets the given fields).
    /// Returns false when the try is no longer in `from`: someone else moved it first.
    fn update_task(
        &self,
        update: &TaskUpdate,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds try `try_number` of a task, `queued` now. False if that try exists already.
    fn insert_task_try(
        &self,
        run_id: Uuid,
        task_name: &str,
        try_number: i32,
        pool: Option<&str>,
        pool_slots: i32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The runs of a DAG with a logical date in `[start, end)`, oldest first.
    fn runs_between(
        &self,
        dag: &DagKey,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<DateRun>, StoreError>> + Send;

    /// Re-runs finished runs in place, in one transaction. A run that is running is left
    /// alone. Returns the runs re-started.
    fn rerun_runs(
        &self,
        reruns: &[Rerun],
    ) -> impl Future<Output = Result<Vec<RunRow>, StoreError>> + Send;

    /// The runs of `dag` that Backfill `backfill` created or re-ran, by state.
    fn backfill_counts(
        &self,
        dag: &DagKey,
        backfill: &str,
    ) -> impl Future<Output = Result<BackfillCounts, StoreError>> + Send;

    /// Ends a running run in `state` (success or failed) now. False if it was not running.
    fn finish_run(
        &self,
        id: Uuid,
        state: RunState,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A task-state transition, guarded by the state it leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskUpdate {
    pub run_id: Uuid,
    pub task_name: String,
    pub try_number: i32,
    pub from: &'static str,
    pub to: &'static str,
    pub pod_name: Option<String>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub set_queued_at: bool,
    pub set_started_at: bool,
    pub set_ended_at: bool,
}

impl TaskUpdate {
    pub fn new(row: &TaskRow, from: &'static str, to: &'static str) -> Self {
        TaskUpdate {
            run_id: row.run_id,
            task_name: row.task_name.clone(),
            try_number: row.try_number,
            from,
            to,
            pod_name: None,
            exit_code: None,
            message: None,
            set_queued_at: false,
            set_started_at: false,
            set_ended_at: false,
        }
    }
}
