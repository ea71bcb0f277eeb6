//! Reads for the HTTP API and the UI: one run by id, a DAG's runs newest first, a page at a
//! time, optionally filtered. Served by indexes (the primary key; the run identity index
//! (namespace, dag_name, logical_date) walked backwards), so a page costs about the same with a
//! hundred runs as with a million. Rows from before the namespace's current incarnation are not
//! read (`epoch.rs`).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::epoch::current;
use super::{PgStore, run_from_row};
use crate::store::{DagKey, RunRow, RunState, RunType, StoreError};

/// How many runs of a DAG ended (or stand) in `state` on one date (the calendar's cell).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyCount {
    pub date: NaiveDate,
    pub state: RunState,
    pub runs: i64,
}

/// Which runs of a DAG, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunQuery {
    /// only runs with a logical date before this (the cursor of the next page)
    pub before: Option<DateTime<Utc>>,
    /// only runs with a logical date at or after this
    pub since: Option<DateTime<Utc>>,
    pub state: Option<RunState>,
    pub run_type: Option<RunType>,
    /// at most this many
    pub limit: i64,
}

impl PgStore {
    /// The run `id`, if it exists.
    pub(super) async fn run_q(&self, id: Uuid) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM dag_runs d WHERE id = $1 AND ",
            current!("d", "created_at")
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The runs of `dag` that `q` selects, newest first.
    pub async fn query_runs(&self, dag: &DagKey, q: &RunQuery) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM dag_runs d WHERE namespace = $1 AND dag_name = $2 AND ",
            current!("d", "created_at"),
            " AND ($3::timestamptz IS NULL OR logical_date < $3) \
               AND ($4::timestamptz IS NULL OR logical_date >= $4) \
               AND ($5::text IS NULL OR state = $5) \
               AND ($6::text IS NULL OR run_type = $6) \
             ORDER BY logical_date DESC LIMIT $7"
        ))
        .bind(&dag.namespace)
        .bind(&dag.name)
        .bind(q.before)
        .bind(q.since)
        .bind(q.state.map(RunState::as_str))
        .bind(q.run_type.map(RunType::as_str))
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// The runs of `dag` with a logical date at or after `since`, counted per date in `zone`
    /// (an IANA name) and state: the calendar's data, however many runs a day has.
    pub async fn daily_outcomes(
        &self,
        dag: &DagKey,
        since: DateTime<Utc>,
        zone: &str,
    ) -> Result<Vec<DailyCount>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT (logical_date AT TIME ZONE $3)::date AS day, state, count(*) AS runs \
             FROM dag_runs d WHERE namespace = $1 AND dag_name = $2 AND logical_date >= $4 AND ",
            current!("d", "created_at"),
            " GROUP BY 1, 2 ORDER BY 1"
        ))
        .bind(&dag.namespace)
        .bind(&dag.name)
        .bind(zone)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(DailyCount {
                    date: row.try_get("day")?,
                    state: RunState::parse(&state).ok_or(StoreError::Corrupt {
                        column: "state",
                        value: state.clone(),
                    })?,
                    runs: row.try_get("runs")?,
                })
            })
            .collect()
    }
}
