//! Kubernetes helpers used below the controllers (the executor, the engine's wiring): time
//! conversion, metadata trimming, object references, namespaced-or-all `Api`s. Nothing here
//! decides anything.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;

use crate::key::Subject;

/// Converts a Kubernetes timestamp (jiff) into chrono.
pub fn to_chrono(t: &Time) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

/// Converts a chrono instant into a Kubernetes timestamp (whole microseconds are kept).
pub fn to_time(t: chrono::DateTime<chrono::Utc>) -> Time {
    let micros = t.timestamp_micros();
    Time(
        k8s_openapi::jiff::Timestamp::from_microsecond(micros)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Drops what no reconciler here reads and what is often most of a cached object's size:
/// `metadata.managedFields` and kubectl's last-applied annotation. Applied to objects before
/// they enter a watch cache.
pub fn trim_metadata<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// An `Api` over one namespace, or over all of them.
pub fn api<K>(client: kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// A reference to one of our objects (a DAG, a Backfill) for events.
pub fn reference(subject: &Subject, uid: Option<&str>) -> ObjectReference {
    let key = subject.key();
    ObjectReference {
        api_version: Some(format!("{}/{}", crate::api::GROUP, crate::api::VERSION)),
        kind: Some(subject.kind().to_string()),
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        uid: uid.map(str::to_string),
        ..Default::default()
    }
}
