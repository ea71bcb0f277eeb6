//! The status writer (DAGs, Pools, Backfills). Two sources feed it — the DAG controller (is the spec valid?) and
//! the engine (counts, schedule times, triggers, store health) — and it alone writes
//! `status`, whole, by server-side apply with one field manager. Changes are coalesced: a DAG
//! that changes ten times between two flushes is written once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::mpsc;

use super::FIELD_MANAGER;
use crate::api::Backfill;
use crate::api::BackfillStatus;
use crate::api::backfill::BackfillPhase as ApiPhase;
use crate::api::conditions::{Condition, READY, set_condition};
use crate::api::dag::RunSummary;
use crate::api::{DAG, DagStatus};
use crate::api::{Pool, PoolStatus};
use crate::engine::{BackfillPhase, BackfillProgress, SchedulingStatus};
use crate::executor::PoolUsage;
use crate::store::DagKey;

/// Whether the controller found the spec schedulable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    pub generation: Option<i64>,
    /// `None` when valid; otherwise (reason, message)
    pub problem: Option<(String, String)>,
    /// `status.lastHandledTrigger` as the object carries it (until the engine reports)
    pub observed_trigger: Option<String>,
}

#[derive(Debug)]
pub enum StatusUpdate {
    Validity(DagKey, Validity),
    Scheduling(DagKey, SchedulingStatus),
    StoreHealth(bool),
    /// reachability of the gate (Redis)
    GateHealth(bool),
    /// newest runs (newest first, at most 5) and the last successful logical date
    Runs(DagKey, Vec<RunSummary>, Option<DateTime<Utc>>),
    /// Pools the DAG's tasks name that do not exist (empty: none missing)
    MissingPools(DagKey, Vec<String>),
    /// the API server refuses the DAG's task Pods (the last message), or creates them again
    Launch(DagKey, Option<String>),
    /// a Pool's usage (written to the Pool's status)
    Pool(PoolUsage),
    /// a Backfill's status from the engine (key: namespace and Backfill name)
    Backfill(DagKey, BackfillProgress),
    Removed(DagKey),
}

#[derive(Default)]
struct Model {
    validity: Option<Validity>,
    /// what the engine says, once it has taken the DAG up
    scheduling: Option<SchedulingStatus>,
    conditions: Vec<Condition>,
    recent_runs: Vec<RunSummary>,
    last_successful_time: Option<DateTime<Utc>>,
    missing_pools: Vec<String>,
    launch_refused: Option<String>,
}

/// A stored run as `status.recentRuns` shows it.
pub fn summary(run: &crate::store::RunRow) -> RunSummary {
    RunSummary {
        id: run.id.to_string(),
        type_: run.run_type.as_str().to_string(),
        logical_date: run.logical_date,
        state: run.state.as_str().to_string(),
        started_at: run.started_at,
        ended_at: run.ended_at,
    }
}

/// Builds the full status of a DAG from what is known of it.
fn render(model: &mut Model, store_ok: bool, gate_ok: bool, now: DateTime<Utc>) -> DagStatus {
    let generation = model.validity.as_ref().and_then(|v| v.generation);
    let (ready, reason, message) = match model.validity.as_ref().and_then(|v| v.problem.clone()) {
        Some((reason, message)) => (false, reason, message),
        None if !model.missing_pools.is_empty() => (
            false,
            "PoolNotFound".to_string(),
            format!(
                "tasks naming {} wait: no such Pool in this namespace",
                model
                    .missing_pools
                    .iter()
                    .map(|p| format!("pool {p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        None if model.launch_refused.is_some() => (
            false,
            "FailedCreate".to_string(),
            format!(
                "the API server refuses the task Pods: {}",
                model.launch_refused.clone().unwrap_or_default()
            ),
        ),
        None if !store_ok => (
            false,
            "StoreUnavailable".to_string(),
            "PostgreSQL is unreachable: admission is paused; due runs are created once it returns"
                .to_string(),
        ),
        None if !gate_ok => (
            false,
            "GateUnavailable".to_string(),
            "the concurrency gate (Redis) is unreachable: admission is paused so no limit is \
             exceeded; it resumes by itself"
                .to_string(),
        ),
        None if model.scheduling.as_ref().is_some_and(|s| s.suspended) => (
            true,
            "Suspended".to_string(),
            "suspended: no new scheduled runs".to_string(),
        ),
        None => (
            true,
            "Scheduling".to_string(),
            match model.scheduling.as_ref().and_then(|s| s.next_schedule_time) {
                Some(t) => format!("next run at {}", t.to_rfc3339()),
                None => "no upcoming tick (manual triggers and backfills only)".to_string(),
            },
        ),
    };
    set_condition(
        &mut model.conditions,
        Condition::new(READY, ready, &reason, message, generation, now),
    );
    let observed = model
        .validity
        .as_ref()
        .and_then(|v| v.observed_trigger.clone());
    let default = SchedulingStatus::default();
    let s = model.scheduling.as_ref().unwrap_or(&default);
    DagStatus {
        observed_generation: generation,
        conditions: model.conditions.clone(),
        next_schedule_time: s.next_schedule_time,
        last_schedule_time: s.last_schedule_time,
        last_successful_time: model.last_successful_time,
        active_runs: s.active_runs,
        queued_runs: s.queued_runs,
        // the engine's value (from the record) once it has one, else what the object says
        last_handled_trigger: s.last_handled_trigger.clone().or(observed),
        recent_runs: model.recent_runs.clone(),
    }
}

/// Runs the writer until the sender side closes.
pub async fn run_writer(client: kube::Client, mut updates: mpsc::UnboundedReceiver<StatusUpdate>) {
    let mut models: HashMap<DagKey, Model> = HashMap::new();
    let mut store_ok = true;
    let mut gate_ok = true;
    let mut dirty: BTreeSet<DagKey> = BTreeSet::new();
    // Pool statuses to write, and the conditions last written per Pool
    let mut pools: BTreeMap<(String, String), PoolUsage> = BTreeMap::new();
    let mut pool_conditions: HashMap<(String, String), Vec<Condition>> = HashMap::new();
    let mut backfills: BTreeMap<DagKey, BackfillProgress> = BTreeMap::new();
    let mut backfill_conditions: HashMap<DagKey, Vec<Condition>> = HashMap::new();
    let params = Arc::new(PatchParams::apply(FIELD_MANAGER).force());
    loop {
        // wait for the first change, then gather what else arrives in a short window
        let Some(first) = updates.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let window = tokio::time::sleep(Duration::from_millis(100));
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
        for update in batch {
            match update {
                StatusUpdate::Validity(key, v) => {
                    models.entry(key.clone()).or_default().validity = Some(v);
                    dirty.insert(key);
                }
                StatusUpdate::Scheduling(key, s) => {
                    models.entry(key.clone()).or_default().scheduling = Some(s);
                    dirty.insert(key);
                }
                StatusUpdate::StoreHealth(ok) => {
                    if ok != store_ok {
                        store_ok = ok;
                        dirty.extend(models.keys().cloned());
                    }
                }
                StatusUpdate::GateHealth(ok) => {
                    if ok != gate_ok {
                        gate_ok = ok;
                        dirty.extend(models.keys().cloned());
                    }
                }
                StatusUpdate::Runs(key, recent, last_success) => {
                    let model = models.entry(key.clone()).or_default();
                    model.recent_runs = recent;
                    model.last_successful_time = last_success;
                    dirty.insert(key);
                }
                StatusUpdate::MissingPools(key, missing) => {
                    let model = models.entry(key.clone()).or_default();
                    if model.missing_pools != missing {
                        model.missing_pools = missing;
                        dirty.insert(key);
                    }
                }
                StatusUpdate::Launch(key, refused) => {
                    models.entry(key.clone()).or_default().launch_refused = refused;
                    dirty.insert(key);
                }
                StatusUpdate::Pool(usage) => {
                    pools.insert((usage.namespace.clone(), usage.name.clone()), usage);
                }
                StatusUpdate::Backfill(key, report) => {
                    backfills.insert(key, report);
                }
                StatusUpdate::Removed(key) => {
                    models.remove(&key);
                    dirty.remove(&key);
                }
            }
        }
        let now = Utc::now();
        let mut writes = Vec::new();
        for key in std::mem::take(&mut dirty) {
            if let Some(model) = models.get_mut(&key) {
                // the controller reports validity first; until then there is nothing to say
                if model.validity.is_none() {
                    continue;
                }
                writes.push((key, render(model, store_ok, gate_ok, now)));
            }
        }
        let client = &client;
        let params = &params;
        let mut failed = Vec::new();
        for chunk in writes.chunks(16) {
            let results = futures::future::join_all(chunk.iter().map(|(key, status)| async move {
                let api: Api<DAG> = Api::namespaced(client.clone(), &key.namespace);
                let patch = serde_json::json!({
                    "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
                    "kind": "DAG",
                    "status": status,
                });
                (
                    key.clone(),
                    api.patch_status(&key.name, params, &Patch::Apply(&patch))
                        .await,
                )
            }))
            .await;
            for (key, result) in results {
                match result {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        models.remove(&key);
                    }
                    Err(e) => {
                        tracing::warn!(dag = %key, error = %e, "status write failed; will retry");
                        failed.push(key);
                    }
                }
            }
        }
        let mut pools_failed = Vec::new();
        for ((ns, name), usage) in std::mem::take(&mut pools) {
            let conditions = pool_conditions
                .entry((ns.clone(), name.clone()))
                .or_default();
            let status = render_pool(&usage, conditions, now);
            let api: Api<Pool> = Api::namespaced(client.clone(), &ns);
            let patch = serde_json::json!({
                "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
                "kind": "Pool",
                "status": status,
            });
            match api.patch_status(&name, params, &Patch::Apply(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    pool_conditions.remove(&(ns, name));
                }
                Err(e) => {
                    tracing::warn!(pool = %format!("{ns}/{name}"), error = %e, "pool status write failed; will retry");
                    pools_failed.push(((ns, name), usage));
                }
            }
        }
        let mut backfills_failed = Vec::new();
        for (key, report) in std::mem::take(&mut backfills) {
            let conditions = backfill_conditions.entry(key.clone()).or_default();
            let status = render_backfill(&report, conditions, now);
            let api: Api<Backfill> = Api::namespaced(client.clone(), &key.namespace);
            let patch = serde_json::json!({
                "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
                "kind": "Backfill",
                "status": status,
            });
            match api
                .patch_status(&key.name, params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    backfill_conditions.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(backfill = %key, error = %e, "backfill status write failed; will retry");
                    backfills_failed.push((key, report));
                }
            }
        }
        for (k, r) in backfills_failed {
            backfills.entry(k).or_insert(r);
        }
        if !failed.is_empty() || !pools_failed.is_empty() {
            dirty.extend(failed);
            for (k, u) in pools_failed {
                pools.entry(k).or_insert(u);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A Backfill's status from its progress.
fn render_backfill(
    p: &BackfillProgress,
    conditions: &mut Vec<Condition>,
    now: DateTime<Utc>,
) -> BackfillStatus {
    set_condition(
        conditions,
        Condition::new(
            READY,
            p.ready,
            &p.reason,
            p.message.clone(),
            p.generation,
            now,
        ),
    );
    BackfillStatus {
        observed_generation: p.generation,
        phase: Some(match p.phase {
            BackfillPhase::Pending => ApiPhase::Pending,
            BackfillPhase::Running => ApiPhase::Running,
            BackfillPhase::Suspended => ApiPhase::Suspended,
            BackfillPhase::Succeeded => ApiPhase::Succeeded,
            BackfillPhase::Failed => ApiPhase::Failed,
            BackfillPhase::Invalid => ApiPhase::Invalid,
        }),
        total_runs: p.total,
        skipped_runs: p.skipped,
        created_runs: p.created,
        active_runs: p.active,
        succeeded_runs: p.succeeded,
        failed_runs: p.failed,
        progress: (p.phase != BackfillPhase::Invalid).then(|| p.progress()),
        planned_dates: p.planned_dates.clone(),
        started_at: p.started_at,
        completed_at: p.completed_at,
        conditions: conditions.clone(),
    }
}

/// A Pool's status from its usage.
fn render_pool(
    usage: &PoolUsage,
    conditions: &mut Vec<Condition>,
    now: DateTime<Utc>,
) -> PoolStatus {
    let open = (usage.slots - usage.used).max(0);
    let (reason, message) = if open > 0 {
        (
            "SlotsOpen",
            format!("{} of {} slots used, {open} open", usage.used, usage.slots),
        )
    } else {
        (
            "Full",
            format!(
                "{} of {} slots used; {} tasks wait for a slot",
                usage.used, usage.slots, usage.queued
            ),
        )
    };
    set_condition(
        conditions,
        Condition::new(READY, true, reason, message, usage.generation, now),
    );
    PoolStatus {
        observed_generation: usage.generation,
        used_slots: usage.used,
        queued_tasks: usage.queued,
        open_slots: open,
        conditions: conditions.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reasons() {
        let now = Utc::now();
        let mut m = Model {
            validity: Some(Validity {
                generation: Some(3),
                problem: Some(("InvalidSchedule".into(), "bad".into())),
                observed_trigger: Some("t-1".into()),
            }),
            ..Default::default()
        };
        let s = render(&mut m, true, true, now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions[0].reason, "InvalidSchedule");
        assert!(!s.conditions[0].is_true());

        // until the engine reports, the trigger the object carries is kept
        assert_eq!(s.last_handled_trigger.as_deref(), Some("t-1"));
        m.validity = Some(Validity {
            generation: Some(4),
            problem: None,
            observed_trigger: Some("t-1".into()),
        });
        assert_eq!(
            render(&mut m, false, true, now).conditions[0].reason,
            "StoreUnavailable"
        );
        m.scheduling = Some(SchedulingStatus {
            suspended: true,
            last_handled_trigger: Some("t-2".into()),
            ..Default::default()
        });
        assert_eq!(
            render(&mut m, true, false, now).conditions[0].reason,
            "GateUnavailable"
        );
        let s = render(&mut m, true, true, now);
        assert_eq!(s.conditions[0].reason, "Suspended");
        assert_eq!(
            s.last_handled_trigger.as_deref(),
            Some("t-2"),
            "the engine's value wins"
        );
        assert!(s.conditions[0].is_true());
        m.missing_pools = vec!["db".into()];
        let s = render(&mut m, true, true, now);
        assert_eq!(s.conditions[0].reason, "PoolNotFound");
        assert!(s.conditions[0].message.contains("pool \"db\""));
        m.missing_pools.clear();
        m.launch_refused = Some("spec.containers[0].image: Required value".into());
        let s = render(&mut m, true, true, now);
        assert_eq!(s.conditions[0].reason, "FailedCreate");
        assert!(!s.conditions[0].is_true());
        assert!(
            s.conditions[0].message.contains("image: Required"),
            "{}",
            s.conditions[0].message
        );
        assert!(!s.conditions[0].is_true());
    }

    #[test]
    fn pool_status() {
        let now = Utc::now();
        let mut conditions = Vec::new();
        let mut usage = PoolUsage {
            namespace: "ns".into(),
            name: "db".into(),
            generation: Some(2),
            slots: 2,
            used: 1,
            queued: 0,
        };
        let s = render_pool(&usage, &mut conditions, now);
        assert_eq!((s.used_slots, s.open_slots, s.queued_tasks), (1, 1, 0));
        assert_eq!(s.conditions[0].reason, "SlotsOpen");
        // lowered below usage: nothing negative, running tasks keep their slots
        usage.slots = 1;
        usage.used = 2;
        usage.queued = 3;
        let s = render_pool(&usage, &mut conditions, now);
        assert_eq!((s.used_slots, s.open_slots, s.queued_tasks), (2, 0, 3));
        assert_eq!(s.conditions[0].reason, "Full");
        assert_eq!(s.observed_generation, Some(2));
    }
}
