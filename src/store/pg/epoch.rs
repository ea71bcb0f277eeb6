//! Namespace incarnations (issue 28, finding 8; docs/SEMANTICS.md, "History and namespaces").
//! History is keyed by the namespace's name, so a namespace deleted and created again would
//! inherit the old one's runs, logs, actions, trigger values and positions. The rule, in one
//! place: a row of namespace N recorded before `namespace_epochs.since` of N is not N's —
//! [`current!`] is that test, in every read the API and the scheduler make — and
//! [`PgStore::purge_namespace_step`] deletes such rows a batch at a time.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::PgStore;
use crate::store::StoreError;

/// `$alias.$column` was recorded in the current incarnation of `$alias.namespace` (always, for a
/// namespace with no recorded incarnation).
macro_rules! current {
    ($alias:literal, $column:literal) => {
        concat!(
            $alias,
            ".",
            $column,
            " >= coalesce((SELECT e.since FROM namespace_epochs e WHERE e.namespace = ",
            $alias,
            ".namespace), '-infinity'::timestamptz)"
        )
    };
}
pub(super) use current;

/// A namespace as it is now: its name, its uid and its `creationTimestamp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceIncarnation {
    pub name: String,
    pub uid: String,
    pub created: DateTime<Utc>,
}

/// A namespace whose earlier history is still (partly) there: everything recorded before
/// `before` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeDue {
    pub namespace: String,
    pub before: DateTime<Utc>,
}

/// What one [`PgStore::purge_namespace_step`] deletes, in this order: runs first (their tries,
/// kept logs and actions go with them), then what hangs off the name alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeStep {
    /// finished runs (running ones wait until the scheduler ends them: a DAG's deletion
    /// cancels them)
    Runs,
    /// trigger actions (actions on runs went with their runs)
    Actions,
    /// handled trigger values
    Triggers,
    /// Backfill dates and records, schedule positions
    Records,
}

impl PurgeStep {
    pub const ALL: [PurgeStep; 4] = [
        PurgeStep::Runs,
        PurgeStep::Actions,
        PurgeStep::Triggers,
        PurgeStep::Records,
    ];
}

const PURGE_RUNS: &str = "WITH doomed AS ( \
         SELECT id FROM dag_runs \
         WHERE namespace = $1 AND created_at < $2 AND state <> 'running' \
         ORDER BY created_at LIMIT $3), \
     actions AS (DELETE FROM run_actions WHERE run_id IN (SELECT id FROM doomed)), \
     runs AS (DELETE FROM dag_runs WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
     SELECT count(*) FROM runs";

const PURGE_ACTIONS: &str = "WITH doomed AS ( \
         SELECT id FROM run_actions \
         WHERE namespace = $1 AND requested_at < $2 AND run_id IS NULL LIMIT $3), \
     gone AS (DELETE FROM run_actions WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
     SELECT count(*) FROM gone";

const PURGE_TRIGGERS: &str = "WITH doomed AS ( \
         SELECT dag_name, value FROM dag_triggers \
         WHERE namespace = $1 AND handled_at < $2 LIMIT $3), \
     gone AS (DELETE FROM dag_triggers t USING doomed d \
         WHERE t.namespace = $1 AND t.dag_name = d.dag_name AND t.value = d.value RETURNING 1) \
     SELECT count(*) FROM gone";

/// Backfills started before the incarnation, a batch of their dates at a time; the records
/// themselves once their dates are gone; positions whose schedule began before it (a position
/// of the current incarnation began at its DAG's creation or later).
const PURGE_RECORDS: &str = "WITH old AS ( \
         SELECT name, uid FROM backfills \
         WHERE namespace = $1 AND coalesce(started_at, completed_at) < $2), \
     doomed AS ( \
         SELECT b.backfill, b.backfill_uid, b.logical_date FROM backfill_dates b \
         JOIN old o ON b.namespace = $1 AND b.backfill = o.name AND b.backfill_uid = o.uid \
         LIMIT $3), \
     dates AS (DELETE FROM backfill_dates b USING doomed d \
         WHERE b.namespace = $1 AND b.backfill = d.backfill \
           AND b.backfill_uid = d.backfill_uid AND b.logical_date = d.logical_date RETURNING 1), \
     records AS (DELETE FROM backfills b USING old o \
         WHERE b.namespace = $1 AND b.name = o.name AND b.uid = o.uid \
           AND (SELECT count(*) FROM doomed) < $3 RETURNING 1), \
     positions AS (DELETE FROM dag_positions \
         WHERE namespace = $1 AND schedule_since < $2 RETURNING 1) \
     SELECT (SELECT count(*) FROM dates) + (SELECT count(*) FROM records) \
          + (SELECT count(*) FROM positions)";

impl PgStore {
    /// Records the namespaces as they are now. An incarnation never moves back: `since` only
    /// grows, so a replica with an older view cannot make old rows visible again.
    pub async fn record_namespaces(
        &self,
        namespaces: &[NamespaceIncarnation],
    ) -> Result<(), StoreError> {
        if namespaces.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
        let uids: Vec<&str> = namespaces.iter().map(|n| n.uid.as_str()).collect();
        let created: Vec<DateTime<Utc>> = namespaces.iter().map(|n| n.created).collect();
        sqlx::query(
            "INSERT INTO namespace_epochs (namespace, uid, since) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) ORDER BY 1 \
             ON CONFLICT (namespace) DO UPDATE SET uid = EXCLUDED.uid, \
                 since = greatest(namespace_epochs.since, EXCLUDED.since) \
             WHERE namespace_epochs.uid <> EXCLUDED.uid \
                OR namespace_epochs.since < EXCLUDED.since",
        )
        .bind(names)
        .bind(uids)
        .bind(created)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that `namespace` is gone: everything recorded of it so far is history of no
    /// namespace (PostgreSQL's clock: the rows were stamped by it).
    pub async fn namespace_gone(&self, namespace: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO namespace_epochs (namespace, uid, since) VALUES ($1, '', now()) \
             ON CONFLICT (namespace) DO UPDATE SET uid = '', \
                 since = greatest(namespace_epochs.since, now())",
        )
        .bind(namespace)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The namespaces anything is recorded of: runs (a loose scan of the run identity index,
    /// one probe per namespace), trigger values, positions and recorded incarnations.
    pub async fn namespaces_with_history(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "WITH RECURSIVE runs(ns) AS ( \
                 SELECT min(namespace) FROM dag_runs \
                 UNION ALL \
                 SELECT (SELECT min(namespace) FROM dag_runs WHERE namespace > runs.ns) \
                 FROM runs WHERE runs.ns IS NOT NULL), \
             triggers(ns) AS ( \
                 SELECT min(namespace) FROM dag_triggers \
                 UNION ALL \
                 SELECT (SELECT min(namespace) FROM dag_triggers WHERE namespace > triggers.ns) \
                 FROM triggers WHERE triggers.ns IS NOT NULL) \
             SELECT ns FROM runs WHERE ns IS NOT NULL \
             UNION SELECT ns FROM triggers WHERE ns IS NOT NULL \
             UNION SELECT namespace FROM dag_positions \
             UNION SELECT namespace FROM namespace_epochs \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The namespaces whose history from before their current incarnation is not all
    /// deleted yet.
    pub async fn purges_due(&self) -> Result<Vec<PurgeDue>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, since FROM namespace_epochs \
             WHERE purged_before IS NULL OR purged_before < since ORDER BY namespace",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PurgeDue {
                    namespace: r.try_get("namespace")?,
                    before: r.try_get("since")?,
                })
            })
            .collect()
    }

    /// Deletes at most `batch` rows of `step` recorded of `namespace` before `before`;
    /// returns how many went.
    pub async fn purge_namespace_step(
        &self,
        step: PurgeStep,
        namespace: &str,
        before: DateTime<Utc>,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let sql = match step {
            PurgeStep::Runs => PURGE_RUNS,
            PurgeStep::Actions => PURGE_ACTIONS,
            PurgeStep::Triggers => PURGE_TRIGGERS,
            PurgeStep::Records => PURGE_RECORDS,
        };
        let gone: i64 = sqlx::query_scalar(sql)
            .bind(namespace)
            .bind(before)
            .bind(batch)
            .fetch_one(&self.pool)
            .await?;
        Ok(gone.unsigned_abs())
    }

    /// Notes that everything of `namespace` recorded before `before` is deleted, unless a run
    /// from before it is left (one still running); `true` when noted.
    pub async fn namespace_purged(
        &self,
        namespace: &str,
        before: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE namespace_epochs \
             SET purged_before = greatest(coalesce(purged_before, '-infinity'), $2) \
             WHERE namespace = $1 AND NOT EXISTS ( \
                 SELECT 1 FROM dag_runs WHERE namespace = $1 AND created_at < $2)",
        )
        .bind(namespace)
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
