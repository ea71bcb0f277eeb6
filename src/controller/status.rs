//! The status writer (DAGs, Pools, Backfills): the one place that writes `status`, whole, by
//! server-side apply with one field manager ([`apply_status`], one function for every kind,
//! with one retry and backoff). What each kind's status says is decided in its own file
//! (`dag_status.rs`, `pool.rs`, `backfill.rs`); here updates are coalesced — a DAG that changes
//! ten times between two flushes is written once — and written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::FIELD_MANAGER;
use super::backfill;
use super::dag_status::{DagModel, render, summary};
pub use super::dag_status::{Problem, Validity};
use super::pool::PoolStatuses;
use crate::api::conditions::Condition;
use crate::api::{Backfill, BackfillStatus, DAG, DagStatus, Pool, PoolStatus};
use crate::engine::{BackfillProgress, SchedulingStatus};
use crate::executor::output::{Admitting, PoolUsage};
use crate::key::{BackfillKey, DagKey, ObjectKey, PoolKey};
use crate::store::RecentRuns;
use crate::telemetry::Metrics;

/// What the writer is told.
#[derive(Debug)]
pub enum StatusUpdate {
    Validity(DagKey, Validity),
    Scheduling(DagKey, SchedulingStatus),
    StoreHealth(bool),
    /// reachability of the gate (Redis)
    GateHealth(bool),
    /// a DAG's newest runs and when its newest success ended
    Runs(RecentRuns),
    /// Pools the DAG's tasks name that do not exist (empty: none missing)
    MissingPools(DagKey, Vec<String>),
    /// upstream DAGs it names (`dependsOn`, `triggeredBy`) that do not exist: the
    /// `UpstreamNotFound` condition (`None`: all exist)
    MissingUpstreams(DagKey, Option<Problem>),
    /// the API server refuses the DAG's task Pods (the last message), or creates them again
    Launch(DagKey, Option<String>),
    /// a Pool's usage (written to the Pool's status)
    Pool(PoolUsage),
    /// a Pool was deleted
    PoolGone(PoolKey),
    /// a Backfill's progress from the engine
    Backfill(BackfillKey, BackfillProgress),
    Removed(DagKey),
}

/// How a status write ended.
#[derive(Debug)]
pub enum Applied {
    Written,
    /// the object does not exist (any more)
    Gone,
}

/// Writes `status` of the namespaced object `key` of kind `K` by server-side apply, forced,
/// as the operator's field manager.
pub async fn apply_status<K>(
    client: &kube::Client,
    key: &ObjectKey,
    status: &impl Serialize,
) -> Result<Applied, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&key.name, &params, &Patch::Apply(&patch))
        .await
    {
        Ok(obj) => {
            tracing::trace!(object = %key, version = ?obj.resource_version(), "status written");
            Ok(Applied::Written)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Applied::Gone),
        Err(e) => Err(e),
    }
}

/// Status writes waiting, of one kind, newest per object (typed: a status struct is a
/// fraction of its JSON tree in memory, and 10,000 DAGs are written at start).
struct Outbox<Key, S> {
    pending: BTreeMap<Key, S>,
}

/// One write's end.
struct Written<Key> {
    key: Key,
    secs: f64,
    outcome: Result<Applied, kube::Error>,
}

/// Writes in flight at once.
const WRITES_IN_FLIGHT: usize = 16;

impl<Key: Ord + Clone + Deref<Target = ObjectKey>, S: Serialize + Sync> Outbox<Key, S> {
    fn new() -> Self {
        Outbox {
            pending: BTreeMap::new(),
        }
    }

    fn put(&mut self, key: Key, status: S) {
        self.pending.insert(key, status);
    }

    /// Writes everything pending; failed writes stay for the next flush.
    async fn flush<K>(&mut self, client: &kube::Client) -> Vec<Written<Key>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let pending: Vec<(Key, S)> = std::mem::take(&mut self.pending).into_iter().collect();
        let mut done = Vec::with_capacity(pending.len());
        for chunk in pending.chunks(WRITES_IN_FLIGHT) {
            let writes = chunk.iter().map(|(key, status)| async move {
                let started = Instant::now();
                let outcome = apply_status::<K>(client, key, status).await;
                Written {
                    key: key.clone(),
                    secs: started.elapsed().as_secs_f64(),
                    outcome,
                }
            });
            done.extend(futures::future::join_all(writes).await);
        }
        let failed: BTreeSet<&Key> = done
            .iter()
            .filter(|w| w.outcome.is_err())
            .map(|w| &w.key)
            .collect();
        let retry: Vec<(Key, S)> = pending
            .into_iter()
            .filter(|(key, _)| failed.contains(key))
            .collect();
        for (key, status) in retry {
            // a newer status that arrived meanwhile wins
            self.pending.entry(key).or_insert(status);
        }
        done
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Waits after failed writes: doubling from the first to the last, back to the first once
/// every write succeeds.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_LAST: Duration = Duration::from_secs(10);

/// Updates arriving within this window of the first are written together.
const COALESCE: Duration = Duration::from_millis(100);

struct Writer {
    client: kube::Client,
    /// boxed: a `DagModel` is large, and a map's spare capacity would hold it inline
    dags: HashMap<DagKey, Box<DagModel>>,
    store_ok: bool,
    gate_ok: bool,
    dirty: BTreeSet<DagKey>,
    pools: PoolStatuses,
    backfill_conditions: HashMap<BackfillKey, Vec<Condition>>,
    dag_out: Outbox<DagKey, DagStatus>,
    pool_out: Outbox<PoolKey, PoolStatus>,
    backfill_out: Outbox<BackfillKey, BackfillStatus>,
    backoff: Duration,
}

/// Runs the writer until the sender side closes.
pub async fn run_writer(
    client: kube::Client,
    mut updates: mpsc::UnboundedReceiver<StatusUpdate>,
    metrics: Option<Arc<Metrics>>,
    admitting: Admitting,
) {
    let mut w = Writer {
        client,
        dags: HashMap::new(),
        store_ok: true,
        gate_ok: true,
        dirty: BTreeSet::new(),
        pools: PoolStatuses::new(metrics),
        backfill_conditions: HashMap::new(),
        dag_out: Outbox::new(),
        pool_out: Outbox::new(),
        backfill_out: Outbox::new(),
        backoff: BACKOFF_FIRST,
    };
    loop {
        // 1. what changed (after failed writes: at the latest when the backoff is over)
        let retry = w.has_pending().then_some(w.backoff);
        let Some(mut batch) = gather(&mut updates, retry).await else {
            return;
        };
        // the executor's Pod creates go first; what arrives meanwhile joins this batch
        admitting.give_way(&mut updates, &mut batch).await;
        // 2. into the models, and the statuses they give
        for update in batch {
            w.take(update);
        }
        w.render_dirty();
        // 3. written; failures stay and back off
        let failed = w.flush().await;
        w.backoff = if failed {
            (w.backoff * 2).min(BACKOFF_LAST)
        } else {
            BACKOFF_FIRST
        };
    }
}

/// The next updates: the first (or none by `retry`), then what else comes within
/// [`COALESCE`]. `None` when the senders are gone.
async fn gather(
    updates: &mut mpsc::UnboundedReceiver<StatusUpdate>,
    retry: Option<Duration>,
) -> Option<Vec<StatusUpdate>> {
    let mut batch = Vec::new();
    let first = match retry {
        Some(wait) => match tokio::time::timeout(wait, updates.recv()).await {
            Ok(u) => Some(u?),
            Err(_) => None,
        },
        None => Some(updates.recv().await?),
    };
    if let Some(first) = first {
        batch.push(first);
        let window = tokio::time::sleep(COALESCE);
        tokio::pin!(window);
        loop {
            tokio::select! {
                u = updates.recv() => match u {
                    Some(u) => batch.push(u),
                    None => break,
                },
                _ = &mut window => break,
            }
        }
    }
    Some(batch)
}

impl Writer {
    fn has_pending(&self) -> bool {
        !(self.dag_out.is_empty() && self.pool_out.is_empty() && self.backfill_out.is_empty())
    }

    fn take(&mut self, update: StatusUpdate) {
        let now = Utc::now();
        match update {
            StatusUpdate::Validity(key, v) => {
                self.dags.entry(key.clone()).or_default().validity = Some(v);
                self.dirty.insert(key);
            }
            StatusUpdate::Scheduling(key, s) => {
                self.dags.entry(key.clone()).or_default().scheduling = Some(s);
                self.dirty.insert(key);
            }
            StatusUpdate::StoreHealth(ok) => {
                if ok != self.store_ok {
                    self.store_ok = ok;
                    self.dirty.extend(self.dags.keys().cloned());
                }
            }
            StatusUpdate::GateHealth(ok) => {
                if ok != self.gate_ok {
                    self.gate_ok = ok;
                    self.dirty.extend(self.dags.keys().cloned());
                }
            }
            StatusUpdate::Runs(recent) => {
                let model = self.dags.entry(recent.dag.clone()).or_default();
                model.recent_runs = recent.runs.iter().map(summary).collect();
                model.last_successful_time = recent.last_success;
                self.dirty.insert(recent.dag);
            }
            StatusUpdate::MissingPools(key, missing) => {
                let model = self.dags.entry(key.clone()).or_default();
                if model.missing_pools != missing {
                    model.missing_pools = missing;
                    self.dirty.insert(key);
                }
            }
            StatusUpdate::MissingUpstreams(key, problem) => {
                let model = self.dags.entry(key.clone()).or_default();
                if model.missing_upstreams != problem {
                    model.missing_upstreams = problem;
                    self.dirty.insert(key);
                }
            }
            StatusUpdate::Launch(key, refused) => {
                self.dags.entry(key.clone()).or_default().launch_refused = refused;
                self.dirty.insert(key);
            }
            StatusUpdate::Pool(usage) => {
                let status = self.pools.status(&usage, now);
                self.pool_out.put(usage.key, status);
            }
            StatusUpdate::PoolGone(key) => {
                self.pools.gone(&key);
                self.pool_out.pending.remove(&key);
            }
            StatusUpdate::Backfill(key, progress) => {
                let conditions = self.backfill_conditions.entry(key.clone()).or_default();
                let status = backfill::render_status(&progress, conditions, now);
                self.backfill_out.put(key, status);
            }
            StatusUpdate::Removed(key) => {
                self.pools.forget_dag(&key);
                self.dags.remove(&key);
                self.dirty.remove(&key);
                self.dag_out.pending.remove(&key);
            }
        }
    }

    /// The statuses of the DAGs that changed, into the outbox.
    fn render_dirty(&mut self) {
        let now = Utc::now();
        for key in std::mem::take(&mut self.dirty) {
            let Some(model) = self.dags.get_mut(&key) else {
                continue;
            };
            // the controller reports validity first; until then there is nothing to say
            if model.validity.is_none() {
                continue;
            }
            let status = render(model, self.store_ok, self.gate_ok, now);
            self.dag_out.put(key, status);
        }
    }

    /// Writes every pending status; whether any write failed.
    async fn flush(&mut self) -> bool {
        let mut failed = false;
        for w in self.dag_out.flush::<DAG>(&self.client).await {
            match w.outcome {
                Ok(Applied::Written) => {}
                Ok(Applied::Gone) => {
                    self.dags.remove(&w.key);
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(dag = %w.key, error = %e, "status write failed; will retry");
                }
            }
        }
        for w in self.pool_out.flush::<Pool>(&self.client).await {
            let error = w.outcome.as_ref().err().map(|_| "kube");
            self.pools.written(w.secs, error);
            match w.outcome {
                Ok(Applied::Written) => {}
                Ok(Applied::Gone) => self.pools.gone(&w.key),
                Err(e) => {
                    failed = true;
                    tracing::warn!(pool = %w.key, error = %e, "pool status write failed; will retry");
                }
            }
        }
        for w in self.backfill_out.flush::<Backfill>(&self.client).await {
            match w.outcome {
                Ok(Applied::Written) => {}
                Ok(Applied::Gone) => {
                    self.backfill_conditions.remove(&w.key);
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(backfill = %w.key, error = %e, "backfill status write failed; will retry");
                }
            }
        }
        failed
    }
}
