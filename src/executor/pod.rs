//! Task try ↔ Pod (SPEC §5): the Pod of a try (deterministic name, owner reference to the DAG,
//! labels, `restartPolicy: Never`, the run's environment, the task's container and pod-level
//! fields), and what a Pod says back (its try, its verdict, when it finished).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::plan::PodVerdict;
use crate::api::TaskSpec;
use crate::k8s::to_chrono;
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
    match status.phase.as_deref() {
        Some("Succeeded") => PodVerdict::Succeeded,
        Some("Failed") => PodVerdict::Failed {
            exit_code: terminated.map(|t| t.exit_code),
            message: terminated
                .and_then(|t| t.reason.clone())
                .or_else(|| status.reason.clone())
                .or_else(|| status.message.clone())
                .unwrap_or_else(|| "pod failed".to_string()),
        },
        Some("Pending") => {
            let waiting = status.container_statuses.as_ref().and_then(|cs| {
                cs.iter()
                    .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            });
            if let Some(reason) = waiting.filter(|r| {
                matches!(
                    r.as_str(),
                    "ErrImagePull"
                        | "ImagePullBackOff"
                        | "InvalidImageName"
                        | "CreateContainerConfigError"
                        | "CreateContainerError"
                )
            }) {
                return PodVerdict::Stuck(reason);
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

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

/// The Pod of one try of `task` in `run`.
pub fn build_pod(run: &RunRow, task: &TaskSpec, try_number: i32) -> Pod {
    let name = pod_name(&run.dag.name, &run.id, &task.name, try_number);
    let rfc = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut container: Container = task.container.to_container();
    if container.name.is_empty() {
        container.name = task.name.clone();
    }
    let ours = [
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
    let mut vars = container.env.take().unwrap_or_default();
    // ours win over same-named variables of the task
    vars.retain(|v| !ours.iter().any(|o| o.name == v.name));
    vars.extend(ours);
    container.env = Some(vars);
    let labels = BTreeMap::from([
        (LABEL_DAG.to_string(), run.dag.name.clone()),
        (LABEL_RUN.to_string(), run.id.to_string()),
        (LABEL_TASK.to_string(), task.name.clone()),
        (LABEL_TRY.to_string(), try_number.to_string()),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(run.dag.namespace.clone()),
            labels: Some(labels),
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
            service_account_name: task.service_account_name.clone(),
            node_selector: task.node_selector.clone(),
            tolerations: task.tolerations.clone(),
            affinity: task.affinity.clone(),
            volumes: task.volumes.clone(),
            image_pull_secrets: task.image_pull_secrets.clone(),
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

    #[test]
    fn a_pods_labels_name_its_try() {
        let pod = build_pod(
            &run(),
            &serde_yaml::from_str("name: load\ncontainer: {image: busybox}").unwrap(),
            2,
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
        let task: TaskSpec = serde_yaml::from_str(
            "name: load\nserviceAccountName: etl\nnodeSelector: {disk: ssd}\ncontainer: {image: busybox, env: [{name: TASK_NAME, value: mine}, {name: KEEP, value: x}]}",
        )
        .unwrap();
        let pod = build_pod(&run(), &task, 2);
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_TRY], "2");
        assert_eq!(labels[LABEL_RUN], run().id.to_string());
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("etl"));
        let c = &spec.containers[0];
        assert_eq!(c.name, "load");
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["LOGICAL_DATE"], "2024-01-02T00:00:00Z");
        assert_eq!(env["DATA_INTERVAL_START"], "2024-01-01T00:00:00Z");
        assert_eq!(env["TASK_NAME"], "load");
        assert_eq!(env["TRY_NUMBER"], "2");
        assert_eq!(env["DAG_RUN_PARAMS"], r#"{"a":1}"#);
        assert_eq!(env["KEEP"], "x");
    }
}
