//! Namespaces, for tenancy (docs/SEMANTICS.md, "Tenancy"): each namespace's annotations give
//! its cap on running runs (told to the engine, which enforces it through the gate) and its
//! ceiling on `spec.priority` (read by the DAG controller from the cache kept here). An
//! annotation that cannot be read keeps the default and says so in a Warning event on the
//! Namespace, once per value. What it sees is also told to the history keeper
//! (`operator/history.rs`): the history of a namespace deleted, or deleted and created again,
//! is not the current namespace's.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use super::Events;
use crate::api::tenancy::{NamespacePolicy, TenancyDefaults};
use crate::engine::Command;
use crate::operator::history::{Sighting, Sightings, incarnation};

/// The policies of the namespaces, read from the watch cache.
#[derive(Clone)]
pub struct Tenancy {
    pub defaults: TenancyDefaults,
    namespaces: Option<reflector::Store<Namespace>>,
}

impl Tenancy {
    /// Only the defaults (no Namespace watch: tests, or a cluster that does not allow one).
    pub fn defaults(defaults: TenancyDefaults) -> Self {
        Tenancy {
            defaults,
            namespaces: None,
        }
    }

    pub fn with_namespaces(defaults: TenancyDefaults, cache: reflector::Store<Namespace>) -> Self {
        Tenancy {
            defaults,
            namespaces: Some(cache),
        }
    }

    /// The policy of `namespace`: from its annotations when the cache holds it, else the
    /// defaults.
    pub fn policy(&self, namespace: &str) -> NamespacePolicy {
        let object = self
            .namespaces
            .as_ref()
            .and_then(|c| c.get(&ObjectRef::new(namespace)));
        match object {
            Some(ns) => NamespacePolicy::from_annotations(ns.annotations(), self.defaults),
            None => NamespacePolicy::defaults(self.defaults),
        }
    }
}

/// Keeps `cache` current, tells the engine each namespace's cap when it changes, and reports
/// annotations that cannot be read. `config` selects the namespaces (one, by field selector,
/// when the operator watches only one). Every namespace seen, listed or gone is told to
/// `history`.
pub async fn run(
    api: Api<Namespace>,
    config: watcher::Config,
    cache: reflector::store::Writer<Namespace>,
    engine: mpsc::Sender<Command>,
    events: Events,
    defaults: TenancyDefaults,
    history: Sightings,
) {
    let stream = watcher(api, config)
        .default_backoff()
        .modify(crate::k8s::trim_metadata)
        .reflect(cache);
    futures::pin_mut!(stream);
    let mut told: HashMap<String, Option<u32>> = HashMap::new();
    let mut reported: HashSet<(String, String)> = HashSet::new();
    // the uid told to `history` per namespace, and the list being read
    let mut uids: HashMap<String, String> = HashMap::new();
    let mut listing: Vec<crate::store::NamespaceIncarnation> = Vec::new();
    let mut listed_once = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch Namespaces: tenancy annotations are not read (the defaults apply)");
                if !listed_once {
                    history.tell(Sighting::Unavailable);
                }
                continue;
            }
        };
        match &event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(ns) => listing.extend(incarnation(ns)),
            watcher::Event::InitDone => {
                listed_once = true;
                uids = listing
                    .iter()
                    .map(|n| (n.name.clone(), n.uid.clone()))
                    .collect();
                history.tell(Sighting::Listed(std::mem::take(&mut listing)));
            }
            watcher::Event::Apply(ns) => {
                if let Some(n) = incarnation(ns)
                    && uids.get(&n.name) != Some(&n.uid)
                {
                    uids.insert(n.name.clone(), n.uid.clone());
                    history.tell(Sighting::Seen(n));
                }
            }
            watcher::Event::Delete(ns) => {
                let name = ns.name_any();
                uids.remove(&name);
                history.tell(Sighting::Gone(name));
            }
        }
        let command = match event {
            watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                let name = ns.name_any();
                let policy = NamespacePolicy::from_annotations(ns.annotations(), defaults);
                for problem in &policy.problems {
                    if reported.insert((name.clone(), problem.clone())) {
                        events.spawn_publish(
                            ns.object_ref(&()),
                            true,
                            "InvalidAnnotation",
                            problem.clone(),
                        );
                    }
                }
                if told.get(&name) == Some(&policy.max_running_runs) {
                    continue;
                }
                told.insert(name.clone(), policy.max_running_runs);
                Command::NamespaceLimit {
                    namespace: name,
                    max_running_runs: policy.max_running_runs,
                }
            }
            watcher::Event::Delete(ns) => {
                let name = ns.name_any();
                told.remove(&name);
                reported.retain(|(n, _)| *n != name);
                Command::NamespaceDefault(name)
            }
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        if engine.send(command).await.is_err() {
            return;
        }
    }
}
