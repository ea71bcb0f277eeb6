//! `DAG` (SPEC §2.1): a schedule, its time zone and bounds, overlap policy, and the tasks.

// clippy reads repeated `printcolumn(type_ = ...)` arguments as duplicated attributes
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use k8s_openapi::api::core::v1::{Affinity, Container, LocalObjectReference, Toleration, Volume};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::conditions::Condition;
use super::pod_template::{PodTemplate, TaskDefaults};
use super::schema;
use crate::graph::{GraphError, TaskGraph, TriggerRule as GraphRule};
use crate::schedule::{Schedule, ScheduleError, parse_timezone};

#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "dagoperator.io",
    version = "v1alpha1",
    kind = "DAG",
    plural = "dags",
    singular = "dag",
    shortname = "dag",
    category = "dagoperator",
    namespaced,
    status = "DagStatus",
    doc = "A workflow DAG: tasks (each run as a Pod) with dependencies, run on a cron schedule in \
           an IANA time zone, by manual trigger (annotation `dagoperator.io/trigger`) or by a \
           Backfill. Each run is recorded in PostgreSQL; limits are held by the operator's gate.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Timezone", type_ = "string", json_path = ".spec.timezone"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeRuns"),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queuedRuns"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    // a string, not a date: kubectl prints future dates as "<invalid>"
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextScheduleTime"),
    printcolumn(
        name = "LastSuccess",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    // the name is the value of the label `dagoperator.io/dag` on every task Pod
    validation = Rule::new("self.metadata.name.size() <= 63").message(
        "a DAG name is at most 63 characters: it is a label value on its task Pods"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.startDate) || !has(self.endDate) || self.endDate > self.startDate")
        .message("endDate must be after startDate"),
    validation = Rule::new(
        "(has(self.taskDefaults) && has(self.taskDefaults.image) && self.taskDefaults.image != '') || \
         self.tasks.all(t, has(t.container.image) && t.container.image != '')"
    )
    .message("every task's container needs an image, unless taskDefaults.image gives one"),
    validation = Rule::new("!has(self.schedule) || !has(self.schedules) || size(self.schedules) == 0")
        .message("set schedule or schedules, not both")
)]
#[serde(rename_all = "camelCase")]
/// What the DAG runs and when: its schedule, bounds, limits, overlap policy and tasks.
pub struct DagSpec {
    /// Cron expression (5 or 6 fields), descriptor or `@every <duration>`. Absent: the DAG
    /// runs only when triggered or backfilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Several schedules instead of `schedule`: the DAG fires at the union of their ticks
    /// (a tick shared by two fires once); a data interval runs from the previous tick of the
    /// union. Each entry is what `schedule` takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub schedules: Vec<String>,
    /// Ticks removed from the schedule(s), e.g. holidays: a date `YYYY-MM-DD` (every tick on
    /// that day in the DAG's zone) or a cron expression (every tick in a minute — or second,
    /// for 6 fields — it matches, e.g. `* * 24-26 12 *`). The next tick's data interval
    /// covers what was excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub exclude: Vec<String>,
    /// IANA time zone the schedule is read in (default: the operator's `--timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// No tick before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<DateTime<Utc>>,
    /// No tick after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date: Option<DateTime<Utc>>,
    /// No new scheduled runs while true; running ones finish.
    #[serde(default)]
    pub suspend: bool,
    /// Create runs for ticks missed while the operator was down (default: `--enable-catchup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup: Option<bool>,
    /// At most this many missed ticks are caught up (default: `--max-catchup-runs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_catchup_runs: Option<u32>,
    /// DAGs of this namespace whose successful runs each create one run of this DAG, with
    /// the upstream run's logical date and data interval: an asset-style chain, usually
    /// without a schedule. Exactly once per upstream run (recorded like a trigger). A cycle
    /// through `triggeredBy` is refused: `Ready=False`, reason `DependencyCycle`. Naming a
    /// DAG that does not exist: `Ready=False`, reason `UpstreamNotFound`, until it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub triggered_by: Vec<DagRef>,
    /// DAGs of this namespace whose data this DAG's runs need: a run waits in the queue
    /// (counted in `status.queuedRuns`) until each has a successful run whose data interval
    /// ends at or after this run's data interval end. A cycle is refused like one through
    /// `triggeredBy`. Naming a DAG that does not exist: `Ready=False`, reason
    /// `UpstreamNotFound` (and a Warning event), cleared when it appears.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub depends_on: Vec<DagRef>,
    /// A run waiting for `dependsOn` longer than this (from when it was due) is recorded
    /// `failed`, never started: its tasks `upstream_failed`, event `DependencyTimeout`.
    /// Absent: it waits as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub dependency_timeout_seconds: Option<i64>,
    /// Each scheduled run starts up to this long after its tick (e.g. `30s`, `5m`, `1h`): a
    /// delay random across DAGs but the same for a DAG and logical date on every replica, so
    /// DAGs sharing a schedule do not all start at once. The logical date and data interval
    /// stay the tick's; `startingDeadlineSeconds` counts from the delayed start. At most the
    /// shortest gap between two ticks (an hourly schedule takes up to `1h`), so each run
    /// starts before the next tick: a longer one makes the DAG `Ready=False`, reason
    /// `InvalidJitter`, naming the two ticks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[dhms])+$"))]
    pub jitter: Option<String>,
    /// A scheduled run not admitted within this many seconds after its tick is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,
    /// Limit on running runs of this DAG.
    #[serde(default = "default_max_active_runs")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_active_runs: i32,
    /// What a tick does while runs of this DAG are active: `Allow` (queue it beyond
    /// `maxActiveRuns`), `Forbid` (skip it, with a `RunSkipped` event), `Replace` (cancel
    /// the active runs and start the new one) or `BufferOne` (one runs, at most one waits,
    /// further ticks are skipped).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Orders runs of the same priority class; higher first.
    #[serde(default)]
    pub priority: i32,
    /// A run not finished this many seconds after it started ends `failed` (event
    /// `RunTimedOut`): its running tasks fail and their Pods are deleted, its unfinished
    /// tasks are skipped, its slots freed. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub run_timeout_seconds: Option<i64>,
    /// After this many failed scheduled runs in a row (by logical date) the DAG suspends
    /// itself: no new scheduled runs, `status.autoSuspension` says when and why, condition
    /// `Ready=False`/`Stalled=True` with reason `AutoSuspended`, event `AutoSuspended`.
    /// `spec.suspend` stays yours: any change of the spec (toggling `suspend` too) resumes
    /// it, counting failures afresh. Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_consecutive_failures: Option<u32>,
    /// Default run configuration, passed to tasks as DAG_RUN_PARAMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::free_object")]
    pub params: Option<serde_json::Value>,
    // podTemplate and taskDefaults are boxed: ~1 KB inline, in every DAG the watch caches and
    // the engine hold, most of them without either
    /// Pod-level fields of every task Pod: labels, annotations, service account, security
    /// context, scheduling (node selector, tolerations, affinity, priority class), image pull
    /// secrets, volumes. Label and annotation keys under `dagoperator.io/` are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<Box<PodTemplate>>,
    /// Container fields of every task (image, env, envFrom, resources, volumeMounts), merged
    /// into each task's container: the task's own values win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_defaults: Option<Box<TaskDefaults>>,
    /// The tasks, 1 to 500, unique by name.
    #[schemars(length(min = 1, max = 500))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tasks: Vec<TaskSpec>,
}

fn default_max_active_runs() -> i32 {
    16
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// queue runs beyond maxActiveRuns until a slot frees
    #[default]
    Allow,
    /// skip a tick while any run is active
    Forbid,
    /// cancel active runs and start the new one
    Replace,
    /// one run at a time, and at most one scheduled run waiting behind it; further ticks
    /// are skipped (event `RunSkipped`) — Temporal's BufferOne
    BufferOne,
}

/// Airflow's trigger rules. `failed`, `upstream_failed` and `cancelled` upstreams count as
/// failed; a task without upstreams runs at once whatever its rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TriggerRule {
    /// Run when every upstream succeeded; `upstream_failed` as soon as one failed, else
    /// `skipped` as soon as one was skipped.
    #[default]
    AllSuccess,
    /// Run when every upstream failed; `skipped` as soon as one succeeded or was skipped.
    AllFailed,
    /// Run when every upstream finished, whatever its state.
    AllDone,
    /// Run as soon as one upstream succeeded; once all finished without a success, `skipped`
    /// if all were skipped, else `upstream_failed`.
    OneSuccess,
    /// Run as soon as one upstream failed; `skipped` once all finished without a failure.
    OneFailed,
    /// Run when every upstream succeeded or was skipped; `upstream_failed` as soon as one
    /// failed.
    NoneFailed,
    /// Like `NoneFailed`, but `skipped` when every upstream was skipped.
    NoneFailedMinOneSuccess,
    /// Run when every upstream finished and none was skipped (failures allowed); `skipped` as
    /// soon as one was skipped.
    NoneSkipped,
    /// Run at once, without waiting for the upstreams.
    Always,
}

impl From<TriggerRule> for GraphRule {
    fn from(rule: TriggerRule) -> Self {
        match rule {
            TriggerRule::AllSuccess => GraphRule::AllSuccess,
            TriggerRule::AllFailed => GraphRule::AllFailed,
            TriggerRule::AllDone => GraphRule::AllDone,
            TriggerRule::OneSuccess => GraphRule::OneSuccess,
            TriggerRule::OneFailed => GraphRule::OneFailed,
            TriggerRule::NoneFailed => GraphRule::NoneFailed,
            TriggerRule::NoneFailedMinOneSuccess => GraphRule::NoneFailedMinOneSuccess,
            TriggerRule::NoneSkipped => GraphRule::NoneSkipped,
            TriggerRule::Always => GraphRule::Always,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RetryBackoff {
    #[default]
    Fixed,
    Exponential,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// Unique within the DAG; a DNS-1123 label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Names of upstream tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// When the task runs, given the states of its upstreams (Airflow's trigger rules;
    /// `failed`, `upstream_failed` and `cancelled` count as failed): `AllSuccess` (default:
    /// every upstream succeeded; `upstream_failed` as soon as one failed, else `skipped` as
    /// soon as one was skipped), `AllFailed` (every upstream failed; `skipped` as soon as one
    /// succeeded or was skipped), `AllDone` (every upstream finished, whatever its state),
    /// `OneSuccess` (as soon as one succeeded; once all finished without one, `skipped` if all
    /// were skipped, else `upstream_failed`), `OneFailed` (as soon as one failed; `skipped`
    /// once all finished without a failure), `NoneFailed` (every upstream succeeded or was
    /// skipped; `upstream_failed` as soon as one failed), `NoneFailedMinOneSuccess` (like
    /// `NoneFailed`, but `skipped` when all were skipped), `NoneSkipped` (every upstream
    /// finished, none skipped; `skipped` as soon as one was), `Always` (at once, without
    /// waiting for the upstreams). A task without upstreams runs at once whatever its rule.
    #[serde(default)]
    pub trigger_rule: TriggerRule,
    /// Pool in the same namespace this task takes slots of while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Slots of `pool` the task holds while it runs (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub pool_slots: i32,
    /// Orders ready tasks within a run class; higher first.
    #[serde(default = "one")]
    pub priority_weight: i32,
    /// Tries after the first when a try fails (0 to 100; default 0). A failed try waits in
    /// `up_for_retry` for the retry delay, then the next try is queued.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub retries: i32,
    /// Seconds between a failed try and the next (default 30); the base of `Exponential`.
    #[serde(default = "default_retry_delay")]
    #[schemars(range(min = 0))]
    pub retry_delay_seconds: i32,
    /// How the delay grows: `Fixed` (always `retryDelaySeconds`) or `Exponential` (doubling
    /// from `retryDelaySeconds` after each failed try, capped by `maxRetryDelaySeconds`).
    #[serde(default)]
    pub retry_backoff: RetryBackoff,
    /// Cap on the delay between tries with Exponential backoff.
    #[serde(default = "default_max_retry_delay")]
    #[schemars(range(min = 0))]
    pub max_retry_delay_seconds: i32,
    /// A try running longer fails and its Pod is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
    /// The container to run (core/v1 Container); `name` defaults to the task name, `image` to
    /// `taskDefaults.image`, and `taskDefaults` fill in env, envFrom, resources and
    /// volumeMounts. Resource requests and limits must be non-negative quantities (`500m`,
    /// `2Gi`) and env names printable ASCII other than `=`: both refused at apply otherwise.
    #[schemars(schema_with = "schema::container_name_optional")]
    pub container: TaskContainer,
    /// The task Pod's service account (default: the namespace's `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The task Pod's node selector (core/v1 PodSpec `nodeSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// The task Pod's tolerations (core/v1 PodSpec `tolerations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::brief_nested)]
    pub tolerations: Option<Vec<Toleration>>,
    /// The task Pod's affinity (core/v1 PodSpec `affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::brief_nested)]
    pub affinity: Option<Affinity>,
    /// Volumes of the task Pod (core/v1 PodSpec `volumes`), mounted by the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::brief_nested)]
    pub volumes: Option<Vec<Volume>>,
    /// Secrets to pull the image with (core/v1 PodSpec `imagePullSecrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::brief_nested)]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

fn one() -> i32 {
    1
}
fn default_retry_delay() -> i32 {
    30
}
fn default_max_retry_delay() -> i32 {
    3600
}

/// A task's core/v1 Container, kept as the compact JSON text it was given. A `Container` is
/// 2.3 KB before any of its contents (every optional probe, lifecycle and security context is
/// inline), and as a JSON tree each object is a map node of ~600 bytes; as text a typical
/// container is under a hundred bytes, and 10,000 DAGs are held by the watch cache (measured
/// in docs/BENCHMARKS.md). It is checked to be a valid Container when read, and becomes one
/// only to build a Pod. A missing `name` is allowed (the task's name is used).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskContainer {
    /// the container as JSON text, keys sorted (two equal containers have equal texts)
    json: Box<str>,
    /// its image, if it names one
    image: Option<Box<str>>,
}

impl TaskContainer {
    /// The Container; `name` empty when the spec left it out.
    pub fn to_container(&self) -> Container {
        // checked when it was read, so this cannot fail; an empty container if it ever did
        serde_json::from_str(&self.json)
            .and_then(Self::parse)
            .unwrap_or_default()
    }

    /// The image it names, if any (an empty string is none).
    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    fn parse(mut value: serde_json::Value) -> Result<Container, serde_json::Error> {
        if let Some(obj) = value.as_object_mut() {
            obj.entry("name")
                .or_insert_with(|| serde_json::Value::String(String::new()));
        }
        serde_json::from_value(value)
    }

    fn from_value(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        Self::parse(value.clone())?;
        let image = value
            .get("image")
            .and_then(serde_json::Value::as_str)
            .filter(|i| !i.is_empty())
            .map(Box::from);
        Ok(TaskContainer {
            json: value.to_string().into_boxed_str(),
            image,
        })
    }
}

impl Serialize for TaskContainer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value: serde_json::Value =
            serde_json::from_str(&self.json).map_err(serde::ser::Error::custom)?;
        value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskContainer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

/// What the operator observed of the DAG: its conditions, schedule times, run counts and
/// newest runs. Written by the operator only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DagStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (schedulable and its runs not failing), `Stalled` (the spec cannot be
    /// scheduled: fix it) and `Reconciling` (the operator is still working toward it), as
    /// kstatus reads them. One per type.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The next tick of the schedule (absent: none ahead, or suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<DateTime<Utc>>,
    /// The logical date of the newest scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// When the newest successful run ended (any run type), as CronJob's field is when its
    /// last successful Job finished — not a logical date: a Backfill run for two years ago
    /// that just succeeded makes it now. The logical dates are in `recentRuns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<DateTime<Utc>>,
    /// Runs admitted and not finished.
    #[serde(default)]
    pub active_runs: i32,
    /// Runs due and waiting for admission (limits, `maxActiveRuns`).
    #[serde(default)]
    pub queued_runs: i32,
    /// The trigger value last handled (run created or refused), from the operator's record:
    /// the `dagoperator.io/trigger` value or the `<id>` of a `trigger.dagoperator.io/<id>`
    /// annotation. Each value yields at most one run, ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_trigger: Option<String>,
    /// Newest first, at most 5.
    #[serde(default)]
    pub recent_runs: Vec<RunSummary>,
    /// The DAG's last suspension of itself after `maxConsecutiveFailures` failed scheduled
    /// runs. In force while its `generation` is the DAG's `metadata.generation`: any change
    /// of the spec resumes the DAG (the record stays: failures are counted after `through`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_suspension: Option<AutoSuspension>,
}

/// Another DAG of the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DagRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub dag: String,
}

/// The first cycle through `edges` (a DAG's `triggeredBy` upstreams) that passes `start`,
/// as the DAG names along it (`start` first and last), if any.
pub fn dependency_cycle<F>(start: &str, edges: F) -> Option<Vec<String>>
where
    F: Fn(&str) -> Vec<String>,
{
    // depth-first from start; a path back to start is the cycle
    let mut stack: Vec<(String, Vec<String>)> = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = std::collections::HashSet::new();
    while let Some((name, path)) = stack.pop() {
        for next in edges(&name) {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next);
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next, longer));
            }
        }
    }
    None
}

/// A DAG's suspension of itself (`maxConsecutiveFailures`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoSuspension {
    /// The `metadata.generation` it suspended; a newer one resumes the DAG.
    pub generation: i64,
    /// When it suspended itself.
    pub suspended_at: DateTime<Utc>,
    /// How many failed scheduled runs in a row caused it.
    pub failures: u32,
    /// The logical date of the newest of those runs: later runs count toward the next one.
    pub through: DateTime<Utc>,
}

/// One run, as `recentRuns` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// The run's id (`dag-operator runs` shows its tasks).
    pub id: String,
    /// `scheduled`, `manual` or `backfill`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The tick the run is for (its data interval ends here).
    pub logical_date: DateTime<Utc>,
    /// `running`, `success`, `failed` or `cancelled`.
    pub state: String,
    /// When it was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

/// Why a DAG spec cannot be scheduled (what the schema cannot check).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DagSpecError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("endDate {end} is not after startDate {start}: no tick can ever fall between them")]
    DateRange {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error(
        "podTemplate {what} {key:?}: keys under {prefix} are reserved for the operator",
        prefix = super::pod_template::RESERVED_PREFIX
    )]
    ReservedKey { what: &'static str, key: String },
    #[error("task {task:?} has no container image and taskDefaults.image gives none")]
    MissingImage { task: String },
    #[error("jitter {0:?}: expected a duration such as 30s, 5m or 1h30m")]
    Jitter(String),
    #[error(
        "jitter {jitter} is longer than the {gap} between the ticks {from} and {to}: a run \
         would start after the next tick; use at most {gap}",
        gap = crate::schedule::format_duration(*gap_secs),
        from = from.to_rfc3339(),
        to = to.to_rfc3339()
    )]
    JitterTooLong {
        jitter: String,
        gap_secs: i64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error("triggeredBy/dependsOn make a cycle: {}", .0.join(" <- "))]
    DependencyCycle(Vec<String>),
}

impl DagSpecError {
    /// The `Ready=False` reason (SPEC §2.1).
    pub fn reason(&self) -> &'static str {
        match self {
            DagSpecError::Schedule(e) => e.reason(),
            DagSpecError::Graph(_) => "InvalidGraph",
            DagSpecError::DateRange { .. } => "InvalidDateRange",
            DagSpecError::ReservedKey { .. } => "InvalidPodTemplate",
            DagSpecError::MissingImage { .. } => "MissingImage",
            DagSpecError::Jitter(_) | DagSpecError::JitterTooLong { .. } => "InvalidJitter",
            DagSpecError::DependencyCycle(_) => "DependencyCycle",
        }
    }
}

impl DagSpec {
    /// The zone the schedule is read in, before any `CRON_TZ=` prefix.
    pub fn zone(&self, default_tz: Tz) -> Result<Tz, ScheduleError> {
        self.timezone
            .as_deref()
            .map_or(Ok(default_tz), parse_timezone)
    }

    /// The parsed schedule, if the DAG has one.
    pub fn parse_schedule(&self, default_tz: Tz) -> Result<Option<Schedule>, ScheduleError> {
        let zone = self.zone(default_tz)?;
        let exprs = self.schedule_exprs();
        if exprs.is_empty() {
            return Ok(None);
        }
        Schedule::parse_set(&exprs, &self.exclude, zone, self.start_date).map(Some)
    }

    /// The `jitter` as a duration (zero when absent).
    pub fn jitter_duration(&self) -> Result<std::time::Duration, DagSpecError> {
        match self.jitter.as_deref() {
            None => Ok(std::time::Duration::ZERO),
            Some(text) => crate::schedule::parse_duration(text)
                .and_then(|s| u64::try_from(s).ok())
                .map(std::time::Duration::from_secs)
                .ok_or_else(|| DagSpecError::Jitter(text.to_string())),
        }
    }

    /// Whether the `jitter` fits the schedule: no longer than the shortest gap between two
    /// consecutive ticks (over a year of ticks after `now`, or after `startDate` if later),
    /// so every scheduled run starts before the next tick. A longer jitter would start runs
    /// after later ticks (a `jitter: 400d` on an every-minute schedule: the next run months
    /// away) — refused, reason `InvalidJitter`. No schedule: nothing to delay.
    pub fn check_jitter(
        &self,
        schedule: Option<&Schedule>,
        now: DateTime<Utc>,
    ) -> Result<(), DagSpecError> {
        let jitter = self.jitter_duration()?;
        let (Some(schedule), Some(text)) = (schedule, self.jitter.as_deref()) else {
            return Ok(());
        };
        let secs = i64::try_from(jitter.as_secs()).unwrap_or(i64::MAX);
        let after = self.start_date.map_or(now, |start| start.max(now));
        match schedule.ticks_closer_than(secs, after, self.end_date) {
            Some((from, to)) => Err(DagSpecError::JitterTooLong {
                jitter: text.to_string(),
                gap_secs: (to - from).num_seconds(),
                from,
                to,
            }),
            None => Ok(()),
        }
    }

    /// The DAGs of its namespace it names as upstreams: `triggeredBy`, then `dependsOn`.
    pub fn upstream_dags(&self) -> impl Iterator<Item = &str> {
        self.triggered_by
            .iter()
            .chain(&self.depends_on)
            .map(|r| r.dag.as_str())
    }

    /// `schedule`, or the `schedules` list.
    pub fn schedule_exprs(&self) -> Vec<&str> {
        self.schedule
            .iter()
            .chain(&self.schedules)
            .map(String::as_str)
            .collect()
    }

    /// The validated task graph.
    pub fn graph(&self) -> Result<TaskGraph, GraphError> {
        TaskGraph::build(self.tasks.iter().map(|t| {
            (
                t.name.as_str(),
                t.depends_on.iter().map(String::as_str),
                GraphRule::from(t.trigger_rule),
            )
        }))
    }

    /// The content hash of this spec: SHA-256 (hex) of its JSON. Runs name the spec version
    /// they execute by it (`dag_runs.spec_hash`, `dag_specs`).
    pub fn content_hash(&self) -> Result<(String, serde_json::Value), serde_json::Error> {
        use sha2::Digest;
        let json = serde_json::to_value(self)?;
        let bytes = serde_json::to_vec(&json)?;
        let digest = sha2::Sha256::digest(&bytes);
        let hash = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok((hash, json))
    }

    /// Everything the controller checks before scheduling: zone, schedule, graph, dates,
    /// the Pods' reserved keys and images (the last two also refused by CEL at apply time).
    pub fn validate(&self, default_tz: Tz) -> Result<(Option<Schedule>, TaskGraph), DagSpecError> {
        let schedule = self.parse_schedule(default_tz)?;
        let graph = self.graph()?;
        self.jitter_duration()?;
        if let (Some(start), Some(end)) = (self.start_date, self.end_date)
            && end <= start
        {
            return Err(DagSpecError::DateRange { start, end });
        }
        if let Some((what, key)) = self
            .pod_template
            .as_deref()
            .and_then(PodTemplate::reserved_key)
        {
            return Err(DagSpecError::ReservedKey {
                what,
                key: key.to_string(),
            });
        }
        let default_image = self.task_defaults.as_deref().and_then(TaskDefaults::image);
        if default_image.is_none()
            && let Some(task) = self.tasks.iter().find(|t| t.container.image().is_none())
        {
            return Err(DagSpecError::MissingImage {
                task: task.name.clone(),
            });
        }
        Ok((schedule, graph))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_triggered_by_cycle_is_found_and_a_chain_is_not() {
        let edges = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| -> Vec<String> {
                pairs
                    .iter()
                    .filter(|(d, _)| *d == name)
                    .map(|(_, up)| up.to_string())
                    .collect()
            }
        };
        // c <- b <- a: a chain
        let chain: &[(&str, &str)] = &[("b", "a"), ("c", "b")];
        assert_eq!(dependency_cycle("c", edges(chain)), None);
        // a <- c closes it
        let cycle: &[(&str, &str)] = &[("b", "a"), ("c", "b"), ("a", "c")];
        assert_eq!(
            dependency_cycle("a", edges(cycle)),
            Some(vec!["a".into(), "c".into(), "b".into(), "a".into()])
        );
        let own: &[(&str, &str)] = &[("a", "a")];
        assert_eq!(
            dependency_cycle("a", edges(own)),
            Some(vec!["a".into(), "a".into()])
        );
    }

    use super::*;

    fn spec(yaml: &str) -> DagSpec {
        serde_yaml::from_str(yaml).expect("valid DagSpec")
    }

    #[test]
    fn every_trigger_rule_is_spelled_as_the_graph_names_it() {
        for rule in GraphRule::ALL {
            let name = format!("{rule:?}");
            let api: TriggerRule =
                serde_yaml::from_str(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(GraphRule::from(api), rule);
        }
        assert!(serde_yaml::from_str::<TriggerRule>("all_success").is_err());
    }

    #[test]
    fn an_end_before_the_start_is_invalid() {
        let s = spec(
            "schedule: '0 2 * * *'\nstartDate: 2024-02-01T00:00:00Z\nendDate: 2024-01-01T00:00:00Z\n\
             tasks:\n- name: a\n  container: {image: busybox}\n",
        );
        let Err(e) = s.validate(Tz::UTC) else {
            panic!("an end before the start must be invalid");
        };
        assert_eq!(e.reason(), "InvalidDateRange");
        assert!(e.to_string().contains("not after startDate"), "{e}");
    }

    #[test]
    fn defaults_and_optional_container_name() {
        let s =
            spec("schedule: '0 2 * * *'\ntasks:\n- name: extract\n  container: {image: busybox}\n");
        assert_eq!(s.max_active_runs, 16);
        assert_eq!(s.concurrency_policy, ConcurrencyPolicy::Allow);
        let t = &s.tasks[0];
        assert_eq!((t.pool_slots, t.priority_weight, t.retries), (1, 1, 0));
        assert_eq!(t.retry_delay_seconds, 30);
        assert_eq!(t.max_retry_delay_seconds, 3600);
        let c = t.container.to_container();
        assert_eq!(c.name, "");
        assert_eq!(c.image.as_deref(), Some("busybox"));
        // kept compact: the JSON text it came in, not a 2.3 KB Container nor a JSON tree
        assert!(std::mem::size_of_val(&t.container) <= 32);
        assert_eq!(&*t.container.json, r#"{"image":"busybox"}"#);
        assert_eq!(t.container.image(), Some("busybox"));
        // and written back as the object it was
        let full = serde_json::json!({"image": "x", "command": ["sh", "-c", "true"], "env": [{"name": "A", "value": "1"}]});
        let task: TaskSpec =
            serde_json::from_value(serde_json::json!({"name": "x", "container": full.clone()}))
                .expect("a valid container");
        assert_eq!(
            serde_json::to_value(&task).expect("serializes")["container"],
            full
        );
        let no_image: TaskSpec =
            serde_json::from_value(serde_json::json!({"name": "x", "container": {"image": ""}}))
                .expect("an empty image is read");
        assert_eq!(no_image.container.image(), None);
        assert!(
            serde_json::from_value::<TaskSpec>(
                serde_json::json!({"name": "x", "container": {"image": 3}})
            )
            .is_err()
        );
    }

    #[test]
    fn validation_reasons() {
        let bad_cron = spec("schedule: '61 * * * *'\ntasks: [{name: a, container: {image: x}}]");
        let err = bad_cron.validate(Tz::UTC).unwrap_err();
        assert_eq!(err.reason(), "InvalidSchedule");
        assert!(err.to_string().contains("\"61\""), "{err}");

        let bad_zone = spec(
            "schedule: '@daily'\ntimezone: Mars/Olympus\ntasks: [{name: a, container: {image: x}}]",
        );
        assert_eq!(
            bad_zone.validate(Tz::UTC).unwrap_err().reason(),
            "InvalidTimezone"
        );

        let cycle = spec(
            "tasks:\n- {name: a, dependsOn: [b], container: {image: x}}\n- {name: b, dependsOn: [a], container: {image: x}}",
        );
        assert_eq!(
            cycle.validate(Tz::UTC).unwrap_err().reason(),
            "InvalidGraph"
        );

        let ok = spec(
            "schedule: 'CRON_TZ=Europe/Berlin 0 2 * * *'\ntasks: [{name: a, container: {image: x}}]",
        );
        let (schedule, graph) = ok.validate(Tz::UTC).unwrap();
        assert_eq!(
            schedule.map(|s| s.timezone()),
            Some(chrono_tz::Europe::Berlin)
        );
        assert_eq!(graph.len(), 1);
    }

    /// Issue 27: `jitter: 400d` on an every-minute schedule was accepted, its next run months
    /// away.
    #[test]
    fn a_jitter_longer_than_the_gap_between_ticks_is_invalid() {
        let now: DateTime<Utc> = "2026-05-04T10:00:30Z".parse().expect("an instant");
        let check = |yaml: &str| {
            let s = spec(yaml);
            let (schedule, _) = s.validate(Tz::UTC).expect("valid otherwise");
            s.check_jitter(schedule.as_ref(), now)
        };
        let task = "tasks: [{name: a, container: {image: x}}]";
        let err = check(&format!("schedule: '* * * * *'\njitter: 400d\n{task}"))
            .expect_err("400 days of jitter on an every-minute schedule");
        assert_eq!(err.reason(), "InvalidJitter");
        let message = err.to_string();
        for part in [
            "400d",
            "1m",
            "2026-05-04T10:01:00+00:00",
            "2026-05-04T10:02:00+00:00",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        assert!(check(&format!("schedule: '@hourly'\njitter: 1h\n{task}")).is_ok());
        assert!(check(&format!("schedule: '@hourly'\njitter: 1h1m\n{task}")).is_err());
        assert!(check(&format!("schedule: '* * * * *'\njitter: 30s\n{task}")).is_ok());
        // weekdays: a day, not the weekend
        assert!(check(&format!("schedule: '0 9 * * 1-5'\njitter: 2d\n{task}")).is_err());
        // no schedule, no jitter: nothing to check
        assert!(check(&format!("jitter: 400d\n{task}")).is_ok());
        assert!(check(&format!("schedule: '* * * * *'\n{task}")).is_ok());
        // only ticks up to endDate count: one tick left, nothing to run into
        assert!(
            check(&format!(
                "schedule: '0 0 * * *'\nendDate: 2026-05-05T00:00:00Z\njitter: 3d\n{task}"
            ))
            .is_ok()
        );
    }

    #[test]
    fn reserved_keys_and_missing_images_are_invalid() {
        let reserved = spec(
            "podTemplate: {labels: {team: a, dagoperator.io/dag: x}}\ntasks: [{name: a, container: {image: x}}]",
        );
        let err = reserved.validate(Tz::UTC).unwrap_err();
        assert_eq!(err.reason(), "InvalidPodTemplate");
        assert!(err.to_string().contains("\"dagoperator.io/dag\""), "{err}");
        let annotation = spec(
            "podTemplate: {annotations: {dagoperator.io/x: y}}\ntasks: [{name: a, container: {image: x}}]",
        );
        let err = annotation.validate(Tz::UTC).unwrap_err();
        assert!(err.to_string().contains("annotation"), "{err}");
        // other domains, subdomains of ours among them, are the user's
        let fine = spec(
            "podTemplate: {labels: {app.kubernetes.io/name: etl}, annotations: {e2e.dagoperator.io/outcome: hold}}\ntasks: [{name: a, container: {image: x}}]",
        );
        assert!(fine.validate(Tz::UTC).is_ok());

        let no_image = spec(
            "tasks: [{name: a, container: {image: x}}, {name: b, container: {command: [sh]}}]",
        );
        let err = no_image.validate(Tz::UTC).unwrap_err();
        assert_eq!(err.reason(), "MissingImage");
        assert!(err.to_string().contains("\"b\""), "{err}");
        let empty = spec("tasks: [{name: a, container: {image: ''}}]");
        assert_eq!(
            empty.validate(Tz::UTC).unwrap_err().reason(),
            "MissingImage"
        );
        let defaulted = spec(
            "taskDefaults: {image: busybox}\ntasks: [{name: a, container: {command: [sh]}}, {name: b, container: {image: x}}]",
        );
        assert!(defaulted.validate(Tz::UTC).is_ok());
        let empty_default =
            spec("taskDefaults: {image: ''}\ntasks: [{name: a, container: {command: [sh]}}]");
        assert_eq!(
            empty_default.validate(Tz::UTC).unwrap_err().reason(),
            "MissingImage"
        );
    }
}
