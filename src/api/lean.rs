//! DAGs decoded lean for the watch caches: [`LeanDag`] reads a DAG as the API server sends it
//! but never builds `metadata.managedFields` (server-side apply's record of who set which
//! field, a tree of JSON maps often larger than the spec) nor kubectl's last-applied
//! annotation. Nothing here reads them; with 10,000 DAGs listed at start, building them only to
//! drop them was most of the operator's peak memory (docs/BENCHMARKS.md).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::{Deserialize, Deserializer};

use super::{DAG, DagSpec, DagStatus};

/// kubectl's copy of the last applied object, kept in an annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A DAG decoded without its managedFields and last-applied annotation; watched in place of
/// [`DAG`] and turned into one ([`LeanDag::into_inner`]) before it is cached.
#[derive(Clone, Debug)]
pub struct LeanDag(DAG);

impl LeanDag {
    pub fn into_inner(self) -> DAG {
        self.0
    }

    /// The same collection as `api` (one namespace or all), read lean.
    pub fn api(api: &Api<DAG>) -> Api<LeanDag> {
        crate::k8s::api(api.clone().into_client(), api.namespace())
    }
}

/// A watch event of lean DAGs as one of DAGs.
pub fn into_dags(event: watcher::Event<LeanDag>) -> watcher::Event<DAG> {
    use watcher::Event;
    match event {
        Event::Apply(d) => Event::Apply(d.0),
        Event::Delete(d) => Event::Delete(d.0),
        Event::Init => Event::Init,
        Event::InitApply(d) => Event::InitApply(d.0),
        Event::InitDone => Event::InitDone,
    }
}

impl Resource for LeanDag {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        DAG::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        DAG::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        DAG::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        DAG::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// The DAG as sent, minus what is skipped (unknown fields, `apiVersion` and `kind` included,
/// are passed over without being built).
#[derive(Deserialize)]
struct Wire {
    metadata: LeanMeta,
    spec: DagSpec,
    #[serde(default)]
    status: Option<DagStatus>,
}

/// `ObjectMeta` without `managedFields`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_grace_period_seconds: Option<i64>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    finalizers: Option<Vec<String>>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

impl From<LeanMeta> for ObjectMeta {
    fn from(m: LeanMeta) -> Self {
        // an emptied map would keep its node (hundreds of bytes) for nothing
        let annotations = m
            .annotations
            .map(|mut a| {
                a.remove(LAST_APPLIED);
                a
            })
            .filter(|a| !a.is_empty());
        ObjectMeta {
            annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: None,
            uid: m.uid,
        }
    }
}

impl<'de> Deserialize<'de> for LeanDag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let mut dag = DAG::new("", wire.spec);
        dag.metadata = wire.metadata.into();
        dag.status = wire.status;
        Ok(LeanDag(dag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dag_is_read_without_managed_fields_or_the_last_applied_copy() {
        let json = serde_json::json!({
            "apiVersion": "dagoperator.io/v1alpha1",
            "kind": "DAG",
            "metadata": {
                "name": "etl", "namespace": "team", "uid": "u-1", "generation": 3,
                "resourceVersion": "42",
                "labels": {"app": "etl"},
                "annotations": {
                    LAST_APPLIED: "{\"huge\": true}",
                    "dagoperator.io/trigger": "now",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:schedule": {}}}}],
            },
            "spec": {"schedule": "0 * * * *", "tasks": [{"name": "a", "container": {"image": "busybox"}}]},
            "status": {"lastHandledTrigger": "now"},
        });
        let lean: LeanDag = serde_json::from_value(json.clone()).expect("decodes");
        let full: DAG = serde_json::from_value(json).expect("decodes");
        let dag = lean.into_inner();
        assert_eq!(dag.metadata.managed_fields, None);
        let annotations = dag.metadata.annotations.clone().unwrap_or_default();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(
            annotations
                .get("dagoperator.io/trigger")
                .map(String::as_str),
            Some("now")
        );
        // everything else is what the full decoding reads
        let mut trimmed = full.clone();
        crate::k8s::trim_metadata(&mut trimmed);
        assert_eq!(dag.metadata, trimmed.metadata);
        assert_eq!(dag.spec, full.spec);
        assert_eq!(dag.status, full.status);
    }

    #[test]
    fn a_malformed_dag_is_an_error() {
        let json = serde_json::json!({"metadata": {"name": "x"}, "spec": {"tasks": "no"}});
        assert!(serde_json::from_value::<LeanDag>(json).is_err());
    }
}
