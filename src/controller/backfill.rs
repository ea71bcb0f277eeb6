//! The Backfill controller (SPEC §2.3): hands every Backfill to the engine as it is created or
//! changed, and tells it when one is deleted (also deletions missed while the watch was down,
//! found by relisting). Planning, admission and status live in the engine
//! (`engine/backfill.rs`); the status writer writes what the engine reports.

use std::ops::ControlFlow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::relist::Change;
use super::{ControllerError, watch};

use crate::api::backfill::BackfillPhase as ApiPhase;
use crate::api::conditions::{Condition, READY, RECONCILING, STALLED, set_condition};
use crate::api::{Backfill, BackfillStatus};
use crate::engine::{BackfillInfo, BackfillPhase, BackfillProgress, Command};
use crate::key::BackfillKey;
use crate::telemetry::{ControllerKind, Metrics};

fn key_of(bf: &Backfill) -> Option<BackfillKey> {
    Some(BackfillKey::new(
        bf.metadata.namespace.clone()?,
        bf.metadata.name.clone()?,
    ))
}

fn identify(bf: &Backfill) -> Option<(BackfillKey, String)> {
    Some((key_of(bf)?, bf.metadata.uid.clone().unwrap_or_default()))
}

/// What the engine is told of one watch event (and the `changes` it makes): every Backfill
/// created, changed or listed, and every one gone whose name no newer Backfill took (a
/// re-created one replaces it).
fn commands(event: &watcher::Event<Backfill>, changes: Vec<Change<BackfillKey>>) -> Vec<Command> {
    let mut send = Vec::new();
    if let watcher::Event::Apply(bf) | watcher::Event::InitApply(bf) = event
        && let Some(key) = key_of(bf)
    {
        send.push(Command::UpsertBackfill(Box::new(BackfillInfo {
            key,
            uid: bf.metadata.uid.clone().unwrap_or_default(),
            generation: bf.metadata.generation,
            spec: bf.spec.clone(),
        })));
    }
    let listed = changes.iter().find_map(|c| match c {
        Change::Listed(existing) => Some(existing.clone()),
        Change::Gone { .. } => None,
    });
    for change in changes {
        if let Change::Gone { key, .. } = change
            && !listed.as_ref().is_some_and(|l| l.contains_key(&key))
        {
            send.push(Command::RemoveBackfill(key));
        }
    }
    send
}

/// Watches Backfills until the engine goes away. Each event handled is observed as a
/// reconcile of controller `backfill` (failed with `engine_gone` when the engine is gone).
pub async fn run(api: Api<Backfill>, engine: mpsc::Sender<Command>, metrics: Arc<Metrics>) {
    let (engine, metrics) = (&engine, &metrics);
    watch::follow(
        api,
        BackfillKey::KIND,
        identify,
        |event, changes| async move {
            let started = std::time::Instant::now();
            let mut result = Ok(());
            for cmd in commands(&event, changes) {
                if engine.send(cmd).await.is_err() {
                    result = Err(ControllerError::EngineGone);
                    break;
                }
            }
            metrics.reconcile_observed(
                ControllerKind::Backfill,
                started.elapsed().as_secs_f64(),
                result.as_ref().err().map(ControllerError::metric_label),
            );
            match result {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        },
    )
    .await;
}

/// A Backfill's status from its progress.
pub fn render_status(
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
    // kstatus: Invalid needs a person (Stalled); planning and running are in progress
    let stalled = p.phase == BackfillPhase::Invalid;
    let reconciling = matches!(p.phase, BackfillPhase::Pending | BackfillPhase::Running);
    for (type_, on) in [(STALLED, stalled), (RECONCILING, reconciling)] {
        let reason = if on {
            p.reason.as_str()
        } else {
            p.phase.as_str()
        };
        set_condition(
            conditions,
            Condition::new(type_, on, reason, p.message.clone(), p.generation, now),
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(phase: BackfillPhase, reason: &str) -> BackfillProgress {
        BackfillProgress {
            generation: Some(2),
            phase,
            total: 10,
            skipped: 0,
            created: 0,
            active: 0,
            succeeded: 0,
            failed: 0,
            planned_dates: Vec::new(),
            started_at: None,
            completed_at: None,
            ready: phase != BackfillPhase::Invalid,
            reason: reason.to_string(),
            message: "m".to_string(),
        }
    }

    #[test]
    fn an_invalid_backfill_is_stalled_and_a_running_one_reconciling() {
        let now = Utc::now();
        let find = |s: &BackfillStatus, t: &str| {
            crate::api::conditions::find(&s.conditions, t)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        let mut conditions = Vec::new();
        let s = render_status(
            &progress(BackfillPhase::Invalid, "TooManyRuns"),
            &mut conditions,
            now,
        );
        assert_eq!(
            find(&s, STALLED),
            Some(("True".into(), "TooManyRuns".into()))
        );
        assert_eq!(find(&s, RECONCILING).map(|c| c.0), Some("False".into()));
        let s = render_status(
            &progress(BackfillPhase::Running, "Running"),
            &mut conditions,
            now,
        );
        assert_eq!(find(&s, STALLED).map(|c| c.0), Some("False".into()));
        assert_eq!(find(&s, RECONCILING).map(|c| c.0), Some("True".into()));
        let s = render_status(
            &progress(BackfillPhase::Succeeded, "Succeeded"),
            &mut conditions,
            now,
        );
        assert_eq!(find(&s, RECONCILING).map(|c| c.0), Some("False".into()));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    }
}
