//! Admission (SPEC §3.4, §4): overlap policies and starting deadlines decide what the queue may
//! admit, the queue decides the order (class, priority, age; a DAG's or a Backfill's limit
//! never blocks another's runs), the gate has the last word on the limits (shared by
//! replicas), and one transaction records everything the pass decided — the runs with their
//! spec version, trigger values, Backfill dates, schedule positions.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::dags::{ActiveRun, DagState, SpecVersion, holder, holds};
use super::{Engine, EngineTelemetry, Output, micros};
use crate::api::dag::ConcurrencyPolicy;
use crate::executor::{AdmittedRun, CancelledRun};
use crate::gate::{Claim, Gate, GateError, GateScope, Grant, Slot, key as gate_key};
use crate::queue::{Entry, RunClass};
use crate::schedule::{DataInterval, data_interval};
use crate::store::{
    Admission, BackfillKey, BackfillRef, BackfillSkip, DagKey, FailedRun, NewRun, NewTask, Rerun,
    RunRow, RunStore, RunType, SpecRow, StoreError,
};

/// What a queued entry is limited by, besides `--max-concurrent-runs`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum LimitKey {
    /// a DAG's `maxActiveRuns`
    Dag(DagKey),
    /// a Backfill's `concurrency` (namespace, Backfill name)
    Backfill(BackfillKey),
    /// the namespace's cap on running runs (tenancy), if it has one
    Namespace(String),
}

/// A run waiting in the queue.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub dag: DagKey,
    pub logical_date: DateTime<Utc>,
    pub run_type: RunType,
    pub params: serde_json::Value,
    pub enqueued_ms: i64,
    /// the trigger value that asked for it
    pub trigger: Option<String>,
    /// the Backfill that planned it (its name and object uid)
    pub backfill: Option<String>,
    pub backfill_uid: Option<String>,
    /// an existing run to re-run in place (Backfill reprocess)
    pub rerun: Option<Uuid>,
    /// the data interval it takes over (a `triggeredBy` run: its upstream run's)
    pub interval: Option<DataInterval>,
}

impl Pending {
    pub fn scheduled(
        dag: DagKey,
        tick: DateTime<Utc>,
        params: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Self {
        Pending {
            dag,
            logical_date: tick,
            run_type: RunType::Scheduled,
            params,
            // a tick waits from its instant, so aging counts a late run's wait
            enqueued_ms: tick.timestamp_millis().min(now.timestamp_millis()),
            trigger: None,
            backfill: None,
            backfill_uid: None,
            rerun: None,
            interval: None,
        }
    }

    pub fn manual(
        dag: DagKey,
        date: DateTime<Utc>,
        params: serde_json::Value,
        trigger: String,
        now: DateTime<Utc>,
    ) -> Self {
        Pending {
            dag,
            logical_date: date,
            run_type: RunType::Manual,
            params,
            enqueued_ms: now.timestamp_millis(),
            trigger: Some(trigger),
            backfill: None,
            backfill_uid: None,
            rerun: None,
            interval: None,
        }
    }

    fn holder(&self) -> String {
        holder(&self.dag, self.logical_date)
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    pub(super) fn enqueue(&mut self, pending: Pending, class: RunClass, priority: i32) {
        let key = pending.dag.clone();
        let scheduled = (pending.run_type == RunType::Scheduled).then_some(pending.logical_date);
        let enqueued = pending.enqueued_ms;
        let date = pending.logical_date.timestamp();
        let mut keys = vec![
            LimitKey::Namespace(key.namespace.clone()),
            LimitKey::Dag(key.clone()),
        ];
        if let Some(bf) = &pending.backfill {
            keys.push(LimitKey::Backfill(key.backfill(bf)));
            self.backfill_enqueued(&key, bf);
        }
        self.queue.push(
            Entry {
                payload: pending,
                class,
                priority,
                logical_date: date,
                keys,
            },
            enqueued,
        );
        if let Some(state) = self.dags.get_mut(&key) {
            state.queued += 1;
            if let Some(tick) = scheduled {
                state.waiting.insert(tick);
            }
        }
        self.dirty.insert(key);
    }

    /// An entry left the queue (admitted, dropped): the counts that follow it.
    pub(super) fn dequeued(&mut self, p: &Pending) {
        if let Some(state) = self.dags.get_mut(&p.dag) {
            state.queued = state.queued.saturating_sub(1);
            if p.run_type == RunType::Scheduled {
                state.waiting.remove(&p.logical_date);
            }
            if let Some(t) = &p.trigger {
                // dropped (DAG invalid or deleted): asked again when the DAG comes back
                state.in_flight.remove(t);
                state.unchecked = true;
            }
        }
        if let Some(bf) = &p.backfill {
            self.backfill_dequeued(&p.dag, bf);
        }
        self.dirty.insert(p.dag.clone());
    }

    /// Puts a refused or unrecorded entry back, keeping its age.
    fn requeue(&mut self, p: Pending) {
        if let Some(bf) = &p.backfill {
            if !self.backfills.contains_key(&p.dag.backfill(bf)) {
                return; // its Backfill is gone
            }
        }
        let Some(priority) = self.dags.get(&p.dag).map(|s| s.info.priority) else {
            return;
        };
        if let (Some(t), Some(state)) = (&p.trigger, self.dags.get_mut(&p.dag)) {
            state.in_flight.insert(t.clone());
        }
        let class = RunClass::from(p.run_type);
        self.enqueue(p, class, priority);
    }

    /// Applies Forbid and Replace before a pass: Forbid drops scheduled ticks while a run is
    /// active; Replace cancels the active runs when a newer scheduled tick waits. Skipped
    /// ticks are decided: the position moves past them.
    async fn apply_overlap_policies(&mut self) -> Result<(), StoreError> {
        let mut forbid = Vec::new();
        let mut replace = Vec::new();
        for (key, state) in &self.dags {
            if state.queued == 0 {
                continue;
            }
            match state.info.spec().concurrency_policy {
                ConcurrencyPolicy::Forbid if !state.active.is_empty() => forbid.push(key.clone()),
                ConcurrencyPolicy::Replace => replace.push(key.clone()),
                _ => {}
            }
        }
        for key in forbid {
            for p in self.drop_queued(&key, |p| p.run_type == RunType::Scheduled) {
                self.skip_tick(
                    &key,
                    p.logical_date,
                    false,
                    "concurrencyPolicy Forbid and a run is active",
                );
            }
        }
        for key in replace {
            let mut waiting = self.drop_queued(&key, |p| p.run_type == RunType::Scheduled);
            waiting.sort_by_key(|p| p.logical_date);
            let Some(newest) = waiting.pop() else {
                continue;
            };
            for older in waiting {
                self.skip_tick(
                    &key,
                    older.logical_date,
                    false,
                    "concurrencyPolicy Replace keeps only the newest tick",
                );
            }
            let active: Vec<ActiveRun> = self
                .dags
                .get(&key)
                .map(|s| s.active.clone())
                .unwrap_or_default();
            if !active.is_empty() {
                let ids: Vec<Uuid> = active.iter().map(|run| run.id).collect();
                if let Err(e) = self.store.cancel_runs(&ids).await {
                    // not cancelled: the newest tick waits again, the next pass retries
                    let priority = self.dags.get(&key).map(|s| s.info.priority);
                    self.enqueue(newest, RunClass::Scheduled, priority.unwrap_or_default());
                    return Err(e);
                }
                self.runs_ended(&ids);
                self.event(
                    &key,
                    false,
                    "RunReplaced",
                    format!(
                        "cancelled {} active run(s) for tick {}",
                        ids.len(),
                        newest.logical_date.to_rfc3339()
                    ),
                );
                self.emit(Output::RunsCancelled(
                    ids.into_iter()
                        .map(|run| CancelledRun {
                            dag: key.clone(),
                            run,
                        })
                        .collect(),
                ));
            }
            let priority = self
                .dags
                .get(&key)
                .map(|s| s.info.priority)
                .unwrap_or_default();
            self.enqueue(newest, RunClass::Scheduled, priority);
        }
        Ok(())
    }

    /// A scheduled tick is skipped: an event, and its position is decided.
    pub(super) fn skip_tick(
        &mut self,
        key: &DagKey,
        tick: DateTime<Utc>,
        warning: bool,
        why: &str,
    ) {
        self.event(
            key,
            warning,
            "RunSkipped",
            format!("tick {} skipped: {why}", tick.to_rfc3339()),
        );
        self.tick_decided(key, tick);
    }

    /// Takes what may run from the queue, claims its slots, and records the pass.
    pub(super) async fn admit(&mut self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.apply_overlap_policies().await?;
        let batch = self.pop_batch(now);
        // the gate has the last word (other replicas share it): a run takes a slot of the
        // global limit and one of its DAG's (and its Backfill's), or waits
        let (batch, refused, gate_error) = self.acquire_slots(batch).await;
        for p in refused {
            self.requeue(p);
        }
        match gate_error {
            Some(e) => {
                if self.gate_ok {
                    tracing::warn!(error = %e, "gate unavailable: admission paused");
                }
                self.set_gate_ok(false);
            }
            None => self.set_gate_ok(true),
        }
        self.record(now, batch).await
    }

    /// Pops what the in-process limits let start (global, each DAG's, each Backfill's),
    /// skipping ticks past their starting deadline and Forbid ticks while a run is active.
    fn pop_batch(&mut self, now: DateTime<Utc>) -> Vec<Pending> {
        self.queue.begin_pass();
        let global = self.cfg.max_concurrent_runs as usize;
        let mut batch: Vec<Pending> = Vec::new();
        let mut in_batch: HashMap<DagKey, usize> = HashMap::new();
        let mut bf_in_batch: HashMap<BackfillKey, usize> = HashMap::new();
        // running runs per namespace, counted only when some namespace is capped
        let mut ns_running = self.running_by_namespace();
        // runs waiting for their dependsOn upstreams: back into the queue after the pass
        let mut waiting: Vec<Pending> = Vec::new();
        while self.active_total + batch.len() < global {
            let dags = &self.dags;
            let backfills = &self.backfills;
            let (ns_limits, ns_default) = (&self.namespace_limits, self.cfg.max_runs_per_namespace);
            let popped = self.queue.pop(now.timestamp_millis(), |k| match k {
                LimitKey::Dag(key) => dags.get(key).is_none_or(|s| {
                    s.active.len() + in_batch.get(key).copied().unwrap_or(0) >= s.max_active()
                }),
                LimitKey::Backfill(key) => backfills
                    .get(key)
                    .is_none_or(|b| b.is_full(bf_in_batch.get(key).copied().unwrap_or(0))),
                LimitKey::Namespace(ns) => {
                    namespace_limit(ns_limits, ns_default, ns).is_some_and(|limit| {
                        ns_running.get(ns.as_str()).copied().unwrap_or(0) >= limit as usize
                    })
                }
            });
            let Some((_, entry)) = popped else {
                break;
            };
            let p = entry.payload;
            self.dequeued(&p);
            if let Some(bf) = &p.backfill {
                *bf_in_batch.entry(p.dag.backfill(bf)).or_default() += 1;
            }
            let Some(state) = self.dags.get(&p.dag) else {
                continue;
            };
            if p.run_type == RunType::Scheduled {
                if let Some(deadline) = state.info.spec().starting_deadline_seconds {
                    // counted from the run's start: its tick plus its jitter
                    let late = (now - state.release(p.logical_date)).num_seconds();
                    if late > deadline {
                        let why = format!(
                            "not admitted within startingDeadlineSeconds ({deadline}s; {late}s late)"
                        );
                        self.skip_tick(&p.dag.clone(), p.logical_date, true, &why);
                        continue;
                    }
                }
                let running = state.active.len() + in_batch.get(&p.dag).copied().unwrap_or(0);
                if state.info.spec().concurrency_policy == ConcurrencyPolicy::Forbid && running > 0
                {
                    self.skip_tick(
                        &p.dag.clone(),
                        p.logical_date,
                        false,
                        "concurrencyPolicy Forbid and a run is active",
                    );
                    continue;
                }
            }
            match self.dependency_wait(&p, now) {
                DependencyWait::Met => {}
                DependencyWait::Waiting => {
                    waiting.push(p);
                    continue;
                }
                DependencyWait::TimedOut(message) => {
                    if let (Some(t), Some(state)) = (&p.trigger, self.dags.get_mut(&p.dag)) {
                        // recorded with its failed run below
                        state.in_flight.insert(t.clone());
                    }
                    self.dependency_failed.push((p, message));
                    continue;
                }
            }
            if let (Some(t), Some(state)) = (&p.trigger, self.dags.get_mut(&p.dag)) {
                // admitted now: recorded with its run below
                state.in_flight.insert(t.clone());
            }
            *in_batch.entry(p.dag.clone()).or_default() += 1;
            *ns_running.entry(p.dag.namespace.clone()).or_default() += 1;
            batch.push(p);
        }
        for p in waiting {
            self.requeue(p);
        }
        batch
    }

    /// Claims a global, a per-DAG and (for a Backfill's run) a per-Backfill slot for each run,
    /// all or none per run, in one round trip; returns (admitted, refused, error). After a
    /// gate error nothing is admitted: fail closed.
    async fn acquire_slots(
        &mut self,
        batch: Vec<Pending>,
    ) -> (Vec<Pending>, Vec<Pending>, Option<GateError>) {
        if batch.is_empty() {
            return (batch, Vec::new(), None);
        }
        let global = self.cfg.max_concurrent_runs;
        let claims: Vec<Claim> = batch
            .iter()
            .map(|p| {
                let dag_limit = self.dags.get(&p.dag).map_or(1, |s| s.max_active() as u32);
                let slots = holds(&p.dag, p.backfill.as_deref())
                    .into_iter()
                    .map(|h| {
                        let limit = match run_scope(&h.key) {
                            GateScope::GlobalRuns => global,
                            GateScope::NamespaceRuns => {
                                self.namespace_limit(&p.dag.namespace).unwrap_or(u32::MAX)
                            }
                            GateScope::DagRuns => dag_limit,
                            _ => self
                                .backfill_limit(&p.dag, p.backfill.as_deref().unwrap_or_default()),
                        };
                        Slot::new(h.key, h.weight, limit)
                    })
                    .collect();
                Claim {
                    holder: p.holder(),
                    slots,
                }
            })
            .collect();
        let grants = match self.gate.acquire_all(&claims).await {
            Ok(grants) => grants,
            Err(e) => {
                // granted or not, nobody knows: what is not recorded by then is let go
                self.ledger.unanswered(&claims);
                self.gate_outcome(GateScope::GlobalRuns, false);
                return (Vec::new(), batch, Some(e));
            }
        };
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for ((p, grant), claim) in batch.into_iter().zip(grants).zip(&claims) {
            match grant {
                Grant::Granted => {
                    self.ledger
                        .granted(&p.holder(), holds(&p.dag, p.backfill.as_deref()));
                    admitted.push(p);
                }
                Grant::Refused(i) => {
                    let scope = claim
                        .slots
                        .get(i)
                        .map_or(GateScope::GlobalRuns, |s| run_scope(&s.key));
                    self.gate_outcome(scope, true);
                    refused.push(p);
                }
            }
        }
        (admitted, refused, None)
    }

    /// Records the pass — the admitted runs and everything else decided (refused triggers,
    /// skipped ticks and dates, positions) — in one transaction, then books what the store
    /// created. On a store error nothing was recorded: slots go back and entries go back to
    /// the queue, keeping their age; the other decisions wait for the next pass.
    async fn record(
        &mut self,
        now: DateTime<Utc>,
        batch: Vec<Pending>,
    ) -> Result<usize, StoreError> {
        let admission = self.admission(&batch);
        if admission.is_empty() {
            return Ok(0);
        }
        match self.store.admit(&admission).await {
            Ok(admitted) => {
                self.positions.clear();
                self.refused.clear();
                // the skips just recorded (those decided below wait for the next admission)
                for skip in std::mem::take(&mut self.skips) {
                    let dag = BackfillKey::new(&skip.backfill.namespace, &skip.backfill.name);
                    self.backfill_progressed(&dag);
                }
                // each failed run created, by its date and the Backfill that asked for it
                let failed: std::collections::HashSet<(DagKey, DateTime<Utc>, Option<&str>)> =
                    admitted
                        .failed
                        .iter()
                        .map(|r| (r.dag.clone(), r.logical_date, r.backfill_name.as_deref()))
                        .collect();
                for (p, message) in std::mem::take(&mut self.dependency_failed) {
                    if p.run_type == RunType::Scheduled
                        && let Some(state) = self.dags.get_mut(&p.dag)
                    {
                        state.decide(p.logical_date);
                    }
                    if let Some(bf) = &p.backfill {
                        let mine = (p.dag.clone(), micros(p.logical_date), Some(bf.as_str()));
                        if failed.contains(&mine) {
                            self.backfill_progressed(&p.dag.backfill(bf));
                        } else {
                            self.skip_taken_date(&p);
                            continue;
                        }
                    }
                    self.event(
                        &p.dag,
                        true,
                        "DependencyTimeout",
                        format!(
                            "run for {} recorded failed without starting: {message}",
                            p.logical_date.to_rfc3339()
                        ),
                    );
                }
                // the scheduled ticks admitted are decided (their runs may exist already)
                for p in batch.iter().filter(|p| p.run_type == RunType::Scheduled) {
                    if let Some(state) = self.dags.get_mut(&p.dag) {
                        state.decide(p.logical_date);
                    }
                }
                self.mark_specs_saved(&admission.specs);
                let dates: HashMap<Uuid, DateTime<Utc>> = admitted
                    .runs
                    .iter()
                    .chain(&admitted.failed)
                    .map(|r| (r.id, r.logical_date))
                    .collect();
                self.triggers_recorded(admitted.triggers, &dates);
                Ok(self.book(now, batch, admitted.runs))
            }
            Err(e) => {
                // nothing recorded: the slots are not given back (a replica may hold the same
                // runs' slots under the same names), they lapse unless someone renews them
                for p in batch {
                    self.ledger.forget(&p.holder());
                    self.requeue(p);
                }
                Err(e)
            }
        }
    }

    /// Everything this pass writes.
    fn admission(&mut self, batch: &[Pending]) -> Admission {
        let specs = self.spec_versions(batch);
        let runs: Vec<NewRun> = batch
            .iter()
            .filter(|p| p.rerun.is_none())
            .filter_map(|p| self.dags.get(&p.dag).map(|s| new_run(s, p)))
            .collect();
        let reruns: Vec<Rerun> = batch
            .iter()
            .filter_map(|p| {
                let id = p.rerun?;
                let run = new_run(self.dags.get(&p.dag)?, p);
                Some(Rerun {
                    id,
                    backfill_name: p.backfill.clone()?,
                    backfill_uid: p.backfill_uid.clone()?,
                    params: run.params,
                    spec_hash: run.spec_hash,
                    tasks: run.tasks,
                })
            })
            .collect();
        // positions: those moved this pass, and each DAG whose scheduled ticks are admitted
        let mut positions = self.positions.clone();
        for p in batch.iter().filter(|p| p.run_type == RunType::Scheduled) {
            if let Some(state) = self.dags.get(&p.dag) {
                let position = positions
                    .entry(p.dag.clone())
                    .or_insert_with(|| state.position());
                position.decide(p.logical_date);
            }
        }
        // runs whose dependsOn wait timed out: created failed (their ticks decided too)
        let mut failed = Vec::new();
        for (p, message) in &self.dependency_failed {
            let Some(state) = self.dags.get(&p.dag) else {
                continue;
            };
            failed.push(FailedRun {
                run: new_run(state, p),
                message: message.clone(),
            });
            if p.run_type == RunType::Scheduled {
                let position = positions
                    .entry(p.dag.clone())
                    .or_insert_with(|| state.position());
                position.decide(p.logical_date);
            }
        }
        Admission {
            specs,
            runs,
            reruns,
            refused: self.refused.clone(),
            positions: positions.into_values().collect(),
            skips: self.skips.clone(),
            failed,
        }
    }

    /// Makes sure every DAG of the batch has its current spec version; returns the versions
    /// not stored yet.
    fn spec_versions(&mut self, batch: &[Pending]) -> Vec<SpecRow> {
        let mut unsaved: Vec<SpecRow> = Vec::new();
        for p in batch {
            let Some(state) = self.dags.get_mut(&p.dag) else {
                continue;
            };
            if state.version.is_none() {
                let spec = Arc::new(state.info.spec().clone());
                match spec.content_hash() {
                    Ok((hash, json)) => {
                        state.version = Some(Arc::new(SpecVersion {
                            generation: state.info.object.metadata.generation,
                            hash,
                            spec,
                            unsaved: Some(json),
                        }));
                    }
                    Err(e) => tracing::error!(dag = %p.dag, error = %e, "cannot hash the spec"),
                }
            }
            if let Some(v) = &state.version {
                if let Some(json) = &v.unsaved {
                    if !unsaved.iter().any(|s| s.hash == v.hash) {
                        unsaved.push(SpecRow {
                            hash: v.hash.clone(),
                            spec: json.clone(),
                        });
                    }
                }
            }
        }
        unsaved
    }

    /// Forgets the JSON of versions now stored (they are never sent again).
    fn mark_specs_saved(&mut self, saved: &[SpecRow]) {
        if saved.is_empty() {
            return;
        }
        for state in self.dags.values_mut() {
            if let Some(v) = &state.version {
                if v.unsaved.is_some() && saved.iter().any(|s| s.hash == v.hash) {
                    state.version = Some(Arc::new(SpecVersion {
                        generation: v.generation,
                        hash: v.hash.clone(),
                        spec: v.spec.clone(),
                        unsaved: None,
                    }));
                }
            }
        }
    }

    /// Books what the store created: active runs, Backfill progress, metrics, and the runs
    /// handed to the executor. A run the store did not create (its date, trigger or re-run
    /// was taken) releases its slots unless a run here holds that date — the gate turns the
    /// release into a let-go while a replica's winning run keeps the same name; a Backfill's
    /// date taken that way counts as skipped, a re-run whose run is gone is asked for afresh.
    fn book(&mut self, now: DateTime<Utc>, batch: Vec<Pending>, created: Vec<RunRow>) -> usize {
        let by_date: HashMap<(DagKey, DateTime<Utc>), &RunRow> = created
            .iter()
            .map(|r| ((r.dag.clone(), r.logical_date), r))
            .collect();
        let mut retry = Vec::new();
        for p in &batch {
            let here = by_date.get(&(p.dag.clone(), p.logical_date));
            let mine = here.is_some_and(|r| {
                p.rerun == Some(r.id) || (r.run_type == p.run_type && r.backfill_name == p.backfill)
            });
            if mine {
                continue;
            }
            if p.rerun.is_some() && here.is_none() {
                // the run to re-run is gone (retention) or running: the date is asked for
                // afresh (a run holding it makes that a skip)
                self.ledger.end(&p.holder());
                retry.push(Pending {
                    rerun: None,
                    ..p.clone()
                });
                continue;
            }
            self.skip_taken_date(p);
            // a running run at that date here holds the slots under this name: they stay its;
            // else released — while a replica that won keeps the same name, the gate makes
            // that a let-go (a loser never takes the winner's slot)
            let held = here.is_some() || self.is_active(&p.dag, p.logical_date);
            if held {
                continue;
            }
            self.ledger.end(&p.holder());
        }
        for p in retry {
            self.requeue(p);
        }
        let mut metrics: HashMap<RunType, (usize, Vec<f64>)> = HashMap::new();
        for run in &created {
            if let Some(bf) = &run.backfill_name {
                self.backfill_run_started(&run.dag, bf, run.id, now);
            }
            let Some(state) = self.dags.get_mut(&run.dag) else {
                continue;
            };
            state.active.push(ActiveRun::of(run));
            self.dirty.insert(run.dag.clone());
            // a re-run in place (Backfill reprocess) is backfill work whatever it was
            let run_type = if run.attempt > 1 {
                RunType::Backfill
            } else {
                run.run_type
            };
            let slot = metrics.entry(run_type).or_default();
            slot.0 += 1;
            if run_type == RunType::Scheduled {
                let delay = (now - run.logical_date).num_milliseconds() as f64 / 1000.0;
                slot.1.push(delay.max(0.0));
            }
        }
        self.recount_active();
        for (run_type, (count, delays_secs)) in metrics {
            self.emit(Output::Telemetry(EngineTelemetry::RunsCreated {
                run_type,
                count,
                delays_secs,
            }));
        }
        let count = created.len();
        let admitted: Vec<AdmittedRun> = created
            .into_iter()
            .filter_map(|run| {
                let spec = self.dags.get(&run.dag)?.version.as_ref()?.spec.clone();
                Some(AdmittedRun { run, spec })
            })
            .collect();
        if !admitted.is_empty() {
            self.emit(Output::RunsAdmitted(admitted));
        }
        count
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    /// A Backfill's date another run has (created first, here or by a replica): recorded as
    /// skipped with the next admission.
    fn skip_taken_date(&mut self, p: &Pending) {
        if let (Some(bf), Some(uid)) = (&p.backfill, &p.backfill_uid) {
            self.skips.push(BackfillSkip {
                backfill: BackfillRef {
                    namespace: p.dag.namespace.clone(),
                    name: bf.clone(),
                    uid: uid.clone(),
                },
                logical_date: p.logical_date,
            });
            self.backfill_date_taken(&p.dag, bf);
        }
    }

    /// Whether the engine counts a running run of `dag` at `date`.
    fn is_active(&self, dag: &DagKey, date: DateTime<Utc>) -> bool {
        self.dags
            .get(dag)
            .map(|s| s.active.as_slice())
            .into_iter()
            .chain(self.orphans.get(dag).map(Vec::as_slice))
            .flatten()
            .any(|r| r.logical_date == date)
    }
}

/// The data interval of `p`'s run: the one it takes over (`triggeredBy`), else the one its
/// schedule gives its logical date.
fn interval_of(state: &DagState, p: &Pending) -> DataInterval {
    p.interval.unwrap_or_else(|| {
        data_interval(
            state.info.schedule.as_ref(),
            p.logical_date,
            state.info.spec().start_date,
        )
    })
}

fn new_run(state: &DagState, p: &Pending) -> NewRun {
    let spec = state.info.spec();
    let interval = interval_of(state, p);
    NewRun {
        dag: p.dag.clone(),
        dag_uid: state.info.uid().to_string(),
        run_type: p.run_type,
        backfill_name: p.backfill.clone(),
        backfill_uid: p.backfill_uid.clone(),
        trigger: p.trigger.clone(),
        logical_date: micros(p.logical_date),
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        priority: state.info.priority,
        params: p.params.clone(),
        spec_hash: state.version.as_ref().map(|v| v.hash.clone()),
        tasks: spec
            .tasks
            .iter()
            .map(|t| NewTask {
                task_name: t.name.clone(),
                pool: t.pool.clone(),
                pool_slots: t.pool_slots,
            })
            .collect(),
    }
}

/// Where a run stands with its `dependsOn` upstreams.
enum DependencyWait {
    Met,
    Waiting,
    /// waited longer than `dependencyTimeoutSeconds`: why
    TimedOut(String),
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    /// Whether each `dependsOn` upstream has a successful run covering `p`'s data interval.
    fn dependency_wait(&self, p: &Pending, now: DateTime<Utc>) -> DependencyWait {
        let Some(state) = self.dags.get(&p.dag) else {
            return DependencyWait::Met;
        };
        let spec = state.info.spec();
        if spec.depends_on.is_empty() {
            return DependencyWait::Met;
        }
        let end = interval_of(state, p).end;
        let missing: Vec<&str> = spec
            .depends_on
            .iter()
            .filter(|r| {
                let up = DagKey::new(p.dag.namespace.clone(), r.dag.clone());
                self.upstream_done
                    .get(&up)
                    .copied()
                    .flatten()
                    .is_none_or(|done| done < end)
            })
            .map(|r| r.dag.as_str())
            .collect();
        if missing.is_empty() {
            return DependencyWait::Met;
        }
        let waited_ms = now.timestamp_millis() - p.enqueued_ms;
        match spec.dependency_timeout_seconds {
            Some(limit) if waited_ms >= limit.saturating_mul(1000) => {
                DependencyWait::TimedOut(format!(
                    "no successful run of {} covering up to {} within dependencyTimeoutSeconds ({limit}s)",
                    missing.join(", "),
                    end.to_rfc3339()
                ))
            }
            _ => DependencyWait::Waiting,
        }
    }
}

/// The cap of `namespace`: its own (from its annotation), else the default.
fn namespace_limit(
    limits: &HashMap<String, Option<u32>>,
    default: Option<u32>,
    namespace: &str,
) -> Option<u32> {
    match limits.get(namespace) {
        Some(limit) => *limit,
        None => default,
    }
}

/// Which of a run's limits a semaphore key is (see [`holds`]).
fn run_scope(key: &str) -> GateScope {
    if key == gate_key::GLOBAL_RUNS {
        GateScope::GlobalRuns
    } else if key.starts_with(gate_key::NAMESPACE_RUNS_PREFIX) {
        GateScope::NamespaceRuns
    } else if key.starts_with(gate_key::DAG_RUNS_PREFIX) {
        GateScope::DagRuns
    } else {
        GateScope::BackfillRuns
    }
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    /// The cap on running runs of `namespace`: its annotation, else `--max-runs-per-namespace`.
    pub(super) fn namespace_limit(&self, namespace: &str) -> Option<u32> {
        namespace_limit(
            &self.namespace_limits,
            self.cfg.max_runs_per_namespace,
            namespace,
        )
    }

    /// Running runs per namespace (what this process counts: the in-process floor under the
    /// gate), or nothing when no namespace is capped.
    fn running_by_namespace(&self) -> HashMap<String, usize> {
        let mut running: HashMap<String, usize> = HashMap::new();
        let capped = self.cfg.max_runs_per_namespace.is_some()
            || self.namespace_limits.values().any(Option::is_some);
        if !capped {
            return running;
        }
        for (key, state) in &self.dags {
            *running.entry(key.namespace.clone()).or_default() += state.active.len();
        }
        for (key, runs) in &self.orphans {
            *running.entry(key.namespace.clone()).or_default() += runs.len();
        }
        running
    }
}
