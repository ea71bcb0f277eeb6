//! The PostgreSQL implementation of [`RunStore`](super::RunStore).
//!
//! Every statement is a `&'static str` (or a [`QueryBuilder`] of static fragments) with bind
//! parameters: nothing from outside the process is ever spliced into SQL.
//!
//! Batched writes: `insert_runs` sends whole batches as arrays and expands them with `UNNEST`,
//! so one transaction costs BEGIN, one INSERT of runs, one INSERT of task instances and
//! COMMIT, whatever the batch size (batches beyond [`PgStore::RUN_CHUNK`] runs or
//! [`PgStore::TASK_CHUNK`] task instances take one more statement per chunk, still in the
//! same transaction).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, QueryBuilder, Row};
use uuid::Uuid;

use super::{
    ActionWrite, ActionWritten, Admission, Admitted, Applied, BackfillCounts, BackfillRecord,
    BackfillRef, Changes, DagKey, DagRecord, DateRun, LastEnds, RecentRuns, RunAction, RunFilter,
    RunRow, RunState, RunStore, RunType, SpecRow, StoreError, TaskRow, TaskState,
};

/// The embedded migrations (`migrations/` at the repository root).
///
/// sqlx's `migrate!` embeds each file with `include_str!`; build.rs tells cargo to rebuild
/// when the directory changes, so a new file is picked up too.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Connections in the operator's pool: the engine batches its writes, so a few suffice.
const MAX_CONNECTIONS: u32 = 5;
/// How long a query waits for a connection (and so for an unreachable server) before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pool's size and timeouts: the operator's own ([`PoolSettings::OPERATOR`]) and the HTTP
/// API's (its own pool, so readers never take the scheduler's connections; issue 28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// most connections open at once
    pub max_connections: u32,
    /// how long a query waits for a connection before failing with
    /// [`sqlx::Error::PoolTimedOut`]
    pub acquire_timeout: Duration,
    /// the server cancels any statement running longer (PostgreSQL's `statement_timeout`, set
    /// for each connection when it opens); none: no limit
    pub statement_timeout: Option<Duration>,
}

impl PoolSettings {
    /// The engine's, executor's and controllers' pool.
    pub const OPERATOR: PoolSettings = PoolSettings {
        max_connections: MAX_CONNECTIONS,
        acquire_timeout: ACQUIRE_TIMEOUT,
        statement_timeout: None,
    };
}

/// PostgreSQL's SQLSTATE for a statement cancelled (by `statement_timeout`, among others).
const QUERY_CANCELED: &str = "57014";

impl StoreError {
    /// The server cancelled the statement: it ran past the pool's `statement_timeout`.
    pub fn timed_out(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                e.code().as_deref() == Some(QUERY_CANCELED)
            }
            _ => false,
        }
    }
}

/// A migration this process applied (see [`PgStore::migrate_report`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub description: String,
}

/// The store: a small connection pool to PostgreSQL. Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Most runs in one `INSERT … SELECT FROM UNNEST`: bounds the size of one bind message.
    pub const RUN_CHUNK: usize = 10_000;
    /// Most task instances in one `INSERT … SELECT FROM UNNEST`.
    pub const TASK_CHUNK: usize = 50_000;

    /// Builds the pool without connecting, so the operator starts (not ready) while
    /// PostgreSQL is down. A malformed URL fails here; an unreachable server fails each
    /// query after [`ACQUIRE_TIMEOUT`] with [`sqlx::Error::PoolTimedOut`].
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("dag-operator");
        Ok(Self::lazy_pool(options, &PoolSettings::OPERATOR))
    }

    /// Another pool to the same database, with `settings` of its own (and connections named
    /// `dag-operator-api` in `pg_stat_activity`): what this one's users do never waits for
    /// its connections, nor the other way round. Built without connecting.
    pub fn sibling(&self, settings: &PoolSettings) -> PgStore {
        let options = self
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name("dag-operator-api");
        Self::lazy_pool(options, settings)
    }

    fn lazy_pool(options: PgConnectOptions, settings: &PoolSettings) -> PgStore {
        let options = match settings.statement_timeout {
            // in milliseconds, PostgreSQL's unit when none is given; 0 would mean no limit
            Some(t) => options.options([("statement_timeout", t.as_millis().max(1))]),
            None => options,
        };
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(options);
        PgStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where the pool connects, for messages: `host:port/database` (never the password).
    pub fn target(&self) -> String {
        let options = self.pool.connect_options();
        let place = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        format!("{place}/{}", options.get_database().unwrap_or("(default)"))
    }

    /// One direct connection attempt, bypassing the pool (whose acquire retries a refused
    /// connection until its timeout and then reports only `PoolTimedOut`), so a caller can
    /// say *why* PostgreSQL is unreachable: refused, unknown host, bad password, ….
    pub async fn probe(&self) -> Result<(), StoreError> {
        let options = self.pool.connect_options();
        let conn = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {}s", ACQUIRE_TIMEOUT.as_secs()),
                ))
            })??;
        conn.close().await?;
        Ok(())
    }

    /// Applies the embedded migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_report().await.map(|_| ())
    }

    /// Applies the embedded migrations and returns the ones this call applied, oldest first
    /// (empty: the schema was up to date).
    ///
    /// Locking. sqlx's PostgreSQL migrator already takes an advisory lock by itself:
    /// `Migrator::run` calls `Migrate::lock` (sqlx-postgres 0.9 `src/migrate.rs`), a
    /// session-level `pg_advisory_lock(id)` with `id` derived from a CRC32 of
    /// `current_database()`, before it creates `_sqlx_migrations` or reads the applied
    /// versions, and `pg_advisory_unlock` at the end. We take that same lock exactly once,
    /// but around a slightly larger critical section: we call `Migrate::lock` ourselves and
    /// run a copy of the migrator with its own locking switched off (no double lock), so the
    /// "applied before" read, the migration and the "applied after" read are one critical
    /// section and the report is exact even when replicas migrate at once. Because the lock
    /// id is sqlx's, `sqlx migrate run` (sqlx-cli) and other sqlx migrators serialise with us.
    ///
    /// A session-level lock lives as long as its connection, and sqlx does not unlock when a
    /// migration fails. The connection used is therefore closed rather than returned to the
    /// pool, which releases the lock whatever happened.
    pub async fn migrate_report(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        conn.lock().await?;
        let result = migrate_locked(&mut conn).await;
        if result.is_ok() {
            conn.unlock().await?;
        }
        result
    }
}

/// Runs the migrations on a connection that holds sqlx's migration lock.
async fn migrate_locked(conn: &mut PgConnection) -> Result<Vec<AppliedMigration>, StoreError> {
    let mut migrator = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    // Locked by the caller with the same `Migrate::lock`; locking twice would be redundant.
    migrator.set_locking(false);
    let before = applied_versions(conn).await?;
    // `run_direct` is what `Migrator::run` calls after acquiring; sqlx keeps it public (though
    // doc-hidden) because `run(&mut conn)` makes the caller's future fail `tokio::spawn`'s
    // `Send` check ("implementation of `Acquire` is not general enough").
    migrator.run_direct(None, conn, false).await?;
    let after = applied_versions(conn).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .filter(|m| after.contains(&m.version) && !before.contains(&m.version))
        .map(|m| AppliedMigration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect())
}

/// Versions recorded in `_sqlx_migrations` (none when the table does not exist yet).
async fn applied_versions(conn: &mut PgConnection) -> Result<HashSet<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(HashSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await?;
    Ok(versions.into_iter().collect())
}

/// The columns [`run_from_row`] reads.
macro_rules! run_columns {
    () => {
        "id, namespace, dag_name, dag_uid, run_type, backfill_name, logical_date, \
         data_interval_start, data_interval_end, priority, state, params, attempt, \
         created_at, started_at, ended_at, spec_hash"
    };
}

mod action;
mod admit;
mod epoch;
use self::epoch::current;
pub use self::epoch::{NamespaceIncarnation, PurgeDue, PurgeStep};
mod logs;
pub use self::logs::StoredLog;
mod read;
mod retention;
pub use self::read::{DailyCount, RunQuery};
mod record;
mod tasks;

/// A DAG's key from the row's columns `ns_col` and `name_col`.
fn dag_key(row: &PgRow, ns_col: &str, name_col: &str) -> Result<DagKey, StoreError> {
    Ok(DagKey::new(
        row.try_get::<String, _>(ns_col)?,
        row.try_get::<String, _>(name_col)?,
    ))
}

/// A recorded trigger value: its DAG and the value.
fn trigger_of(row: &PgRow) -> Result<(DagKey, String), StoreError> {
    Ok((
        dag_key(row, "namespace", "dag_name")?,
        row.try_get("value")?,
    ))
}

/// The namespaces and the names of DAG keys, as two array parameters (`UNNEST($1, $2)`).
fn dag_columns<'a>(keys: impl Iterator<Item = &'a DagKey>) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.map(|k| (k.namespace.as_str(), k.name.as_str()))
        .unzip()
}

/// Stores spec versions not stored yet (by hash), in a transaction or not.
async fn insert_specs<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    specs: &[SpecRow],
) -> Result<(), StoreError> {
    let hashes: Vec<&str> = specs.iter().map(|s| s.hash.as_str()).collect();
    let bodies: Vec<&serde_json::Value> = specs.iter().map(|s| &s.spec).collect();
    sqlx::query(
        "INSERT INTO dag_specs (hash, spec) SELECT * FROM UNNEST($1::text[], $2::jsonb[]) \
         ORDER BY 1 ON CONFLICT (hash) DO NOTHING",
    )
    .bind(hashes)
    .bind(bodies)
    .execute(ex)
    .await?;
    Ok(())
}

fn run_from_row(row: &PgRow) -> Result<RunRow, StoreError> {
    let run_type: String = row.try_get("run_type")?;
    let state: String = row.try_get("state")?;
    Ok(RunRow {
        id: row.try_get("id")?,
        dag: dag_key(row, "namespace", "dag_name")?,
        dag_uid: row.try_get("dag_uid")?,
        run_type: RunType::parse(&run_type).ok_or(StoreError::Corrupt {
            column: "dag_runs.run_type",
            value: run_type,
        })?,
        backfill_name: row.try_get("backfill_name")?,
        logical_date: row.try_get("logical_date")?,
        data_interval_start: row.try_get("data_interval_start")?,
        data_interval_end: row.try_get("data_interval_end")?,
        priority: row.try_get("priority")?,
        state: RunState::parse(&state).ok_or(StoreError::Corrupt {
            column: "dag_runs.state",
            value: state,
        })?,
        params: row.try_get("params")?,
        attempt: row.try_get("attempt")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        spec_hash: row.try_get("spec_hash")?,
    })
}

fn task_from_row(row: &PgRow) -> Result<TaskRow, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(TaskRow {
        run_id: row.try_get("run_id")?,
        task_name: row.try_get("task_name")?,
        try_number: row.try_get("try_number")?,
        state: TaskState::parse(&state).ok_or(StoreError::Corrupt {
            column: "task_instances.state",
            value: state,
        })?,
        pool: row.try_get("pool")?,
        pool_slots: row.try_get("pool_slots")?,
        pod_name: row.try_get("pod_name")?,
        exit_code: row.try_get("exit_code")?,
        message: row.try_get("message")?,
        queued_at: row.try_get("queued_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        attempt: row.try_get("attempt")?,
    })
}

/// Cancels running runs and their task instances that have not finished (pending, queued,
/// running, up_for_retry); finished tries keep their outcome. One statement, so atomic.
const CANCEL_RUNS: &str = "WITH cancelled AS ( \
         UPDATE dag_runs SET state = 'cancelled', ended_at = now() \
         WHERE id = ANY($1::uuid[]) AND state = 'running' \
         RETURNING id), \
     tasks AS ( \
         UPDATE task_instances SET state = 'cancelled', ended_at = coalesce(ended_at, now()) \
         WHERE run_id IN (SELECT id FROM cancelled) \
           AND state IN ('pending', 'queued', 'running', 'up_for_retry') \
         RETURNING 1) \
     SELECT count(*) FROM cancelled";

impl RunStore for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn admit(&self, admission: &Admission) -> Result<Admitted, StoreError> {
        self.admit_tx(admission).await
    }

    async fn dag_records(&self, dags: &[DagKey]) -> Result<Vec<DagRecord>, StoreError> {
        self.dag_records_q(dags).await
    }

    async fn recorded_triggers(
        &self,
        values: &[(DagKey, String)],
    ) -> Result<Vec<(DagKey, String)>, StoreError> {
        self.recorded_triggers_q(values).await
    }

    async fn backfill_record(
        &self,
        backfill: &BackfillRef,
    ) -> Result<Option<BackfillRecord>, StoreError> {
        self.backfill_record_q(backfill).await
    }

    async fn save_backfill(
        &self,
        backfill: &BackfillRef,
        record: &BackfillRecord,
    ) -> Result<(), StoreError> {
        self.save_backfill_q(backfill, record).await
    }

    async fn backfill_done(
        &self,
        backfill: &BackfillRef,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        self.backfill_done_q(backfill, from, to).await
    }

    async fn backfill_counts(&self, backfill: &BackfillRef) -> Result<BackfillCounts, StoreError> {
        self.backfill_counts_q(backfill).await
    }

    async fn last_ends(&self, namespace: Option<&str>) -> Result<Vec<LastEnds>, StoreError> {
        self.last_ends_q(namespace).await
    }

    async fn running_runs(&self, namespace: Option<&str>) -> Result<Vec<RunRow>, StoreError> {
        // served by the partial index dag_runs_running_idx (namespace leads it)
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM dag_runs WHERE state = 'running' AND ($1::text IS NULL OR namespace = $1) \
             ORDER BY namespace, dag_name, logical_date"
        ))
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn save_specs(&self, specs: &[SpecRow]) -> Result<(), StoreError> {
        if specs.is_empty() {
            return Ok(());
        }
        insert_specs(&self.pool, specs).await?;
        Ok(())
    }

    async fn specs(&self, hashes: &[String]) -> Result<Vec<SpecRow>, StoreError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT hash, spec FROM dag_specs WHERE hash = ANY($1::text[])")
            .bind(hashes)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SpecRow {
                    hash: row.try_get("hash")?,
                    spec: row.try_get("spec")?,
                })
            })
            .collect()
    }

    async fn pin_spec(&self, run_ids: &[Uuid], hash: &str) -> Result<(), StoreError> {
        if run_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE dag_runs SET spec_hash = $2 WHERE id = ANY($1::uuid[]) AND spec_hash IS NULL",
        )
        .bind(run_ids)
        .bind(hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn cancel_runs(&self, ids: &[Uuid]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let count: i64 = sqlx::query_scalar(CANCEL_RUNS)
            .bind(ids)
            .fetch_one(&self.pool)
            .await?;
        Ok(count.unsigned_abs())
    }

    async fn run(&self, id: Uuid) -> Result<Option<RunRow>, StoreError> {
        self.run_q(id).await
    }

    async fn pending_actions(
        &self,
        namespace: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunAction>, StoreError> {
        self.pending_actions_q(namespace, limit).await
    }

    async fn write_action(&self, write: &ActionWrite) -> Result<ActionWritten, StoreError> {
        self.write_action_tx(write).await
    }

    /// `filter.limit <= 0` means no limit.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        let mut q = QueryBuilder::new(concat!(
            "SELECT ",
            run_columns!(),
            " FROM dag_runs WHERE true"
        ));
        if let Some(ns) = &filter.namespace {
            q.push(" AND namespace = ").push_bind(ns.as_str());
        }
        if let Some(name) = &filter.dag_name {
            q.push(" AND dag_name = ").push_bind(name.as_str());
        }
        if let Some(state) = filter.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        q.push(" ORDER BY logical_date DESC, namespace, dag_name");
        if filter.limit > 0 {
            q.push(" LIMIT ").push_bind(filter.limit);
        }
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn task_instances(&self, run_ids: &[Uuid]) -> Result<Vec<TaskRow>, StoreError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT run_id, task_name, try_number, state, pool, pool_slots, pod_name, \
                 exit_code, message, queued_at, started_at, ended_at, attempt \
             FROM task_instances WHERE run_id = ANY($1::uuid[]) \
             ORDER BY run_id, task_name, try_number",
        )
        .bind(run_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn write_changes(&self, changes: &Changes) -> Result<Applied, StoreError> {
        if changes.is_empty() {
            return Ok(Applied::default());
        }
        let mut tx = self.pool.begin().await?;
        let moves = Self::write_moves(&mut tx, changes).await?;
        let retries = Self::write_retries(&mut tx, changes).await?;
        let run_ends = Self::write_run_ends(&mut tx, changes).await?;
        tx.commit().await?;
        Ok(Applied {
            moves,
            retries,
            run_ends,
        })
    }

    async fn recent_runs(
        &self,
        dags: &[DagKey],
        limit: i64,
    ) -> Result<Vec<RecentRuns>, StoreError> {
        if dags.is_empty() {
            return Ok(Vec::new());
        }
        let (namespaces, names) = dag_columns(dags.iter());
        // both served by the identity index (namespace, dag_name, logical_date), backwards
        let rows = sqlx::query(concat!(
            "SELECT r.* FROM UNNEST($1::text[], $2::text[]) AS k(ns, name) \
             CROSS JOIN LATERAL (SELECT ",
            run_columns!(),
            " FROM dag_runs d WHERE d.namespace = k.ns AND d.dag_name = k.name AND ",
            current!("d", "created_at"),
            " ORDER BY d.logical_date DESC LIMIT $3) r"
        ))
        .bind(&namespaces)
        .bind(&names)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let successes = sqlx::query(
            // when the newest success ended (not its logical date: a Backfill run's is
            // years back); served by dag_runs_last_success_idx
            concat!(
                "SELECT k.ns, k.name, (SELECT d.ended_at FROM dag_runs d \
                     WHERE d.namespace = k.ns AND d.dag_name = k.name AND d.state = 'success' \
                       AND d.ended_at IS NOT NULL AND ",
                current!("d", "created_at"),
                " ORDER BY d.ended_at DESC LIMIT 1) AS last_success \
                 FROM UNNEST($1::text[], $2::text[]) AS k(ns, name)"
            ),
        )
        .bind(&namespaces)
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<RecentRuns> = dags
            .iter()
            .map(|d| RecentRuns {
                dag: d.clone(),
                runs: Vec::new(),
                last_success: None,
            })
            .collect();
        let index: HashMap<DagKey, usize> = dags
            .iter()
            .enumerate()
            .map(|(i, d)| (d.clone(), i))
            .collect();
        for row in &rows {
            let run = run_from_row(row)?;
            if let Some(&i) = index.get(&run.dag) {
                out[i].runs.push(run);
            }
        }
        for row in &successes {
            let key = dag_key(row, "ns", "name")?;
            if let Some(&i) = index.get(&key) {
                out[i].last_success = row.try_get("last_success")?;
            }
        }
        Ok(out)
    }

    async fn runs_between(
        &self,
        dag: &DagKey,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<DateRun>, StoreError> {
        self.runs_page(dag, start, end, i64::MAX).await
    }

    async fn runs_page(
        &self,
        dag: &DagKey,
        from: DateTime<Utc>,
        end: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<DateRun>, StoreError> {
        // the identity index (namespace, dag_name, logical_date) serves range and order
        let rows = sqlx::query(
            "SELECT id, logical_date, state, backfill_name FROM dag_runs \
             WHERE namespace = $1 AND dag_name = $2 AND logical_date >= $3 AND logical_date < $4 \
             ORDER BY logical_date LIMIT $5",
        )
        .bind(&dag.namespace)
        .bind(&dag.name)
        .bind(from)
        .bind(end)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(DateRun {
                    id: row.try_get("id")?,
                    logical_date: row.try_get("logical_date")?,
                    state: RunState::parse(&state).ok_or(StoreError::Corrupt {
                        column: "dag_runs.state",
                        value: state,
                    })?,
                    backfill_name: row.try_get("backfill_name")?,
                })
            })
            .collect()
    }
}
