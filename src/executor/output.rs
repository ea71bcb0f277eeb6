//! What the executor reports, by destination: [`ExecStatus`] for the status writer (DAGs and
//! Pools), [`Notice`]s for events, [`TaskTelemetry`] for metrics, and the runs that ended for
//! the engine. The controllers read these types and nothing else of the executor.

use uuid::Uuid;

use crate::gate::GateScope;
use crate::graph::TaskState;
use crate::key::{DagKey, PoolKey};
use crate::report::Notice;
use crate::store::RecentRuns;

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
}
