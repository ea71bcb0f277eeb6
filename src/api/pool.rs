//! `Pool` (SPEC §2.2): a named number of slots shared by the tasks that name it.

// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
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
    printcolumn(name = "Slots", type_ = "integer", json_path = ".spec.slots"),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.usedSlots"),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queuedTasks"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// How many slots tasks naming this pool may hold at once. Lowering it never stops
    /// running tasks; new admissions wait until usage is below it.
    #[schemars(range(min = 0))]
    pub slots: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub used_slots: i32,
    #[serde(default)]
    pub queued_tasks: i32,
    #[serde(default)]
    pub open_slots: i32,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
