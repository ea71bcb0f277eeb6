//! The public contract (SPEC §2): the `DAG`, `Pool` and `Backfill` custom resources of group
//! `dagoperator.io`, version `v1alpha1`, and their status conditions.

pub mod backfill;
pub mod conditions;
pub mod dag;
pub mod lean;
pub mod pod_template;
pub mod pool;
mod schema;
pub mod tenancy;
pub mod trigger;

pub use backfill::{Backfill, BackfillSpec, BackfillStatus};
pub use conditions::Condition;
pub use dag::{DAG, DagSpec, DagStatus, TaskSpec};
pub use pod_template::{PodTemplate, TaskDefaults};

/// The `DAG` kind under a Rust-style name.
pub type Dag = DAG;
pub use pool::{Pool, PoolSpec, PoolStatus};

pub const GROUP: &str = "dagoperator.io";
pub const VERSION: &str = "v1alpha1";
pub const CATEGORY: &str = "dagoperator";

pub use trigger::{TRIGGER_ANNOTATION, TRIGGER_PARAMS_ANNOTATION, TRIGGER_PREFIX, TriggerRequest};

/// All CRDs of the API, in the order `dag-operator crds` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Dag::crd(), Pool::crd(), Backfill::crd()]
}

/// The CRDs as one multi-document YAML stream, and each by file name (`crds/<plural>.yaml`).
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.spec.names.plural);
            serde_yaml::to_string(&crd).map(|yaml| (name, yaml))
        })
        .collect()
}
