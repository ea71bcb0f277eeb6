//! `Backfill` (SPEC §2.3): runs of a DAG for the ticks of a past range `[start, end)`.

// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;
use super::schema;

#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "dagoperator.io",
    version = "v1alpha1",
    kind = "Backfill",
    plural = "backfills",
    shortname = "bf",
    category = "dagoperator",
    namespaced,
    status = "BackfillStatus",
    doc = "Runs of a DAG for every tick of a past range [start, end), at backfill priority, at \
           most `concurrency` at a time; progress is recorded per date, so none is run twice \
           or dropped across suspends and restarts.",
    printcolumn(name = "DAG", type_ = "string", json_path = ".spec.dagRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeRuns"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.end > self.start").message("end must be after start"))]
#[serde(rename_all = "camelCase")]
/// Which DAG, which range, how many at once, and what to do with dates that have a run.
pub struct BackfillSpec {
    /// The DAG, in the same namespace.
    #[x_kube(validation = Rule::new("self == oldSelf").message("dagRef is immutable"))]
    pub dag_ref: DagRef,
    /// First instant of the range (inclusive).
    #[x_kube(validation = Rule::new("self == oldSelf").message("start is immutable"))]
    pub start: DateTime<Utc>,
    /// End of the range (exclusive).
    #[x_kube(validation = Rule::new("self == oldSelf").message("end is immutable"))]
    pub end: DateTime<Utc>,
    /// Most runs of this backfill running at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: i32,
    /// Plan and report only; create nothing.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("dryRun is immutable"))]
    pub dry_run: bool,
    /// What to do with dates that already have a run.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("reprocess is immutable"))]
    pub reprocess: Reprocess,
    /// `OldestFirst` (default) or `NewestFirst`: the order dates are admitted in.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("order is immutable"))]
    pub order: BackfillOrder,
    /// Pause admitting new runs.
    #[serde(default)]
    pub suspend: bool,
    /// Merged over the DAG's params for these runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::free_object")]
    pub params: Option<serde_json::Value>,
}

fn default_concurrency() -> i32 {
    5
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DagRef {
    /// The DAG's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Reprocess {
    /// skip dates that already have a run
    #[default]
    None,
    /// re-run dates whose run failed
    Failed,
    /// re-run every date
    All,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackfillOrder {
    #[default]
    OldestFirst,
    NewestFirst,
}

impl From<BackfillOrder> for crate::schedule::BackfillOrder {
    fn from(order: BackfillOrder) -> Self {
        match order {
            BackfillOrder::OldestFirst => crate::schedule::BackfillOrder::OldestFirst,
            BackfillOrder::NewestFirst => crate::schedule::BackfillOrder::NewestFirst,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackfillPhase {
    #[default]
    Pending,
    Running,
    Suspended,
    Succeeded,
    Failed,
    Invalid,
}

/// Where the Backfill stands, from the operator's record. Written by the operator only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Running`, `Suspended`, `Succeeded`, `Failed` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackfillPhase>,
    /// Dates in the range (ticks of the DAG's schedule).
    #[serde(default)]
    pub total_runs: i64,
    /// Dates skipped: a run existed and `reprocess` did not ask for it again.
    #[serde(default)]
    pub skipped_runs: i64,
    /// Runs created or re-run for this Backfill.
    #[serde(default)]
    pub created_runs: i64,
    /// Of those, running now.
    #[serde(default)]
    pub active_runs: i64,
    /// Of those, succeeded.
    #[serde(default)]
    pub succeeded_runs: i64,
    /// Of those, failed or cancelled.
    #[serde(default)]
    pub failed_runs: i64,
    /// finished/total, e.g. "412/744"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The first 100 planned logical dates.
    #[serde(default)]
    pub planned_dates: Vec<DateTime<Utc>>,
    /// When the first run was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When every date was done with (final: a finished Backfill is never planned again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// `Ready` with the phase's reason. One per type.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
