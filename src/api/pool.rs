//! `Pool` (SPEC §2.2): a named number of slots shared by the tasks that name it.

// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dagoperator.io",
    version = "v1alpha1",
    kind = "Pool",
    plural = "pools",
    shortname = "dagpool",
    category = "dagoperator",
    namespaced,
    status = "PoolStatus",
    doc = "A named number of slots in a namespace: tasks that name the Pool hold `poolSlots` of \
           them while they run; tasks that find it full wait, in priority order.",
    printcolumn(name = "Slots", type_ = "integer", json_path = ".spec.slots"),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.usedSlots"),
    printcolumn(name = "Open", type_ = "integer", json_path = ".status.openSlots"),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queuedTasks"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
/// How many slots the Pool has.
pub struct PoolSpec {
    /// How many slots tasks naming this pool may hold at once. Lowering it never stops
    /// running tasks; new admissions wait until usage is below it.
    #[schemars(range(min = 0))]
    pub slots: i32,
    /// Free text for people: what the Pool guards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The Pool's usage as the operator holds it. Written by the operator only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Slots held by running tasks (may exceed `slots` after it was lowered).
    #[serde(default)]
    pub used_slots: i32,
    /// Tasks waiting for a slot of this Pool.
    #[serde(default)]
    pub queued_tasks: i32,
    /// Slots free: `max(slots - usedSlots, 0)`.
    #[serde(default)]
    pub open_slots: i32,
    /// `Ready`: reason `SlotsOpen` or `Full`. One per type.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
