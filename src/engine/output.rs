//! What the engine reports, by destination: [`EngineStatus`] for the status writer,
//! [`Notice`]s for events, [`EngineTelemetry`] for metrics, and work for the executor and
//! the DAG controller.

use chrono::{DateTime, Utc};

use super::BackfillProgress;
use crate::executor::{AdmittedRun, CancelledRun};
use crate::gate::GateScope;
use crate::key::{BackfillKey, DagKey};
use crate::report::Notice;
use crate::store::{LastEnds, RunType};

/// The scheduling part of a DAG's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulingStatus {
    pub active_runs: i32,
    pub queued_runs: i32,
    pub last_schedule_time: Option<DateTime<Utc>>,
    pub next_schedule_time: Option<DateTime<Utc>>,
    pub last_handled_trigger: Option<String>,
    pub suspended: bool,
    /// its last suspension of itself (`maxConsecutiveFailures`), in force or not
    pub auto_suspension: Option<crate::api::dag::AutoSuspension>,
    /// that suspension is in force
    pub auto_suspended: bool,
}

/// What the status writer shows.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineStatus {
    Dag(DagKey, SchedulingStatus),
    /// a Backfill's progress changed
    Backfill(BackfillKey, BackfillProgress),
    /// reachability of the store changed
    StoreHealth(bool),
    /// reachability of the gate changed (false: admission paused, fail closed)
    GateHealth(bool),
}

/// What the metrics count.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineTelemetry {
    /// runs were admitted and persisted
    RunsCreated {
        run_type: RunType,
        count: usize,
        delays_secs: Vec<f64>,
    },
    /// the gate refused a run (`rejected`) or failed to answer, for one limit
    Gate { scope: GateScope, rejected: bool },
    /// after each pass: queue depth by class [backfill, scheduled, manual] and running runs
    Load {
        queue_depth: [usize; 3],
        active_runs: usize,
    },
    /// a pass failed (on the store, the only error a pass returns) and is retried
    PassFailed,
    /// a DAG's expected interval between runs in seconds (`None`: suspended, unscheduled,
    /// invalid or gone: no series)
    ScheduleInterval { dag: DagKey, secs: Option<f64> },
    /// when a DAG's newest runs succeeded and failed, from the store (at start)
    LastEnds(LastEnds),
}

/// What the engine reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Status(EngineStatus),
    /// an event on a DAG or a Backfill
    Event(Notice),
    Telemetry(EngineTelemetry),
    /// runs were admitted and persisted: the executor runs them
    RunsAdmitted(Vec<AdmittedRun>),
    /// runs were cancelled (concurrencyPolicy Replace, DAG deleted): their Pods must go
    RunsCancelled(Vec<CancelledRun>),
    /// trigger annotations (`trigger.dagoperator.io/<value>`) handled and recorded: they may
    /// be removed from the DAG
    TriggersHandled(DagKey, Vec<String>),
}
