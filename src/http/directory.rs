//! What the API and the UI know of the DAGs: a small summary per DAG (schedule, zone, tasks,
//! conditions, times, counts), kept from a watch of its own. Every replica keeps one, so a
//! standby answers reads too; a summary is a few hundred bytes, where a cached DAG object is
//! kilobytes (docs/BENCHMARKS.md, memory).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};

use crate::api::DAG;
use crate::api::conditions::{READY, STALLED, find};
use crate::api::lean::{self, LeanDag};
use crate::key::DagKey;

/// A condition as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionSummary {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// A task and its upstreams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSummary {
    pub name: String,
    pub depends_on: Vec<String>,
    /// its trigger rule, when not the default `AllSuccess`
    pub trigger_rule: Option<String>,
}

/// What the API and the UI show of one DAG.
#[derive(Clone, Debug, PartialEq)]
pub struct DagSummary {
    pub key: DagKey,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub suspend: bool,
    pub tasks: Vec<TaskSummary>,
    pub ready: Option<ConditionSummary>,
    pub stalled: Option<ConditionSummary>,
    pub next_schedule_time: Option<DateTime<Utc>>,
    pub last_schedule_time: Option<DateTime<Utc>>,
    pub last_successful_time: Option<DateTime<Utc>>,
    pub active_runs: i32,
    pub queued_runs: i32,
}

/// How a DAG is doing, as the DAG list filters and sorts it (from its conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// its newest runs failed (`Ready` false, `RunsFailing`) or it is `Stalled`
    Failing,
    /// suspended by its spec
    Suspended,
    /// runs under way
    Running,
    Ok,
}

impl Health {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "failing" => Some(Health::Failing),
            "suspended" => Some(Health::Suspended),
            "running" => Some(Health::Running),
            "ok" => Some(Health::Ok),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Failing => "failing",
            Health::Suspended => "suspended",
            Health::Running => "running",
            Health::Ok => "ok",
        }
    }
}

impl DagSummary {
    /// How it is doing: failing over suspended over running.
    pub fn health(&self) -> Health {
        let failing = self.stalled.as_ref().is_some_and(|c| c.status)
            || self
                .ready
                .as_ref()
                .is_some_and(|c| !c.status && c.reason == "RunsFailing");
        if failing {
            Health::Failing
        } else if self.suspend {
            Health::Suspended
        } else if self.active_runs > 0 {
            Health::Running
        } else {
            Health::Ok
        }
    }

    /// The summary of a DAG object (`None` without a namespace or name).
    pub fn of(dag: &DAG) -> Option<Self> {
        let key = DagKey::new(dag.metadata.namespace.clone()?, dag.metadata.name.clone()?);
        let status = dag.status.clone().unwrap_or_default();
        let condition = |t: &str| {
            find(&status.conditions, t).map(|c| ConditionSummary {
                status: c.is_true(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
        };
        Some(DagSummary {
            key,
            // several schedules read as one line
            schedule: Some(dag.spec.schedule_exprs().join(" | ")).filter(|s| !s.is_empty()),
            timezone: dag.spec.timezone.clone(),
            suspend: dag.spec.suspend,
            tasks: dag
                .spec
                .tasks
                .iter()
                .map(|t| TaskSummary {
                    name: t.name.clone(),
                    depends_on: t.depends_on.clone(),
                    trigger_rule: (t.trigger_rule != crate::api::dag::TriggerRule::default())
                        .then(|| format!("{:?}", t.trigger_rule)),
                })
                .collect(),
            ready: condition(READY),
            stalled: condition(STALLED),
            next_schedule_time: status.next_schedule_time,
            last_schedule_time: status.last_schedule_time,
            last_successful_time: status.last_successful_time,
            active_runs: status.active_runs,
            queued_runs: status.queued_runs,
        })
    }
}

/// The summaries of the watched DAGs, by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct DagDirectory {
    dags: Arc<RwLock<BTreeMap<DagKey, Arc<DagSummary>>>>,
}

impl DagDirectory {
    /// A directory kept by a watch of the DAGs of `namespace` (or all).
    pub fn watch(client: kube::Client, namespace: Option<&str>) -> Self {
        let directory = DagDirectory::default();
        let fed = directory.clone();
        let stream = watcher(
            crate::k8s::api::<LeanDag>(client, namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .map_ok(lean::into_dags);
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            let mut relisting: Option<BTreeMap<DagKey, Arc<DagSummary>>> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(e) => fed.observe(e, &mut relisting),
                    Err(e) => tracing::debug!(error = %e, "API DAG watch error (retrying)"),
                }
            }
        });
        directory
    }

    /// Takes one watch event in; a relist is gathered aside and replaces the whole at its end.
    pub fn observe(
        &self,
        event: watcher::Event<DAG>,
        relisting: &mut Option<BTreeMap<DagKey, Arc<DagSummary>>>,
    ) {
        let mut dags = self.dags.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Init => *relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(dag) => {
                if let (Some(list), Some(s)) = (relisting.as_mut(), DagSummary::of(&dag)) {
                    list.insert(s.key.clone(), Arc::new(s));
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = relisting.take() {
                    *dags = list;
                }
            }
            watcher::Event::Apply(dag) => {
                if let Some(s) = DagSummary::of(&dag) {
                    dags.insert(s.key.clone(), Arc::new(s));
                }
            }
            watcher::Event::Delete(dag) => {
                if let Some(s) = DagSummary::of(&dag) {
                    dags.remove(&s.key);
                }
            }
        }
    }

    /// Every DAG, by namespace and name.
    pub fn all(&self) -> Vec<Arc<DagSummary>> {
        let dags = self.dags.read().unwrap_or_else(|p| p.into_inner());
        dags.values().cloned().collect()
    }

    /// The DAGs of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<DagSummary>> {
        let dags = self.dags.read().unwrap_or_else(|p| p.into_inner());
        dags.values()
            .filter(|d| d.key.namespace == namespace)
            .cloned()
            .collect()
    }

    pub fn get(&self, key: &DagKey) -> Option<Arc<DagSummary>> {
        let dags = self.dags.read().unwrap_or_else(|p| p.into_inner());
        dags.get(key).cloned()
    }

    /// The namespaces that have DAGs, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let dags = self.dags.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = dags.keys().map(|k| k.namespace.clone()).collect();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(ns: &str, name: &str) -> DAG {
        let spec = serde_yaml::from_str(
            "schedule: '0 2 * * *'\ntasks:\n- name: a\n  container: {image: busybox}\n- name: b\n  dependsOn: [a]\n  container: {image: busybox}\n",
        )
        .expect("spec");
        let mut d = DAG::new(name, spec);
        d.metadata.namespace = Some(ns.into());
        d
    }

    #[test]
    fn a_relist_replaces_what_was_known() {
        let dir = DagDirectory::default();
        let mut relisting = None;
        dir.observe(watcher::Event::Init, &mut relisting);
        dir.observe(watcher::Event::InitApply(dag("a", "x")), &mut relisting);
        dir.observe(watcher::Event::InitApply(dag("b", "y")), &mut relisting);
        assert!(dir.all().is_empty(), "not before the list is done");
        dir.observe(watcher::Event::InitDone, &mut relisting);
        assert_eq!(dir.namespaces(), ["a", "b"]);
        let x = dir.get(&DagKey::new("a", "x")).expect("x");
        assert_eq!(x.tasks[1].depends_on, ["a"]);
        dir.observe(watcher::Event::Delete(dag("a", "x")), &mut relisting);
        dir.observe(watcher::Event::Apply(dag("a", "z")), &mut relisting);
        // relisted without y: y is gone
        dir.observe(watcher::Event::Init, &mut relisting);
        dir.observe(watcher::Event::InitApply(dag("a", "z")), &mut relisting);
        dir.observe(watcher::Event::InitDone, &mut relisting);
        let names: Vec<String> = dir.all().iter().map(|d| d.key.to_string()).collect();
        assert_eq!(names, ["a/z"]);
        assert_eq!(dir.in_namespace("a").len(), 1);
    }
}
