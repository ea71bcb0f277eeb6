//! Run history retention, carried out by the leader (issue 17): every [`PASS_INTERVAL`] (and
//! when it takes the lead), finished runs older than `--run-retention` and beyond
//! `--keep-runs-per-dag` are deleted a batch at a time, resting twice as long as each batch
//! took (at least [`PAUSE`]), so the scheduler's own queries never wait long behind it.

use std::time::Duration;

use chrono::Utc;

use super::Shutdown;
use crate::store::{PgStore, StoreError};

/// How often a pass runs.
pub const PASS_INTERVAL: Duration = Duration::from_secs(600);
/// Runs deleted per statement.
pub const BATCH: i64 = 1000;
/// Least rest between two batches; a batch that took longer is followed by twice its time,
/// so deleting takes at most a third of one database connection's time, however loaded
/// PostgreSQL is.
pub const PAUSE: Duration = Duration::from_millis(50);

/// The rest after a batch that took `took`.
pub(super) fn rest(pause: Duration, took: Duration) -> Duration {
    if pause.is_zero() {
        Duration::ZERO
    } else {
        pause.max(took * 2)
    }
}

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

/// Runs `batch` (one deleting statement of at most [`BATCH`] runs) until it deletes fewer,
/// resting after each; returns how many runs went.
async fn drain<F, Fut>(pause: Duration, mut batch: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let started = std::time::Instant::now();
        let gone = batch().await?;
        total += gone;
        if gone < BATCH.unsigned_abs() {
            return Ok(total);
        }
        tokio::time::sleep(rest(pause, started.elapsed())).await;
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
        total += drain(pause, || store.prune_older(cutoff, BATCH)).await?;
        store.prune_trigger_actions(cutoff).await?;
    }
    if let Some(keep) = policy.keep_per_dag {
        let keep = i64::from(keep);
        for dag in store.dags_over(keep).await? {
            total += drain(pause, || store.prune_beyond(&dag, keep, BATCH)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_batch_is_followed_by_a_longer_rest() {
        let ms = Duration::from_millis;
        assert_eq!(rest(ms(50), ms(10)), ms(50));
        assert_eq!(rest(ms(50), ms(100)), ms(200));
        assert_eq!(
            rest(Duration::ZERO, ms(100)),
            Duration::ZERO,
            "tests run without rest"
        );
    }
}
