//! Reading the scheduler's record: DAG positions and triggers, Backfill lifetimes and dates.
//! What a namespace's earlier incarnation recorded is not read (`epoch.rs`).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::epoch::current;
use super::{PgStore, dag_columns, dag_key, trigger_of};
use crate::store::{
    BackfillCounts, BackfillRecord, BackfillRef, DagKey, DagRecord, LastEnds, Position, RunState,
    StoreError,
};

impl PgStore {
    pub(super) async fn dag_records_q(
        &self,
        dags: &[DagKey],
    ) -> Result<Vec<DagRecord>, StoreError> {
        if dags.is_empty() {
            return Ok(Vec::new());
        }
        // the last scheduled run: the partial index dag_runs_last_scheduled_idx; the last
        let (namespaces, names) = dag_columns(dags.iter());
        // trigger: dag_triggers_handled_idx
        let rows = sqlx::query(concat!(
            "SELECT k.ns, k.name, p.dag_uid, p.schedule, p.schedule_since, p.last_tick, \
                     p.buffered, \
                     (SELECT d.logical_date FROM dag_runs d WHERE d.namespace = k.ns \
                         AND d.dag_name = k.name AND d.run_type = 'scheduled' AND ",
            current!("d", "created_at"),
            " ORDER BY d.logical_date DESC LIMIT 1) AS last_scheduled, \
                     (SELECT t.value FROM dag_triggers t WHERE t.namespace = k.ns \
                         AND t.dag_name = k.name AND ",
            current!("t", "handled_at"),
            " ORDER BY t.handled_at DESC, t.value DESC LIMIT 1) AS last_trigger \
                 FROM UNNEST($1::text[], $2::text[]) AS k(ns, name) \
                 LEFT JOIN dag_positions p ON p.namespace = k.ns AND p.dag_name = k.name AND ",
            current!("p", "schedule_since")
        ))
        .bind(namespaces)
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let dag = dag_key(row, "ns", "name")?;
                let uid: Option<String> = row.try_get("dag_uid")?;
                let position = match uid {
                    None => None,
                    Some(dag_uid) => Some(Position {
                        dag: dag.clone(),
                        dag_uid,
                        schedule: row.try_get("schedule")?,
                        since: row.try_get("schedule_since")?,
                        last_tick: row.try_get("last_tick")?,
                        buffered: row.try_get("buffered")?,
                    }),
                };
                Ok(DagRecord {
                    dag,
                    position,
                    last_scheduled: row.try_get("last_scheduled")?,
                    last_trigger: row.try_get("last_trigger")?,
                })
            })
            .collect()
    }

    /// The newest end of a successful and of a failed run, per DAG: one grouped query,
    /// once at start (not on a hot path).
    pub(super) async fn last_ends_q(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<LastEnds>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, dag_name, \
                 max(ended_at) FILTER (WHERE state = 'success') AS success, \
                 max(ended_at) FILTER (WHERE state = 'failed') AS failure \
             FROM dag_runs \
             WHERE state IN ('success', 'failed') AND ended_at IS NOT NULL \
               AND ($1::text IS NULL OR namespace = $1) \
             GROUP BY namespace, dag_name \
             ORDER BY namespace, dag_name",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LastEnds {
                    dag: dag_key(row, "namespace", "dag_name")?,
                    success: row.try_get("success")?,
                    failure: row.try_get("failure")?,
                })
            })
            .collect()
    }

    pub(super) async fn recorded_triggers_q(
        &self,
        values: &[(DagKey, String)],
    ) -> Result<Vec<(DagKey, String)>, StoreError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let (namespaces, names) = dag_columns(values.iter().map(|(d, _)| d));
        let rows = sqlx::query(concat!(
            "SELECT t.namespace, t.dag_name, t.value FROM dag_triggers t \
                 JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(ns, name, value) \
                   ON t.namespace = k.ns AND t.dag_name = k.name AND t.value = k.value \
                 WHERE ",
            current!("t", "handled_at")
        ))
        .bind(namespaces)
        .bind(names)
        .bind(values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(trigger_of).collect()
    }

    pub(super) async fn backfill_record_q(
        &self,
        b: &BackfillRef,
    ) -> Result<Option<BackfillRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT total, would_skip, started_at, completed_at, phase FROM backfills \
             WHERE namespace = $1 AND name = $2 AND uid = $3",
        )
        .bind(&b.namespace)
        .bind(&b.name)
        .bind(&b.uid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(BackfillRecord {
                total: row.try_get("total")?,
                would_skip: row.try_get("would_skip")?,
                started_at: row.try_get("started_at")?,
                completed_at: row.try_get("completed_at")?,
                phase: row.try_get("phase")?,
            })
        })
        .transpose()
    }

    pub(super) async fn save_backfill_q(
        &self,
        b: &BackfillRef,
        r: &BackfillRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO backfills \
                 (namespace, name, uid, total, started_at, completed_at, phase, would_skip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (namespace, name, uid) DO UPDATE SET total = EXCLUDED.total, \
                 would_skip = EXCLUDED.would_skip, \
                 started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at, \
                 phase = EXCLUDED.phase",
        )
        .bind(&b.namespace)
        .bind(&b.name)
        .bind(&b.uid)
        .bind(r.total)
        .bind(r.started_at)
        .bind(r.completed_at)
        .bind(r.phase.as_deref())
        .bind(r.would_skip)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn backfill_done_q(
        &self,
        b: &BackfillRef,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT logical_date FROM backfill_dates \
             WHERE namespace = $1 AND backfill = $2 AND backfill_uid = $3 \
               AND logical_date >= $4 AND logical_date <= $5 ORDER BY logical_date",
        )
        .bind(&b.namespace)
        .bind(&b.name)
        .bind(&b.uid)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn backfill_counts_q(
        &self,
        b: &BackfillRef,
    ) -> Result<BackfillCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT d.outcome, COALESCE(r.state, d.run_state) AS state, count(*) AS n \
             FROM backfill_dates d \
             LEFT JOIN dag_runs r ON r.id = d.run_id \
             WHERE d.namespace = $1 AND d.backfill = $2 AND d.backfill_uid = $3 \
             GROUP BY 1, 2",
        )
        .bind(&b.namespace)
        .bind(&b.name)
        .bind(&b.uid)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = BackfillCounts::default();
        for row in rows {
            let outcome: String = row.try_get("outcome")?;
            let state: Option<String> = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            if outcome == "skipped" {
                counts.skipped += n;
                continue;
            }
            match state.as_deref().and_then(RunState::parse) {
                Some(RunState::Running) => counts.running += n,
                Some(RunState::Success) => counts.success += n,
                Some(RunState::Failed) => counts.failed += n,
                // a run deleted by retention counts as it ended (`run_state`)
                Some(RunState::Cancelled) | None => counts.cancelled += n,
            }
        }
        Ok(counts)
    }
}
