//! The limits the gate enforces, named (the `scope` label of the gate's metrics).

/// Which limit a gate decision concerns (SPEC §4, §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GateScope {
    /// `--max-concurrent-runs`
    GlobalRuns,
    /// a namespace's cap on running runs (tenancy)
    NamespaceRuns,
    /// a DAG's `maxActiveRuns`
    DagRuns,
    /// a Backfill's `concurrency`
    BackfillRuns,
    /// `--max-running-tasks`
    RunningTasks,
    /// a Pool's slots
    Pool,
}

impl GateScope {
    pub const ALL: [GateScope; 6] = [
        GateScope::GlobalRuns,
        GateScope::NamespaceRuns,
        GateScope::DagRuns,
        GateScope::BackfillRuns,
        GateScope::RunningTasks,
        GateScope::Pool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GateScope::GlobalRuns => "global_runs",
            GateScope::NamespaceRuns => "namespace_runs",
            GateScope::DagRuns => "dag_runs",
            GateScope::BackfillRuns => "backfill_runs",
            GateScope::RunningTasks => "running_tasks",
            GateScope::Pool => "pool",
        }
    }
}
