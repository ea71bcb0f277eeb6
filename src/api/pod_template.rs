//! What every task Pod of a DAG shares: `spec.podTemplate` (Pod-level fields) and
//! `spec.taskDefaults` (container fields). The executor merges them into each task's Pod
//! (`executor/pod.rs`); the task's own values win.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext,
    ResourceRequirements, Toleration, Volume, VolumeMount,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// Label and annotation keys under this prefix are the operator's own (the Pod watch, the
/// retention and the UI select task Pods by them): `podTemplate` may not set them.
pub const RESERVED_PREFIX: &str = "dagoperator.io/";

/// Whether a label or annotation key is the operator's own.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// Pod-level settings applied to every task Pod of the DAG. A task's own
/// `serviceAccountName` and `affinity` replace the template's; its `nodeSelector`, `volumes`,
/// `imagePullSecrets` and `tolerations` are merged with the template's (by key, by name, by
/// name, and appended; the task's entry wins on a clash).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::brief_below_properties)]
pub struct PodTemplate {
    /// Labels of every task Pod. Keys under `dagoperator.io/` are the operator's and are
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.all(k, !k.startsWith('dagoperator.io/'))")
            .message("label keys under dagoperator.io/ are reserved for the operator")
    )]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations of every task Pod. Keys under `dagoperator.io/` are the operator's and are
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.all(k, !k.startsWith('dagoperator.io/'))")
            .message("annotation keys under dagoperator.io/ are reserved for the operator")
    )]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The task Pods' service account, unless a task names its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The task Pods' security context (core/v1 PodSecurityContext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Node selector of the task Pods; a task's own entries win key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the task Pods; a task's own are added after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the task Pods, unless a task sets its own (which replaces it whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the task Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets to pull images with; a task's own are added (by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Volumes of every task Pod; a task's volume of the same name replaces one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
}

/// Container fields merged into every task's container; the task's own values win.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::brief_below_properties)]
#[schemars(transform = schema::container_rules)]
pub struct TaskDefaults {
    /// The image of tasks whose container names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment variables of every task; a task's variable of the same name wins. A name
    /// is printable ASCII other than `=` (what the Pod API takes), refused at apply otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Sources of environment variables, before the task's own (later sources win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// Resource requests and limits; a task's own request or limit of a resource wins. Each
    /// is a non-negative quantity (`500m`, `2Gi`), refused at apply otherwise (at most 32
    /// resources, 64 characters each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Volume mounts of every task; a task's mount at the same `mountPath` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

impl PodTemplate {
    /// The first label or annotation key the operator reserves, as (`label`|`annotation`, key).
    pub fn reserved_key(&self) -> Option<(&'static str, &str)> {
        let labels = self
            .labels
            .iter()
            .flat_map(|m| m.keys())
            .map(|k| ("label", k.as_str()));
        let annotations = self
            .annotations
            .iter()
            .flat_map(|m| m.keys())
            .map(|k| ("annotation", k.as_str()));
        labels.chain(annotations).find(|(_, k)| is_reserved(k))
    }
}

impl TaskDefaults {
    /// The default image, if one is given (an empty string is none).
    pub fn image(&self) -> Option<&str> {
        self.image.as_deref().filter(|i| !i.is_empty())
    }
}
