//! Run history retention (issue 17): finished runs past an age, or beyond a count per DAG,
//! are deleted a batch at a time — the run, its tries, their kept logs and the actions asked
//! of it together (one statement each batch: the foreign keys cascade) — so no batch holds
//! locks for long. Running runs are never deleted; runs of DAGs that no longer exist go by
//! age like the others. A deleted run's outcome stays with the Backfill dates it did
//! (`backfill_dates.run_state`): a Backfill counts it as it ended, never as cancelled.

use chrono::{DateTime, Utc};

use super::{PgStore, dag_key};
use crate::store::{DagKey, StoreError};

impl PgStore {
    /// Deletes at most `batch` finished runs that ended before `cutoff`, oldest first.
    /// Returns how many went.
    pub async fn prune_older(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, StoreError> {
        let gone: i64 = sqlx::query_scalar(
            "WITH doomed AS ( \
                 SELECT id FROM dag_runs \
                 WHERE ended_at IS NOT NULL AND ended_at < $1 AND state <> 'running' \
                 ORDER BY ended_at LIMIT $2), \
             outcomes AS (UPDATE backfill_dates b SET run_state = r.state FROM dag_runs r \
                 WHERE r.id IN (SELECT id FROM doomed) AND b.run_id = r.id), \
             actions AS (DELETE FROM run_actions WHERE run_id IN (SELECT id FROM doomed)), \
             runs AS (DELETE FROM dag_runs WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
             SELECT count(*) FROM runs",
        )
        .bind(cutoff)
        .bind(batch)
        .fetch_one(&self.pool)
        .await?;
        Ok(gone.unsigned_abs())
    }

    /// The DAGs with more than `keep` runs.
    pub async fn dags_over(&self, keep: i64) -> Result<Vec<DagKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, dag_name FROM dag_runs GROUP BY namespace, dag_name \
             HAVING count(*) > $1 ORDER BY 1, 2",
        )
        .bind(keep)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| dag_key(r, "namespace", "dag_name"))
            .collect()
    }

    /// Deletes at most `batch` finished runs of `dag` beyond its newest `keep` (by logical
    /// date), oldest first. Returns how many went.
    pub async fn prune_beyond(
        &self,
        dag: &DagKey,
        keep: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let gone: i64 = sqlx::query_scalar(
            "WITH kept AS ( \
                 SELECT logical_date FROM dag_runs WHERE namespace = $1 AND dag_name = $2 \
                 ORDER BY logical_date DESC OFFSET $3 LIMIT 1), \
             doomed AS ( \
                 SELECT id FROM dag_runs \
                 WHERE namespace = $1 AND dag_name = $2 AND state <> 'running' \
                   AND logical_date <= (SELECT logical_date FROM kept) \
                 ORDER BY logical_date LIMIT $4), \
             outcomes AS (UPDATE backfill_dates b SET run_state = r.state FROM dag_runs r \
                 WHERE r.id IN (SELECT id FROM doomed) AND b.run_id = r.id), \
             actions AS (DELETE FROM run_actions WHERE run_id IN (SELECT id FROM doomed)), \
             runs AS (DELETE FROM dag_runs WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
             SELECT count(*) FROM runs",
        )
        .bind(&dag.namespace)
        .bind(&dag.name)
        .bind(keep)
        .bind(batch)
        .fetch_one(&self.pool)
        .await?;
        Ok(gone.unsigned_abs())
    }

    /// Handled trigger actions (no run) recorded before `cutoff`.
    pub async fn prune_trigger_actions(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM run_actions WHERE run_id IS NULL AND done_at IS NOT NULL \
             AND requested_at < $1",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
