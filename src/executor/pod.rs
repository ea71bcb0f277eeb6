//! Task try → Pod (SPEC §5): deterministic name, owner reference to the DAG, labels,
//! `restartPolicy: Never`, the run's environment, the task's container and pod-level fields.

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::TaskSpec;
use crate::store::RunRow;

pub const LABEL_DAG: &str = "dagoperator.io/dag";
pub const LABEL_RUN: &str = "dagoperator.io/run-id";
pub const LABEL_TASK: &str = "dagoperator.io/task";
pub const LABEL_TRY: &str = "dagoperator.io/try";

/// FNV-1a, for a short stable suffix (the std hasher is not stable across releases).
fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `<dag>-<run8>-<task>-<try>`, cut to 63 characters with a hash when too long, so the same
/// try always gets the same name (creating it twice is a no-op).
pub fn pod_name(dag: &str, run: &uuid::Uuid, task: &str, try_number: i32) -> String {
    let run8 = &run.simple().to_string()[..8];
    let full = format!("{dag}-{run8}-{task}-{try_number}");
    if full.len() <= 63 {
        return full;
    }
    let hash = format!("{:08x}", fnv(&full));
    let tail = format!("-{run8}-{try_number}-{hash}");
    let keep = 63 - tail.len();
    let head: String = format!("{dag}-{task}").chars().take(keep).collect();
    format!("{}{tail}", head.trim_end_matches('-'))
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
        }
    }

    #[test]
    fn names_are_deterministic_and_fit_a_label() {
        let r = run();
        assert_eq!(pod_name("etl", &r.id, "load", 2), "etl-01234567-load-2");
        let long = pod_name(&"d".repeat(60), &r.id, &"t".repeat(60), 3);
        assert!(long.len() <= 63, "{long}");
        assert_eq!(long, pod_name(&"d".repeat(60), &r.id, &"t".repeat(60), 3));
        assert_ne!(long, pod_name(&"d".repeat(60), &r.id, &"t".repeat(60), 4));
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
