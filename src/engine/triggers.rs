//! Manual triggers (SPEC §3.5): each value a DAG's annotations ask for becomes one manual
//! run, exactly once. The value is recorded in PostgreSQL in the same transaction as its run
//! (or its refusal), and a value already recorded is never queued again — so a crash before
//! the run is admitted loses nothing (the value is simply handled again), and a crash after
//! it, a restart or a second replica never creates a second run.
//!
//! Several values may be pending at once (`trigger.dagoperator.io/<id>` annotations); each is
//! handled on its own. A value without a logical date gets the moment it is queued (to the
//! microsecond, after any earlier one of the DAG); that date is recorded with the run.

use chrono::{DateTime, Utc};

use super::admit::Pending;
use super::{Engine, Output, merge_params, micros};
use crate::gate::Gate;
use crate::queue::RunClass;
use crate::store::{DagKey, RefusedTrigger, RunStore, StoreError, TriggerOutcome};

impl<S: RunStore, G: Gate> Engine<S, G> {
    /// Looks up the trigger values of changed DAGs in the record; the ones not recorded are
    /// queued (or refused: suspended DAG, malformed params).
    pub(super) async fn check_triggers(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut wanted: Vec<(DagKey, String)> = Vec::new();
        for (key, state) in &mut self.dags {
            if !state.taken_up || !state.unchecked {
                continue;
            }
            state.unchecked = false;
            // values no longer in the annotations need not be remembered
            let asked: Vec<&str> = state
                .info
                .triggers
                .iter()
                .map(|t| t.value.as_str())
                .chain(state.upstream.iter().map(|u| u.request.value.as_str()))
                .collect();
            let present: std::collections::HashSet<&str> = asked.iter().copied().collect();
            state.handled.retain(|v| present.contains(v.as_str()));
            for value in asked {
                if !state.handled.contains(value) && !state.in_flight.contains(value) {
                    wanted.push((key.clone(), value.to_string()));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let recorded = match self.store.recorded_triggers(&wanted).await {
            Ok(recorded) => recorded,
            Err(e) => {
                // not looked at: the next pass asks again
                for (key, _) in &wanted {
                    if let Some(state) = self.dags.get_mut(key) {
                        state.unchecked = true;
                    }
                }
                return Err(e);
            }
        };
        for (key, value) in &recorded {
            if let Some(state) = self.dags.get_mut(key) {
                state.handled.insert(value.clone());
                state.upstream.retain(|u| u.request.value != *value);
            }
        }
        let recorded: std::collections::HashSet<(DagKey, String)> = recorded.into_iter().collect();
        for (key, value) in wanted {
            if !recorded.contains(&(key.clone(), value.clone())) {
                self.handle_trigger(&key, &value, now);
            }
        }
        Ok(())
    }

    /// Queues the manual run a trigger value asks for, or refuses it (recorded with the next
    /// admission, with a Warning event).
    fn handle_trigger(&mut self, key: &DagKey, value: &str, now: DateTime<Utc>) {
        let Some(state) = self.dags.get_mut(key) else {
            return;
        };
        let (request, interval) = match state.info.triggers.iter().find(|t| t.value == value) {
            Some(t) => (t.clone(), None),
            None => match state.upstream.iter().find(|u| u.request.value == value) {
                Some(u) => (u.request.clone(), Some(u.interval)),
                None => return,
            },
        };
        state.in_flight.insert(request.value.clone());
        let object = state.info.object.clone();
        let spec = &object.spec;
        let refusal = if let Some(why) = &request.malformed {
            Some(why.clone())
        } else if spec.suspend {
            Some("the DAG is suspended".to_string())
        } else {
            None
        };
        let params = match refusal {
            Some(why) => Err(why),
            None => merge_params(spec.params.as_ref(), request.params.as_deref())
                .map_err(|e| format!("trigger params: {e}")),
        };
        let params = match params {
            Ok(p) => p,
            Err(why) => {
                self.refused.push(RefusedTrigger {
                    dag: key.clone(),
                    value: request.value,
                    message: why,
                });
                return;
            }
        };
        // a date for a value without one: now, after any earlier such date of the DAG, and
        // not on a tick of its schedule (a scheduled run may take that date)
        let logical_date = match request.logical_date {
            Some(t) => t,
            None => {
                let mut t = micros(now);
                if let Some(last) = state.last_manual {
                    if t <= last {
                        t = last + chrono::Duration::microseconds(1);
                    }
                }
                if state.info.schedule.as_ref().is_some_and(|s| s.is_tick(t)) {
                    t += chrono::Duration::microseconds(1);
                }
                state.last_manual = Some(t);
                t
            }
        };
        let priority = state.info.priority;
        let mut pending = Pending::manual(key.clone(), logical_date, params, request.value, now);
        pending.interval = interval;
        self.enqueue(pending, RunClass::Manual, priority);
    }

    /// What the record says became of trigger values: events, the DAG's last handled trigger,
    /// and the annotations that may go.
    /// `dates` gives the logical date of each run created.
    pub(super) fn triggers_recorded(
        &mut self,
        outcomes: Vec<(DagKey, String, TriggerOutcome)>,
        dates: &std::collections::HashMap<uuid::Uuid, DateTime<Utc>>,
    ) {
        let mut removable: std::collections::BTreeMap<DagKey, Vec<String>> = Default::default();
        for (key, value, outcome) in outcomes {
            let Some(state) = self.dags.get_mut(&key) else {
                continue;
            };
            state.in_flight.remove(&value);
            state.handled.insert(value.clone());
            state.upstream.retain(|u| u.request.value != value);
            if state
                .info
                .triggers
                .iter()
                .any(|t| t.value == value && t.removable)
            {
                removable
                    .entry(key.clone())
                    .or_default()
                    .push(value.clone());
            }
            match outcome {
                TriggerOutcome::Created(id) => {
                    state.last_trigger = Some(value.clone());
                    self.dirty.insert(key.clone());
                    let date = dates.get(&id).map(|t| t.to_rfc3339()).unwrap_or_default();
                    self.event(
                        &key,
                        false,
                        "TriggerHandled",
                        format!("trigger {value:?}: manual run created for {date}"),
                    );
                }
                TriggerOutcome::Refused(why) => {
                    state.last_trigger = Some(value.clone());
                    self.dirty.insert(key.clone());
                    self.event(
                        &key,
                        true,
                        "TriggerRefused",
                        format!("trigger {value:?} refused: {why}"),
                    );
                }
                TriggerOutcome::Known => {}
            }
        }
        for (key, values) in removable {
            self.emit(Output::TriggersHandled(key, values));
        }
    }
}
