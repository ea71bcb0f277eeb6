//! Reads for the HTTP API: one run by id, a DAG's runs newest first, a page at a time. Both
//! are served by indexes (the primary key; the run identity index walked backwards), so a page
//! costs the same with a hundred runs as with a million.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PgStore, run_from_row};
use crate::store::{DagKey, RunRow, StoreError};

impl PgStore {
    /// The run `id`, if it exists.
    pub async fn run(&self, id: Uuid) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM dag_runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// At most `limit` runs of `dag` with a logical date before `before` (all when `None`),
    /// newest first.
    pub async fn runs_before(
        &self,
        dag: &DagKey,
        before: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM dag_runs WHERE namespace = $1 AND dag_name = $2 \
               AND ($3::timestamptz IS NULL OR logical_date < $3) \
             ORDER BY logical_date DESC LIMIT $4"
        ))
        .bind(&dag.namespace)
        .bind(&dag.name)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }
}
