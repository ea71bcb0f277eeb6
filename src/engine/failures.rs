//! `maxConsecutiveFailures` (docs/SEMANTICS.md, "Auto-suspension"): when runs of a DAG that
//! has it end, the engine reads its newest finished scheduled runs from the record; if the
//! newest N — all after its last suspension's `through` — failed, the DAG suspends itself
//! until its spec changes. The decision is pure ([`suspension`]); the record is the store's.

use chrono::{DateTime, Utc};

use super::Engine;
use crate::api::dag::AutoSuspension;
use crate::gate::Gate;
use crate::store::{DagKey, RunFilter, RunRow, RunState, RunStore, RunType, StoreError};

/// Finished runs read per check beyond the N needed (manual and Backfill runs are passed
/// over in memory).
const READ_AHEAD: i64 = 50;

/// The suspension `runs` (newest first, any type and state) call for, if any: the newest
/// `limit` finished scheduled runs after `after` all failed.
pub fn suspension(
    runs: &[RunRow],
    limit: u32,
    after: Option<DateTime<Utc>>,
    generation: i64,
    now: DateTime<Utc>,
) -> Option<AutoSuspension> {
    let counted: Vec<&RunRow> = runs
        .iter()
        .filter(|r| r.run_type == RunType::Scheduled && r.state != RunState::Running)
        .filter(|r| after.is_none_or(|a| r.logical_date > a))
        .take(limit as usize)
        .collect();
    let newest = counted.first()?;
    let all_failed =
        counted.len() == limit as usize && counted.iter().all(|r| r.state == RunState::Failed);
    all_failed.then_some(AutoSuspension {
        generation,
        suspended_at: now,
        failures: limit,
        through: newest.logical_date,
    })
}

impl<S: RunStore, G: Gate> Engine<S, G> {
    /// Checks the DAGs whose runs ended since the last pass.
    pub(super) async fn check_failures(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        while let Some(key) = self.failure_checks.pop_first() {
            if let Err(e) = self.check_one(&key, now).await {
                self.failure_checks.insert(key);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn check_one(&mut self, key: &DagKey, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(state) = self.dags.get(key) else {
            return Ok(());
        };
        let (Some(limit), Some(generation)) = (
            state.info.spec().max_consecutive_failures,
            state.info.object.metadata.generation,
        ) else {
            return Ok(());
        };
        if state.auto_suspended() {
            return Ok(());
        }
        let after = state.auto.as_ref().map(|a| a.through);
        let runs = self
            .store
            .list_runs(&RunFilter {
                namespace: Some(key.namespace.clone()),
                dag_name: Some(key.name.clone()),
                state: None,
                limit: i64::from(limit) + READ_AHEAD,
            })
            .await?;
        let Some(suspension) = suspension(&runs, limit, after, generation, now) else {
            return Ok(());
        };
        self.event(
            key,
            true,
            "AutoSuspended",
            format!(
                "suspended itself after {limit} failed scheduled runs in a row (the newest for \
                 {}; maxConsecutiveFailures); change the spec (e.g. toggle suspend) to resume",
                suspension.through.to_rfc3339()
            ),
        );
        self.auto_suspend(key, suspension, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn run(day: u32, run_type: RunType, state: RunState) -> RunRow {
        let at: DateTime<Utc> = format!("2025-01-{day:02}T00:00:00Z").parse().expect("date");
        RunRow {
            id: Uuid::new_v4(),
            dag: DagKey::new("ns", "d"),
            dag_uid: "u".into(),
            run_type,
            backfill_name: None,
            logical_date: at,
            data_interval_start: at,
            data_interval_end: at,
            priority: 0,
            state,
            params: serde_json::json!({}),
            attempt: 1,
            created_at: at,
            started_at: Some(at),
            ended_at: Some(at),
            spec_hash: None,
        }
    }

    #[test]
    fn n_failed_scheduled_runs_in_a_row_suspend() {
        use RunState::*;
        use RunType::*;
        let now = Utc::now();
        // newest first: a running one and a manual failure are passed over
        let runs = [
            run(9, Scheduled, Running),
            run(8, Scheduled, Failed),
            run(7, Manual, Success),
            run(6, Scheduled, Failed),
            run(5, Scheduled, Failed),
            run(4, Scheduled, Success),
        ];
        let s = suspension(&runs, 3, None, 7, now).expect("three failed in a row");
        assert_eq!((s.generation, s.failures), (7, 3));
        assert_eq!(s.through, runs[1].logical_date);
        // a success among the newest N: no
        assert_eq!(suspension(&runs, 4, None, 7, now), None);
        // fewer than N finished: no
        assert_eq!(suspension(&runs[..3], 3, None, 7, now), None);
        // only runs after the last suspension count
        assert_eq!(
            suspension(&runs, 3, Some(runs[4].logical_date), 7, now),
            None
        );
    }
}
