//! `triggeredBy` (issue 18): a DAG whose upstream DAG's run succeeds gets one run with that
//! run's logical date and data interval. The request goes through the trigger path — value
//! `after:<upstream>@<logical date>`, recorded with its run — so it is handled exactly once:
//! after a crash, a restart or on a second replica it is found recorded and not queued again.
//! Ended runs are looked up when the executor reports them; a downstream DAG taken up (at
//! start) also looks at its upstreams' newest successful runs, so a success whose downstream
//! run was not recorded before a crash is not lost.

use uuid::Uuid;

use super::Engine;
use crate::api::TriggerRequest;
use crate::gate::Gate;
use crate::schedule::DataInterval;
use crate::store::{DagKey, RunFilter, RunRow, RunState, RunStore, StoreError};

/// Upstream runs looked at when a downstream DAG is taken up.
const TAKE_UP_LOOKBACK: i64 = 20;

/// A run of this DAG an upstream's success asks for.
#[derive(Clone, Debug)]
pub(super) struct UpstreamRequest {
    pub request: TriggerRequest,
    pub interval: DataInterval,
}

impl UpstreamRequest {
    fn of(run: &RunRow) -> Self {
        UpstreamRequest {
            request: TriggerRequest {
                value: format!("after:{}@{}", run.dag.name, run.logical_date.to_rfc3339()),
                params: None,
                logical_date: Some(run.logical_date),
                malformed: None,
                removable: false,
            },
            interval: DataInterval {
                start: run.data_interval_start,
                end: run.data_interval_end,
            },
        }
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    /// The DAGs of `upstream`'s namespace that name it in `triggeredBy`.
    pub(super) fn downstreams(&self, upstream: &DagKey) -> Vec<DagKey> {
        if !self.chained {
            return Vec::new();
        }
        self.dags
            .iter()
            .filter(|(k, s)| {
                k.namespace == upstream.namespace
                    && s.info
                        .spec()
                        .triggered_by
                        .iter()
                        .any(|r| r.dag == upstream.name)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether a DAG names `key` in `triggeredBy` or `dependsOn`.
    pub(super) fn is_upstream(&self, key: &DagKey) -> bool {
        self.chained
            && self.dags.iter().any(|(k, s)| {
                k.namespace == key.namespace && s.info.spec().upstream_dags().any(|u| u == key.name)
            })
    }

    /// A DAG was upserted: the `dependsOn` upstreams it names that are not known yet are read
    /// at the next pass.
    pub(super) fn want_upstreams(&mut self, key: &DagKey, spec: &crate::api::DagSpec) {
        for up in &spec.depends_on {
            let up = DagKey::new(key.namespace.clone(), up.dag.clone());
            if !self.upstream_done.contains_key(&up) {
                self.upstream_loads.insert(up);
            }
        }
    }

    /// Reads the newest successful data interval end of each `dependsOn` upstream asked for.
    async fn load_upstream_done(&mut self) -> Result<(), StoreError> {
        while let Some(up) = self.upstream_loads.pop_first() {
            let runs = self
                .store
                .list_runs(&RunFilter {
                    namespace: Some(up.namespace.clone()),
                    dag_name: Some(up.name.clone()),
                    state: Some(RunState::Success),
                    limit: TAKE_UP_LOOKBACK,
                })
                .await;
            let runs = match runs {
                Ok(runs) => runs,
                Err(e) => {
                    self.upstream_loads.insert(up);
                    return Err(e);
                }
            };
            let done = runs.iter().map(|r| r.data_interval_end).max();
            self.upstream_done.insert(up, done);
        }
        Ok(())
    }

    /// Looks up the runs of upstream DAGs that ended, and the upstreams of downstream DAGs
    /// just taken up; successes become requests of their downstream DAGs (`triggeredBy`) and
    /// move what their dependents wait for (`dependsOn`).
    pub(super) async fn check_upstreams(&mut self) -> Result<(), StoreError> {
        self.load_upstream_done().await?;
        let ended: Vec<Uuid> = std::mem::take(&mut self.upstream_ended);
        for (i, id) in ended.iter().enumerate() {
            match self.store.run(*id).await {
                Ok(Some(run)) => self.upstream_ran(&run),
                Ok(None) => {}
                Err(e) => {
                    self.upstream_ended.extend(&ended[i..]);
                    return Err(e);
                }
            }
        }
        let taken_up: Vec<DagKey> = std::mem::take(&mut self.chain_scans);
        for (i, key) in taken_up.iter().enumerate() {
            if let Err(e) = self.scan_upstreams(key).await {
                self.chain_scans.extend(taken_up[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    async fn scan_upstreams(&mut self, key: &DagKey) -> Result<(), StoreError> {
        let Some(state) = self.dags.get(key) else {
            return Ok(());
        };
        let since = state.info.created_at();
        let upstreams: Vec<String> = state
            .info
            .spec()
            .triggered_by
            .iter()
            .map(|r| r.dag.clone())
            .collect();
        for name in upstreams {
            let runs = self
                .store
                .list_runs(&RunFilter {
                    namespace: Some(key.namespace.clone()),
                    dag_name: Some(name),
                    state: Some(RunState::Success),
                    limit: TAKE_UP_LOOKBACK,
                })
                .await?;
            for run in runs
                .iter()
                .filter(|r| since.is_none_or(|c| r.ended_at.is_some_and(|e| e >= c)))
            {
                self.request_run(key, UpstreamRequest::of(run));
            }
        }
        Ok(())
    }

    /// An upstream run ended: if it succeeded, each downstream DAG asks for its run.
    fn upstream_ran(&mut self, run: &RunRow) {
        if run.state != RunState::Success {
            return;
        }
        if let Some(done) = self.upstream_done.get_mut(&run.dag) {
            *done = (*done).max(Some(run.data_interval_end));
        }
        for key in self.downstreams(&run.dag) {
            self.request_run(&key, UpstreamRequest::of(run));
        }
    }

    fn request_run(&mut self, key: &DagKey, request: UpstreamRequest) {
        let Some(state) = self.dags.get_mut(key) else {
            return;
        };
        if state
            .upstream
            .iter()
            .any(|u| u.request.value == request.request.value)
        {
            return;
        }
        state.upstream.push(request);
        // the trigger check looks it up in the record, then queues it once
        state.unchecked = true;
    }
}
