//! Run history retention, carried out by the leader (issue 17): every [`PASS_INTERVAL`] (and
//! when it takes the lead), finished runs older than `--run-retention` and beyond
//! `--keep-runs-per-dag` are deleted a batch at a time, with a pause between batches, so the
//! scheduler's own queries never wait long behind it.

use std::time::Duration;

use chrono::Utc;

use super::Shutdown;
use crate::store::{PgStore, StoreError};

/// How often a pass runs.
pub const PASS_INTERVAL: Duration = Duration::from_secs(600);
/// Runs deleted per statement.
pub const BATCH: i64 = 1000;
/// Rest between two batches.
pub const PAUSE: Duration = Duration::from_millis(50);

/// What is kept. Neither set: everything (the default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// finished runs that ended longer ago than this go (runs of deleted DAGs too)
    pub max_age: Option<Duration>,
    /// of each DAG's runs, only this many newest are kept (running ones always stay)
    pub keep_per_dag: Option<u32>,
}

impl RetentionPolicy {
    pub fn is_off(&self) -> bool {
        self.max_age.is_none() && self.keep_per_dag.is_none()
    }
}

/// One pass: deletes until nothing the policy names is left. Returns how many runs went.
pub async fn prune(
    store: &PgStore,
    policy: &RetentionPolicy,
    pause: Duration,
) -> Result<u64, StoreError> {
    let mut total = 0;
    if let Some(age) = policy.max_age {
        let cutoff = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
        loop {
            let gone = store.prune_older(cutoff, BATCH).await?;
            total += gone;
            if gone < BATCH.unsigned_abs() {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        store.prune_trigger_actions(cutoff).await?;
    }
    if let Some(keep) = policy.keep_per_dag {
        let keep = i64::from(keep);
        for dag in store.dags_over(keep).await? {
            loop {
                let gone = store.prune_beyond(&dag, keep, BATCH).await?;
                total += gone;
                if gone < BATCH.unsigned_abs() {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
    Ok(total)
}

/// Passes every [`PASS_INTERVAL`] until shutdown; failures are logged and retried next time.
pub async fn run(store: PgStore, policy: RetentionPolicy, shutdown: Shutdown) {
    if policy.is_off() {
        return;
    }
    loop {
        match prune(&store, &policy, PAUSE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "old runs deleted (retention)"),
            Err(e) => tracing::warn!(error = %e, "retention pass failed; next in 10 min"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PASS_INTERVAL) => {}
            _ = shutdown.wait() => return,
        }
    }
}
