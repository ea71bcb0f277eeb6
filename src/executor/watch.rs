//! The executor's eyes on the API server: the Pods it created (label `dagoperator.io/run-id`)
//! and the Pools, turned into [`ExecInput`]s. Only what a decision needs is kept of a Pod
//! (its try, its verdict, when it finished), never the object itself.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use super::launcher::PodKey;
use super::pod::{self, LABEL_RUN};
use super::{CurrentSpecs, ExecInput, PodEvent, PodSeen, PoolDirectory, PoolInfo};
use crate::api::{DAG, DagSpec, Pool};
use crate::k8s::trim_metadata;
use crate::store::DagKey;

/// What the executor keeps of a Pod.
pub fn seen(pod: &Pod) -> PodSeen {
    PodSeen {
        key: PodKey::new(
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        owner: pod::owner(pod.metadata.labels.as_ref()),
        verdict: pod::verdict(pod),
        finished_at: pod::finished_at(pod),
    }
}

/// Watches task Pods and sends each change; after every (re)list, the whole set at once
/// (`PodEvent::Listed`), so Pods deleted while the watch was down are noticed. Ends when
/// the executor is gone.
pub fn spawn_pod_watch(api: Api<Pod>, inputs: mpsc::UnboundedSender<ExecInput>) {
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default().labels(LABEL_RUN)).default_backoff();
        futures::pin_mut!(stream);
        let mut listing: Option<Vec<PodSeen>> = None;
        while let Some(event) = stream.next().await {
            let input = match event {
                Err(e) => {
                    tracing::debug!(error = %e, "pod watch error (retrying)");
                    continue;
                }
                Ok(watcher::Event::Init) => {
                    listing = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(p)) => {
                    listing.get_or_insert_with(Vec::new).push(seen(&p));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    PodEvent::Listed(listing.take().unwrap_or_default())
                }
                Ok(watcher::Event::Apply(p)) => PodEvent::Applied(seen(&p)),
                Ok(watcher::Event::Delete(p)) => PodEvent::Deleted(seen(&p)),
            };
            if inputs.send(ExecInput::Pod(input)).is_err() {
                return;
            }
        }
    });
}

/// Watches Pools into a cache and tells the executor at each change (slots raised: queued
/// tries may start).
pub fn spawn_pool_watch(api: Api<Pool>, inputs: mpsc::UnboundedSender<ExecInput>) -> Store<Pool> {
    let (store, writer) = reflector::store();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(trim_metadata)
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => tracing::debug!(error = %e, "pool watch error (retrying)"),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(_) => {
                    if inputs.send(ExecInput::PoolsChanged).is_err() {
                        return;
                    }
                }
            }
        }
    });
    store
}

/// Waits until `store` has had its first full list. kube-runtime wakes only one of several
/// tasks waiting on the same store, so this looks again every 200 ms rather than waiting to
/// be woken.
pub async fn until_ready<K>(store: &Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready())
        .await
        .is_err()
    {}
}

impl PoolDirectory for Store<Pool> {
    fn pools(&self) -> Vec<PoolInfo> {
        self.state()
            .iter()
            .map(|p| PoolInfo {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                name: p.metadata.name.clone().unwrap_or_default(),
                generation: p.metadata.generation,
                slots: p.spec.slots,
            })
            .collect()
    }

    fn slots(&self, namespace: &str, name: &str) -> Option<i32> {
        self.get(&reflector::ObjectRef::new(name).within(namespace))
            .map(|p| p.spec.slots)
    }
}

impl CurrentSpecs for Store<DAG> {
    fn current(&self, dag: &DagKey) -> Option<std::sync::Arc<DagSpec>> {
        self.get(&reflector::ObjectRef::new(&dag.name).within(&dag.namespace))
            .map(|d| std::sync::Arc::new(d.spec.clone()))
    }
}
