//! Task try ↔ Pod (SPEC §5): the Pod of a try (deterministic name, owner reference to the DAG,
//! labels, `restartPolicy: Never`, the run's environment and template variables, the task's
//! container and pod-level fields merged over the DAG's `taskDefaults` and `podTemplate`),
//! and what a Pod says back (its try, its verdict, when it finished).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::plan::PodVerdict;
use crate::api::pod_template::is_reserved;
use crate::api::{DagSpec, TaskDefaults, TaskSpec};
use crate::k8s::to_chrono;
use crate::schedule::Schedule;
use crate::store::{RunRow, TryKey};

pub const LABEL_DAG: &str = "dagoperator.io/dag";
pub const LABEL_RUN: &str = "dagoperator.io/run-id";
pub const LABEL_TASK: &str = "dagoperator.io/task";
pub const LABEL_TRY: &str = "dagoperator.io/try";

/// FNV-1a (64 bits), for a stable suffix (the std hasher is not stable across releases).
fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `<dag>-<task>-<try>-<hash>`: `hash` is 16 hex digits of a hash of the whole run id, the
/// task and the try, so every try of every run gets its own name (creating it twice is a
/// no-op, and two runs never share one); the readable head is cut so that the name stays
/// within 63 characters.
pub fn pod_name(dag: &str, run: &uuid::Uuid, task: &str, try_number: i32) -> String {
    let hash = format!("{:016x}", fnv64(&format!("{run}/{task}/{try_number}")));
    let tail = format!("-{try_number}-{hash}");
    let keep = 63 - tail.len();
    let head: String = format!("{dag}-{task}").chars().take(keep).collect();
    format!("{}{tail}", head.trim_end_matches(['-', '.']))
}

/// The try a task Pod belongs to, read from its labels.
pub fn owner(labels: Option<&BTreeMap<String, String>>) -> Option<TryKey> {
    let labels = labels?;
    Some(TryKey {
        run_id: labels.get(LABEL_RUN)?.parse().ok()?,
        task_name: labels.get(LABEL_TASK)?.clone(),
        try_number: labels.get(LABEL_TRY)?.parse().ok()?,
    })
}

/// Reads a Pod's status.
pub fn verdict(pod: &Pod) -> PodVerdict {
    let Some(status) = pod.status.as_ref() else {
        return PodVerdict::Running;
    };
    let terminated = status.container_statuses.as_ref().and_then(|cs| {
        cs.iter()
            .find_map(|c| c.state.as_ref()?.terminated.as_ref())
    });
    // Kubernetes is taking the Pod away from an unfinished task (the taint manager from a node
    // gone NotReady or unreachable, a drain's eviction, preemption): the try has failed even
    // if its kubelet can no longer say so, as for a Job's podFailurePolicy
    let disrupted = pod.metadata.deletion_timestamp.is_some()
        && !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if disrupted
        && let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    {
        return PodVerdict::Failed {
            exit_code: None,
            message: described(c.reason.as_deref(), c.message.as_deref())
                .unwrap_or_else(|| "DisruptionTarget".to_string()),
        };
    }
    match status.phase.as_deref() {
        Some("Succeeded") => PodVerdict::Succeeded,
        Some("Failed") => PodVerdict::Failed {
            exit_code: terminated.map(|t| t.exit_code),
            // the container's reason (Error, OOMKilled, StartError, ...) and what it said:
            // its termination message, or the end of its log (FallbackToLogsOnError)
            message: terminated
                .and_then(|t| described(t.reason.as_deref(), t.message.as_deref()))
                .or_else(|| described(status.reason.as_deref(), status.message.as_deref()))
                .unwrap_or_else(|| "pod failed".to_string()),
        },
        Some("Pending") => {
            let waiting = status
                .container_statuses
                .as_ref()
                .and_then(|cs| cs.iter().find_map(|c| c.state.as_ref()?.waiting.as_ref()));
            if let Some(waiting) = waiting.filter(|w| {
                matches!(
                    w.reason.as_deref(),
                    Some(
                        "ErrImagePull"
                            | "ImagePullBackOff"
                            | "InvalidImageName"
                            | "CreateContainerConfigError"
                            | "CreateContainerError"
                    )
                )
            }) {
                let said = described(waiting.reason.as_deref(), waiting.message.as_deref());
                return PodVerdict::Stuck(said.unwrap_or_default());
            }
            let unschedulable = status.conditions.as_ref().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            });
            if unschedulable {
                PodVerdict::Stuck("Unschedulable".to_string())
            } else {
                PodVerdict::Running
            }
        }
        _ => PodVerdict::Running,
    }
}

/// "reason: message" of a container or Pod state, as much of it as is there (the message's
/// surrounding whitespace trimmed, bounded to what a try's row keeps).
fn described(reason: Option<&str>, message: Option<&str>) -> Option<String> {
    const MOST: usize = 2048;
    let message = message.map(str::trim).filter(|m| !m.is_empty());
    let text = match (reason.filter(|r| !r.is_empty()), message) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => return None,
    };
    if text.len() <= MOST {
        return Some(text);
    }
    let mut end = MOST;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}…", &text[..end]))
}

/// When a Pod finished, if it did.
pub fn finished_at(pod: &Pod) -> Option<DateTime<Utc>> {
    let status = pod.status.as_ref()?;
    if !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status
        .container_statuses
        .as_ref()
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                .filter_map(to_chrono)
                .max()
        })
        .or_else(|| {
            status
                .conditions
                .as_ref()?
                .iter()
                .filter_map(|c| c.last_transition_time.as_ref())
                .filter_map(to_chrono)
                .max()
        })
}

/// A variable the operator sets. Its value is escaped for Kubernetes' `$(NAME)` expansion
/// (`$` → `$$`): values built from user data (a run's params, names) reach the container as
/// they are, never pulling in another variable — e.g. one from a Secret (issue 28).
fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.replace('$', "$$")),
        value_from: None,
    }
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A DAG's time as its task Pods see it: the zone its dates are read in and its schedule,
/// for the template variables `DS`, `DS_NODASH`, `TS`, `PREV_LOGICAL_DATE` and
/// `NEXT_LOGICAL_DATE`. One per spec version.
#[derive(Clone, Debug)]
pub struct DagClock {
    zone: Tz,
    schedule: Option<Schedule>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

impl DagClock {
    /// The clock of a spec version, `default_tz` being the operator's `--timezone`. The zone
    /// is the schedule's (a `CRON_TZ=` prefix included), else `timezone`, else `default_tz`.
    /// A spec the engine admitted always parses; one that would not gets `default_tz` and no
    /// schedule.
    pub fn of(spec: &DagSpec, default_tz: Tz) -> Self {
        let schedule = spec.parse_schedule(default_tz).ok().flatten();
        let zone = schedule
            .as_ref()
            .map(Schedule::timezone)
            .or_else(|| spec.zone(default_tz).ok())
            .unwrap_or(default_tz);
        DagClock {
            zone,
            schedule,
            start: spec.start_date,
            end: spec.end_date,
        }
    }

    /// The template variables of the run at `logical_date`: its date (`DS`, `DS_NODASH`) and
    /// time (`TS`, with the zone's offset) in the DAG's zone, and the schedule's ticks before
    /// and after it within `startDate` and `endDate` (RFC3339 UTC; empty when there is none).
    pub fn variables(&self, logical_date: DateTime<Utc>) -> [EnvVar; 5] {
        let local = logical_date.with_timezone(&self.zone);
        let prev = self
            .schedule
            .as_ref()
            .and_then(|s| s.prev_before(logical_date))
            .filter(|t| self.start.is_none_or(|start| *t >= start));
        let next = self
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(logical_date))
            .filter(|t| self.end.is_none_or(|end| *t <= end));
        [
            env("DS", local.format("%Y-%m-%d").to_string()),
            env("DS_NODASH", local.format("%Y%m%d").to_string()),
            env("TS", local.to_rfc3339_opts(SecondsFormat::Secs, true)),
            env("PREV_LOGICAL_DATE", prev.map(rfc).unwrap_or_default()),
            env("NEXT_LOGICAL_DATE", next.map(rfc).unwrap_or_default()),
        ]
    }
}

/// `base`'s entries that no entry of `over` shares a key with, then `over`'s, in order.
fn merged<T: Clone, K: PartialEq>(
    base: Option<&[T]>,
    over: Option<Vec<T>>,
    key: impl Fn(&T) -> K,
) -> Option<Vec<T>> {
    let Some(base) = base.filter(|b| !b.is_empty()) else {
        return over;
    };
    let over = over.unwrap_or_default();
    let mut out: Vec<T> = base
        .iter()
        .filter(|b| !over.iter().any(|o| key(o) == key(b)))
        .cloned()
        .collect();
    out.extend(over);
    Some(out)
}

/// `over` with the entries of `base` whose keys it lacks.
fn merged_map<V: Clone>(
    base: Option<&BTreeMap<String, V>>,
    over: Option<BTreeMap<String, V>>,
) -> Option<BTreeMap<String, V>> {
    let Some(base) = base.filter(|b| !b.is_empty()) else {
        return over;
    };
    let mut out = over.unwrap_or_default();
    for (k, v) in base {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Some(out)
}

/// `taskDefaults` into a task's container: its own image, variables (by name), mounts (by
/// `mountPath`), requests and limits (by resource) and claims (by name) win; `envFrom`
/// sources of the defaults come first, so the task's, later, win.
fn apply_defaults(container: &mut Container, defaults: &TaskDefaults) {
    if container.image.as_deref().is_none_or(str::is_empty) {
        container.image = defaults.image().map(str::to_string);
    }
    container.env = merged(defaults.env.as_deref(), container.env.take(), |e| {
        e.name.clone()
    });
    container.env_from = merged(
        defaults.env_from.as_deref(),
        container.env_from.take(),
        Clone::clone,
    );
    container.volume_mounts = merged(
        defaults.volume_mounts.as_deref(),
        container.volume_mounts.take(),
        |m| m.mount_path.clone(),
    );
    if let Some(base) = &defaults.resources {
        let mut own = container.resources.take().unwrap_or_default();
        own.requests = merged_map(base.requests.as_ref(), own.requests);
        own.limits = merged_map(base.limits.as_ref(), own.limits);
        own.claims = merged(base.claims.as_deref(), own.claims, |c| c.name.clone());
        container.resources = Some(own);
    }
}

/// The template's labels or annotations, without the operator's reserved keys (refused at
/// apply time; left out here too, should one ever get through).
fn user_keys(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| !is_reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The Pod of one try of `task` in `run`, executing the spec version `dag` (its `podTemplate`
/// and `taskDefaults`; the task's own fields win) on `clock`.
pub fn build_pod(
    run: &RunRow,
    dag: &DagSpec,
    clock: &DagClock,
    task: &TaskSpec,
    try_number: i32,
) -> Pod {
    let name = pod_name(&run.dag.name, &run.id, &task.name, try_number);
    let mut container: Container = task.container.to_container();
    if container.name.is_empty() {
        container.name = task.name.clone();
    }
    if let Some(defaults) = &dag.task_defaults {
        apply_defaults(&mut container, defaults);
    }
    let mut ours = vec![
        env("DAG_NAMESPACE", run.dag.namespace.clone()),
        env("DAG_NAME", run.dag.name.clone()),
        env("DAG_RUN_ID", run.id.to_string()),
        env("DAG_RUN_TYPE", run.run_type.as_str().to_string()),
        env("LOGICAL_DATE", rfc(run.logical_date)),
        env("DATA_INTERVAL_START", rfc(run.data_interval_start)),
        env("DATA_INTERVAL_END", rfc(run.data_interval_end)),
        env("TASK_NAME", task.name.clone()),
        env("TRY_NUMBER", try_number.to_string()),
        env("DAG_RUN_PARAMS", run.params.to_string()),
    ];
    ours.extend(clock.variables(run.logical_date));
    // ours come first, so the task's variables may use them (`$(DS)`), and win over
    // same-named variables of the task and the defaults
    let theirs: Vec<EnvVar> = container
        .env
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !ours.iter().any(|o| o.name == v.name))
        .collect();
    ours.extend(theirs);
    container.env = Some(ours);
    // a failed container's try records why: its termination message, else the end of its
    // log (Kubernetes keeps 80 lines or 2 KiB of it); a task's own policy wins
    if container.termination_message_policy.is_none() {
        container.termination_message_policy = Some("FallbackToLogsOnError".to_string());
    }
    let template = dag.pod_template.as_deref();
    let mut labels = user_keys(template.and_then(|t| t.labels.as_ref()));
    labels.extend([
        (LABEL_DAG.to_string(), run.dag.name.clone()),
        (LABEL_RUN.to_string(), run.id.to_string()),
        (LABEL_TASK.to_string(), task.name.clone()),
        (LABEL_TRY.to_string(), try_number.to_string()),
    ]);
    let annotations = user_keys(template.and_then(|t| t.annotations.as_ref()));
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(run.dag.namespace.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: (!run.dag_uid.is_empty()).then(|| {
                vec![OwnerReference {
                    api_version: format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
                    kind: "DAG".to_string(),
                    name: run.dag.name.clone(),
                    uid: run.dag_uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".to_string()),
            service_account_name: task
                .service_account_name
                .clone()
                .or_else(|| template.and_then(|t| t.service_account_name.clone())),
            security_context: template.and_then(|t| t.security_context.clone()),
            node_selector: merged_map(
                template.and_then(|t| t.node_selector.as_ref()),
                task.node_selector.clone(),
            ),
            tolerations: merged(
                template.and_then(|t| t.tolerations.as_deref()),
                task.tolerations.clone(),
                Clone::clone,
            ),
            affinity: task
                .affinity
                .clone()
                .or_else(|| template.and_then(|t| t.affinity.clone())),
            priority_class_name: template.and_then(|t| t.priority_class_name.clone()),
            volumes: merged(
                template.and_then(|t| t.volumes.as_deref()),
                task.volumes.clone(),
                |v| v.name.clone(),
            ),
            image_pull_secrets: merged(
                template.and_then(|t| t.image_pull_secrets.as_deref()),
                task.image_pull_secrets.clone(),
                |s| s.name.clone(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DagKey, RunState, RunType};

    fn run() -> RunRow {
        let t: chrono::DateTime<chrono::Utc> = "2024-01-02T00:00:00Z".parse().unwrap();
        RunRow {
            id: uuid::Uuid::parse_str("0123456789abcdef0123456789abcdef").unwrap(),
            dag: DagKey::new("ns", "etl"),
            dag_uid: "uid-1".into(),
            run_type: RunType::Scheduled,
            backfill_name: None,
            logical_date: t,
            data_interval_start: t - chrono::Duration::days(1),
            data_interval_end: t,
            priority: 0,
            state: RunState::Running,
            params: serde_json::json!({"a": 1}),
            attempt: 1,
            created_at: t,
            started_at: Some(t),
            ended_at: None,
            spec_hash: None,
        }
    }

    #[test]
    fn names_are_deterministic_unique_per_try_and_fit_a_label() {
        let r = run();
        let name = pod_name("etl", &r.id, "load", 2);
        assert!(name.starts_with("etl-load-2-"), "{name}");
        assert_eq!(name.len(), "etl-load-2-".len() + 16);
        assert_eq!(name, pod_name("etl", &r.id, "load", 2));
        let long = pod_name(&"d".repeat(63), &r.id, &"t".repeat(63), 3);
        assert!(long.len() <= 63, "{long}");
        assert_eq!(long, pod_name(&"d".repeat(63), &r.id, &"t".repeat(63), 3));
        assert_ne!(long, pod_name(&"d".repeat(63), &r.id, &"t".repeat(63), 4));
        // two runs whose ids share the first 32 bits get different Pods
        let twin = uuid::Uuid::parse_str("01234567ffffffffffffffffffffffff").unwrap();
        assert_ne!(
            pod_name("etl", &r.id, "load", 2),
            pod_name("etl", &twin, "load", 2)
        );
        // a valid DNS-1123 subdomain: no '-' or '.' where a cut ends the head
        let cut = pod_name(&format!("{}-x", "a".repeat(44)), &r.id, "load", 1);
        assert!(!cut.contains("--"), "{cut}");
    }

    /// The Pod of try 2 of `task` of a DAG spec (YAML), at `logical_date`, with UTC as the
    /// operator's zone.
    fn pod_at(dag: &str, task: &str, logical_date: &str) -> Pod {
        let spec: DagSpec = serde_yaml::from_str(dag).expect("valid DagSpec");
        let task = spec
            .tasks
            .iter()
            .find(|t| t.name == task)
            .expect("the task");
        let mut r = run();
        r.logical_date = logical_date.parse().expect("RFC3339");
        build_pod(&r, &spec, &DagClock::of(&spec, Tz::UTC), task, 2)
    }

    fn pod_of(dag: &str, task: &str) -> Pod {
        pod_at(dag, task, "2024-01-02T00:00:00Z")
    }

    fn env_of(pod: &Pod) -> Vec<(String, String)> {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers[0].env.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    }

    fn env_map(pod: &Pod) -> BTreeMap<String, String> {
        env_of(pod).into_iter().collect()
    }

    #[test]
    fn a_pods_labels_name_its_try() {
        let pod = pod_of(
            "tasks:\n- name: load\n  container: {image: busybox}",
            "load",
        );
        let key = owner(pod.metadata.labels.as_ref()).expect("labels");
        assert_eq!(
            (key.run_id, key.task_name.as_str(), key.try_number),
            (run().id, "load", 2)
        );
        assert_eq!(owner(None), None);
    }

    #[test]
    fn pod_carries_labels_owner_env_and_task_fields() {
        let pod = pod_of(
            "tasks:\n- name: load\n  serviceAccountName: etl\n  nodeSelector: {disk: ssd}\n  container: {image: busybox, env: [{name: TASK_NAME, value: mine}, {name: KEEP, value: x}]}",
            "load",
        );
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_TRY], "2");
        assert_eq!(labels[LABEL_RUN], run().id.to_string());
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        assert_eq!(meta.annotations, None);
        let env = env_map(&pod);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("etl"));
        assert_eq!(spec.security_context, None);
        let c = &spec.containers[0];
        assert_eq!(c.name, "load");
        assert_eq!(env["LOGICAL_DATE"], "2024-01-02T00:00:00Z");
        assert_eq!(env["DATA_INTERVAL_START"], "2024-01-01T00:00:00Z");
        assert_eq!(env["TASK_NAME"], "load");
        assert_eq!(env["TRY_NUMBER"], "2");
        assert_eq!(env["DAG_RUN_PARAMS"], r#"{"a":1}"#);
        assert_eq!(env["KEEP"], "x");
        // no schedule: no ticks around the logical date
        assert_eq!(env["DS"], "2024-01-02");
        assert_eq!(env["PREV_LOGICAL_DATE"], "");
        assert_eq!(env["NEXT_LOGICAL_DATE"], "");
    }

    #[test]
    fn values_from_user_data_are_not_expanded_by_kubernetes() {
        let spec: DagSpec = serde_yaml::from_str(
            "tasks:\n- name: load\n  container: {image: busybox, env: [{name: MINE, value: $(DS)}]}",
        )
        .expect("valid DagSpec");
        let mut r = run();
        r.params = serde_json::json!({"x": "$(DB_PASSWORD)", "y": "$$(Z)"});
        let pod = build_pod(&r, &spec, &DagClock::of(&spec, Tz::UTC), &spec.tasks[0], 1);
        let env = env_map(&pod);
        assert_eq!(
            env["DAG_RUN_PARAMS"],
            r#"{"x":"$$(DB_PASSWORD)","y":"$$$$(Z)"}"#
        );
        // every value the operator builds is escaped (a `$` left alone only in the task's own)
        for (name, value) in env_of(&pod) {
            if name == "MINE" {
                assert_eq!(value, "$(DS)", "the task's own variables still expand");
                continue;
            }
            let unescaped = value.replace("$$", "");
            assert!(!unescaped.contains('$'), "{name}={value}");
        }
    }

    const TEMPLATED: &str = "\
podTemplate:
  labels: {team: data, app: etl}
  annotations: {example.com/owner: data-team}
  serviceAccountName: runner
  securityContext: {runAsNonRoot: true, runAsUser: 1000}
  nodeSelector: {pool: batch, disk: hdd}
  tolerations: [{key: batch, operator: Exists, effect: NoSchedule}]
  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]}}}
  priorityClassName: batch-low
  imagePullSecrets: [{name: registry}]
  volumes: [{name: config, configMap: {name: etl-config}}, {name: scratch, emptyDir: {}}]
tasks:
- name: plain
  container: {image: busybox}
- name: own
  serviceAccountName: special
  nodeSelector: {disk: ssd}
  tolerations: [{key: gpu, operator: Exists}]
  affinity: {podAntiAffinity: {}}
  imagePullSecrets: [{name: registry}, {name: private}]
  volumes: [{name: scratch, emptyDir: {medium: Memory}}]
  container: {image: busybox}
";

    #[test]
    fn the_pod_template_applies_to_every_task_pod() {
        let pod = pod_of(TEMPLATED, "plain");
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "data");
        assert_eq!(labels["app"], "etl");
        assert_eq!(labels[LABEL_TASK], "plain");
        assert_eq!(
            meta.annotations.as_ref().unwrap()["example.com/owner"],
            "data-team"
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("runner"));
        let sc = spec.security_context.expect("security context");
        assert_eq!(
            (sc.run_as_non_root, sc.run_as_user),
            (Some(true), Some(1000))
        );
        assert_eq!(
            spec.node_selector.unwrap(),
            BTreeMap::from([
                ("pool".into(), "batch".into()),
                ("disk".into(), "hdd".into())
            ])
        );
        assert_eq!(spec.tolerations.unwrap()[0].key.as_deref(), Some("batch"));
        assert!(spec.affinity.unwrap().node_affinity.is_some());
        assert_eq!(spec.priority_class_name.as_deref(), Some("batch-low"));
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "registry");
        let volumes: Vec<String> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["config", "scratch"]);
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn a_tasks_own_pod_fields_win_over_the_template() {
        let spec = pod_of(TEMPLATED, "own").spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("special"));
        // by key, the task's entry winning
        assert_eq!(
            spec.node_selector.unwrap(),
            BTreeMap::from([
                ("pool".into(), "batch".into()),
                ("disk".into(), "ssd".into())
            ])
        );
        // the template's, then the task's
        let tolerations: Vec<_> = spec
            .tolerations
            .unwrap()
            .into_iter()
            .filter_map(|t| t.key)
            .collect();
        assert_eq!(tolerations, ["batch", "gpu"]);
        // replaced whole
        let affinity = spec.affinity.unwrap();
        assert!(affinity.node_affinity.is_none() && affinity.pod_anti_affinity.is_some());
        // by name: one `registry`
        let secrets: Vec<_> = spec
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(secrets, ["registry", "private"]);
        // by name: the task's `scratch` replaces the template's
        let volumes = spec.volumes.unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["config", "scratch"]);
        let medium = volumes[1].empty_dir.as_ref().and_then(|e| e.medium.clone());
        assert_eq!(medium.as_deref(), Some("Memory"));
    }

    #[test]
    fn the_operators_labels_win_and_reserved_keys_are_left_out() {
        // refused at apply time (CEL) and by DagSpec::validate; should one get through, the
        // Pod still carries only the operator's values under dagoperator.io/
        let pod = pod_of(
            "podTemplate:\n  labels: {dagoperator.io/dag: other, dagoperator.io/run-id: x, dagoperator.io/extra: y, team: a}\n  annotations: {dagoperator.io/note: z, e2e.dagoperator.io/outcome: hold}\ntasks:\n- {name: t, container: {image: x}}",
            "t",
        );
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_DAG], "etl");
        assert_eq!(labels[LABEL_RUN], run().id.to_string());
        assert!(!labels.contains_key("dagoperator.io/extra"));
        assert_eq!(labels["team"], "a");
        assert_eq!(owner(Some(labels)).map(|k| k.task_name), Some("t".into()));
        let annotations = pod.metadata.annotations.unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["e2e.dagoperator.io/outcome"],
            "only dagoperator.io/ itself is reserved, not its subdomains"
        );
    }

    const DEFAULTED: &str = "\
taskDefaults:
  image: registry.example.com/etl:1.4
  env: [{name: STAGE, value: prod}, {name: REGION, value: eu}]
  envFrom: [{configMapRef: {name: shared}}]
  resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 128Mi}}
  volumeMounts: [{name: config, mountPath: /etc/etl}, {name: scratch, mountPath: /scratch}]
tasks:
- name: bare
  container: {command: [run]}
- name: own
  container:
    image: busybox
    env: [{name: REGION, value: us}, {name: MINE, value: '1'}]
    envFrom: [{secretRef: {name: creds}}]
    resources: {requests: {cpu: '2'}, limits: {cpu: '4'}}
    volumeMounts: [{name: other, mountPath: /scratch}]
";

    #[test]
    fn task_defaults_fill_in_a_bare_container() {
        let pod = pod_of(DEFAULTED, "bare");
        let env = env_map(&pod);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example.com/etl:1.4"));
        assert_eq!(c.command.as_deref(), Some(&["run".to_string()][..]));
        assert_eq!(
            (env["STAGE"].as_str(), env["REGION"].as_str()),
            ("prod", "eu")
        );
        assert_eq!(c.env_from.as_ref().map(Vec::len), Some(1));
        let res = c.resources.as_ref().unwrap();
        assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "100m");
        assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "128Mi");
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/etc/etl", "/scratch"]);
    }

    #[test]
    fn a_tasks_container_wins_over_the_defaults() {
        let pod = pod_of(DEFAULTED, "own");
        let env = env_of(&pod);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("busybox"));
        // by name: the task's REGION, one of it, after the defaults it does not override
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        let theirs: Vec<&str> = names[15..].to_vec();
        assert_eq!(theirs, ["STAGE", "REGION", "MINE"]);
        assert_eq!(env_map(&pod)["REGION"], "us");
        // the defaults' sources first: the task's, later, win in Kubernetes
        let sources = c.env_from.as_ref().unwrap();
        assert!(sources[0].config_map_ref.is_some() && sources[1].secret_ref.is_some());
        // per resource
        let res = c.resources.as_ref().unwrap();
        let requests = res.requests.as_ref().unwrap();
        assert_eq!(
            (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
            ("2", "64Mi")
        );
        let limits = res.limits.as_ref().unwrap();
        assert_eq!(
            (limits["cpu"].0.as_str(), limits["memory"].0.as_str()),
            ("4", "128Mi")
        );
        // by mountPath
        let mounts: Vec<(&str, &str)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(mounts, [("config", "/etc/etl"), ("other", "/scratch")]);
    }

    #[test]
    fn the_operators_variables_come_first_and_win() {
        let pod = pod_of(
            "taskDefaults: {env: [{name: DS, value: default}, {name: OUT, value: 's3://b/$(DS)'}]}\ntasks:\n- {name: t, container: {image: x, env: [{name: TS, value: mine}]}}",
            "t",
        );
        let env = env_of(&pod);
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "DAG_NAMESPACE",
                "DAG_NAME",
                "DAG_RUN_ID",
                "DAG_RUN_TYPE",
                "LOGICAL_DATE",
                "DATA_INTERVAL_START",
                "DATA_INTERVAL_END",
                "TASK_NAME",
                "TRY_NUMBER",
                "DAG_RUN_PARAMS",
                "DS",
                "DS_NODASH",
                "TS",
                "PREV_LOGICAL_DATE",
                "NEXT_LOGICAL_DATE",
                "OUT",
            ],
            "ours first (so `$(DS)` in a task's variable expands), same-named ones dropped"
        );
        let env = env_map(&pod);
        assert_eq!(env["DS"], "2024-01-02");
        assert_eq!(env["TS"], "2024-01-02T00:00:00Z");
        assert_eq!(env["OUT"], "s3://b/$(DS)");
    }

    #[test]
    fn template_variables_in_the_dags_zone_across_a_date_boundary() {
        // 08:00 in Tokyo is 23:00 UTC the day before
        let tokyo = "schedule: '0 8 * * *'\ntimezone: Asia/Tokyo\ntasks: [{name: t, container: {image: x}}]";
        let env = env_map(&pod_at(tokyo, "t", "2024-01-01T23:00:00Z"));
        assert_eq!(env["LOGICAL_DATE"], "2024-01-01T23:00:00Z");
        assert_eq!(env["DS"], "2024-01-02");
        assert_eq!(env["DS_NODASH"], "20240102");
        assert_eq!(env["TS"], "2024-01-02T08:00:00+09:00");
        assert_eq!(env["PREV_LOGICAL_DATE"], "2023-12-31T23:00:00Z");
        assert_eq!(env["NEXT_LOGICAL_DATE"], "2024-01-02T23:00:00Z");
        // and west of UTC the other way: 21:00 in Los Angeles is 05:00 UTC the day after
        let la = "schedule: '0 21 * * *'\ntimezone: America/Los_Angeles\ntasks: [{name: t, container: {image: x}}]";
        let env = env_map(&pod_at(la, "t", "2024-03-01T05:00:00Z"));
        assert_eq!(env["DS"], "2024-02-29");
        assert_eq!(env["TS"], "2024-02-29T21:00:00-08:00");
        // a CRON_TZ= prefix is the schedule's zone, so the dates' too
        let prefixed =
            "schedule: 'CRON_TZ=Asia/Tokyo 0 8 * * *'\ntasks: [{name: t, container: {image: x}}]";
        let env = env_map(&pod_at(prefixed, "t", "2024-01-01T23:00:00Z"));
        assert_eq!(env["DS"], "2024-01-02");
    }

    #[test]
    fn prev_and_next_ticks_follow_the_schedule_and_its_bounds() {
        // Berlin's spring-forward night: 02:30 does not exist on 2024-03-31, the tick is at
        // 03:00 CEST (01:00 UTC)
        let berlin = "schedule: '30 2 * * *'\ntimezone: Europe/Berlin\ntasks: [{name: t, container: {image: x}}]";
        let env = env_map(&pod_at(berlin, "t", "2024-03-30T01:30:00Z"));
        assert_eq!(env["PREV_LOGICAL_DATE"], "2024-03-29T01:30:00Z");
        assert_eq!(env["NEXT_LOGICAL_DATE"], "2024-03-31T01:00:00Z");
        assert_eq!(env["TS"], "2024-03-30T02:30:00+01:00");
        // a manual run between ticks: the ticks around it
        let env = env_map(&pod_at(berlin, "t", "2024-03-30T12:00:00Z"));
        assert_eq!(env["PREV_LOGICAL_DATE"], "2024-03-30T01:30:00Z");
        assert_eq!(env["NEXT_LOGICAL_DATE"], "2024-03-31T01:00:00Z");
        // no tick before startDate, none after endDate
        let bounded = "schedule: '@daily'\nstartDate: 2024-01-02T00:00:00Z\nendDate: 2024-01-02T12:00:00Z\ntasks: [{name: t, container: {image: x}}]";
        let env = env_map(&pod_at(bounded, "t", "2024-01-02T00:00:00Z"));
        assert_eq!(env["PREV_LOGICAL_DATE"], "");
        assert_eq!(env["NEXT_LOGICAL_DATE"], "");
        // @every counts from startDate
        let every = "schedule: '@every 90m'\nstartDate: 2024-01-01T00:00:00Z\ntasks: [{name: t, container: {image: x}}]";
        let env = env_map(&pod_at(every, "t", "2024-01-01T03:00:00Z"));
        assert_eq!(env["PREV_LOGICAL_DATE"], "2024-01-01T01:30:00Z");
        assert_eq!(env["NEXT_LOGICAL_DATE"], "2024-01-01T04:30:00Z");
    }

    #[test]
    fn the_operators_zone_applies_to_a_dag_without_one() {
        let spec: DagSpec =
            serde_yaml::from_str("tasks: [{name: t, container: {image: x}}]").unwrap();
        let clock = DagClock::of(&spec, chrono_tz::Asia::Tokyo);
        let vars = clock.variables("2024-01-01T23:00:00Z".parse().unwrap());
        assert_eq!(vars[0].value.as_deref(), Some("2024-01-02"));
    }

    fn pod_with_status(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": status
        }))
        .expect("a Pod")
    }

    #[test]
    fn a_failed_container_gives_its_exit_code_reason_and_message() {
        // exit 3 with the end of its log as the message (FallbackToLogsOnError)
        let pod = pod_with_status(
            serde_json::json!({"phase": "Failed", "containerStatuses": [{
            "name": "t", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "bad input\n"}}}]}),
        );
        assert_eq!(
            verdict(&pod),
            PodVerdict::Failed {
                exit_code: Some(3),
                message: "Error: bad input".into()
            }
        );
        // the kernel's OOM killer: the reason alone
        let pod = pod_with_status(
            serde_json::json!({"phase": "Failed", "containerStatuses": [{
            "name": "t", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        );
        assert_eq!(
            verdict(&pod),
            PodVerdict::Failed {
                exit_code: Some(137),
                message: "OOMKilled".into()
            }
        );
        // an eviction: the Pod's own reason and message
        let pod = pod_with_status(serde_json::json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory."}));
        assert_eq!(
            verdict(&pod),
            PodVerdict::Failed {
                exit_code: None,
                message: "Evicted: The node was low on resource: memory.".into()
            }
        );
    }

    #[test]
    fn a_pending_pod_that_cannot_pull_is_stuck_with_the_kubelets_words() {
        let pod = pod_with_status(
            serde_json::json!({"phase": "Pending", "containerStatuses": [{
            "name": "t", "image": "nope", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "failed to resolve reference"}}}]}),
        );
        assert_eq!(
            verdict(&pod),
            PodVerdict::Stuck("ErrImagePull: failed to resolve reference".into())
        );
        // waiting to start is not stuck
        let pod = pod_with_status(
            serde_json::json!({"phase": "Pending", "containerStatuses": [{
            "name": "t", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(verdict(&pod), PodVerdict::Running);
    }

    #[test]
    fn a_pod_taken_away_by_kubernetes_fails_its_try_with_the_reason() {
        // the node stopped reporting: the taint manager deletes the Pod, its kubelet cannot
        let mut pod = pod_with_status(serde_json::json!({"phase": "Running", "conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint"}]}));
        assert_eq!(verdict(&pod), PodVerdict::Running, "not yet deleted");
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert_eq!(
            verdict(&pod),
            PodVerdict::Failed {
                exit_code: None,
                message: "DeletionByTaintManager: Taint manager: deleting due to NoExecute taint"
                    .into()
            }
        );
        // a task that finished before keeps its outcome
        pod.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(verdict(&pod), PodVerdict::Succeeded);
        // our own delete (a timeout, a cancel) is no disruption
        let mut ours = pod_with_status(serde_json::json!({"phase": "Running"}));
        ours.metadata.deletion_timestamp = pod.metadata.deletion_timestamp.clone();
        assert_eq!(verdict(&ours), PodVerdict::Running);
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let long = "é".repeat(3000);
        let text = described(Some("Error"), Some(&long)).expect("some text");
        assert!(text.len() <= 2048 + "…".len(), "{}", text.len());
        assert!(text.starts_with("Error: é") && text.ends_with('…'));
    }

    #[test]
    fn a_tasks_pod_falls_back_to_its_log_for_the_message_unless_it_says_otherwise() {
        let pod = pod_of("tasks: [{name: t, container: {image: x}}]", "t");
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let pod = pod_of(
            "tasks: [{name: t, container: {image: x, terminationMessagePolicy: File}}]",
            "t",
        );
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
    }
}
