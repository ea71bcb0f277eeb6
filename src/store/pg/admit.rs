//! The admission transaction (issue 13): spec versions, trigger claims, new runs with their
//! task instances, re-runs, Backfill dates, schedule positions — all or nothing.
//!
//! Batched: whole batches go as arrays expanded with `UNNEST`, so one admission costs a
//! constant number of statements whatever its size (batches beyond [`PgStore::RUN_CHUNK`]
//! runs or [`PgStore::TASK_CHUNK`] task instances take one more statement per chunk, still in
//! the same transaction).

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::{PgStore, dag_columns, insert_specs, run_from_row, trigger_of};
use crate::store::{
    Admission, Admitted, DagKey, NewRun, NewTask, RefusedTrigger, Rerun, RunRow, RunState,
    StoreError, TriggerOutcome,
};

const INSERT_RUNS: &str = concat!(
    "INSERT INTO dag_runs (id, namespace, dag_name, dag_uid, run_type, backfill_name, \
         logical_date, data_interval_start, data_interval_end, priority, state, params, \
         attempt, started_at, spec_hash) \
     SELECT r.id, r.namespace, r.dag_name, r.dag_uid, r.run_type, r.backfill_name, \
         r.logical_date, r.data_interval_start, r.data_interval_end, r.priority, 'running', \
         r.params, 1, now(), r.spec_hash \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::int4[], $11::jsonb[], \
         $12::text[]) \
         WITH ORDINALITY AS r(id, namespace, dag_name, dag_uid, run_type, backfill_name, \
             logical_date, data_interval_start, data_interval_end, priority, params, \
             spec_hash, ord) \
     ORDER BY r.ord \
     ON CONFLICT (namespace, dag_name, logical_date) DO NOTHING \
     RETURNING ",
    run_columns!()
);

const INSERT_TASKS: &str = "INSERT INTO task_instances \
         (run_id, task_name, try_number, state, pool, pool_slots) \
     SELECT t.run_id, t.task_name, 1, 'pending', t.pool, t.pool_slots \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[]) \
         AS t(run_id, task_name, pool, pool_slots)";

/// Claims trigger values for their runs: a value recorded before (another replica, an earlier
/// process) is not claimed again. Returns the values claimed.
const CLAIM_TRIGGERS: &str = "INSERT INTO dag_triggers (namespace, dag_name, value, logical_date, outcome) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) \
     ORDER BY 1, 2, 3 \
     ON CONFLICT (namespace, dag_name, value) DO NOTHING \
     RETURNING namespace, dag_name, value";

/// What a claimed trigger came to: its run, or refused (its logical date was taken).
const SETTLE_TRIGGERS: &str = "UPDATE dag_triggers t SET run_id = s.run_id, outcome = s.outcome, \
         message = s.message \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[]) \
         AS s(namespace, dag_name, value, run_id, outcome, message) \
     WHERE t.namespace = s.namespace AND t.dag_name = s.dag_name AND t.value = s.value";

/// Records the dates Backfills are done with.
const BACKFILL_DATES: &str = "INSERT INTO backfill_dates \
         (namespace, backfill, backfill_uid, logical_date, run_id, outcome) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::uuid[], \
         $6::text[]) \
     ON CONFLICT DO NOTHING";

/// Moves schedule positions forward (a re-created DAG's object starts its own).
const POSITIONS: &str = "INSERT INTO dag_positions \
         (namespace, dag_name, dag_uid, schedule, schedule_since, last_tick, buffered) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
         $6::timestamptz[], $7::timestamptz[]) ORDER BY 1, 2 \
     ON CONFLICT (namespace, dag_name) DO UPDATE SET \
         dag_uid = EXCLUDED.dag_uid, schedule = EXCLUDED.schedule, \
         schedule_since = EXCLUDED.schedule_since, buffered = EXCLUDED.buffered, \
         last_tick = CASE WHEN dag_positions.dag_uid = EXCLUDED.dag_uid \
             THEN GREATEST(dag_positions.last_tick, EXCLUDED.last_tick) \
             ELSE EXCLUDED.last_tick END";

/// The array parameters of SETTLE_TRIGGERS: namespace, DAG, value, run, outcome, message.
type TriggerColumns<'a> = (
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<Option<Uuid>>,
    Vec<&'a str>,
    Vec<Option<String>>,
);

/// The array parameters of BACKFILL_DATES: namespace, Backfill, uid, date, run, outcome.
type DateColumns<'a> = (
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<chrono::DateTime<chrono::Utc>>,
    Vec<Option<Uuid>>,
    Vec<&'a str>,
);

impl PgStore {
    /// Writes one admission in one transaction; see [`crate::store::RunStore::admit`].
    pub(super) async fn admit_tx(&self, a: &Admission) -> Result<Admitted, StoreError> {
        if a.is_empty() {
            return Ok(Admitted::default());
        }
        let mut tx = self.pool.begin().await?;
        if !a.specs.is_empty() {
            Self::save_specs_tx(&mut tx, &a.specs).await?;
        }
        // runs created failed (a dependsOn wait timed out) go the way of any run — their
        // trigger value claimed and settled, their Backfill date recorded — then fail
        let all: Vec<&NewRun> = a
            .runs
            .iter()
            .chain(a.failed.iter().map(|f| &f.run))
            .collect();
        let claimed = Self::claim_triggers(&mut tx, &all).await?;
        let mut triggers = Vec::new();
        let mut fail_as: Vec<Option<&str>> = Vec::new();
        let mut runs: Vec<&NewRun> = Vec::new();
        for (i, r) in all.iter().enumerate() {
            if let Some(value) = &r.trigger {
                if !claimed.contains(&(r.dag.clone(), value.clone())) {
                    triggers.push((r.dag.clone(), value.clone(), TriggerOutcome::Known));
                    continue;
                }
            }
            runs.push(r);
            fail_as.push(
                i.checked_sub(a.runs.len())
                    .and_then(|k| a.failed.get(k))
                    .map(|f| f.message.as_str()),
            );
        }
        let inserted = Self::insert_runs_tx(&mut tx, &runs).await?;
        triggers.extend(Self::settle_triggers(&mut tx, &runs, &inserted).await?);
        triggers.extend(Self::refuse_triggers(&mut tx, &a.refused).await?);
        let rerun = Self::rerun_tx(&mut tx, &a.reruns).await?;
        Self::record_backfill_dates(&mut tx, a, &runs, &inserted, &rerun).await?;
        let mut out: Vec<RunRow> = Vec::new();
        let mut failed: Vec<(RunRow, &str)> = Vec::new();
        for (row, why) in inserted.into_iter().zip(fail_as) {
            match (row, why) {
                (Some(mut row), Some(why)) => {
                    row.state = RunState::Failed;
                    failed.push((row, why));
                }
                (Some(row), None) => out.push(row),
                (None, _) => {}
            }
        }
        Self::fail_runs_tx(&mut tx, &failed).await?;
        Self::move_positions(&mut tx, a).await?;
        tx.commit().await?;
        out.extend(rerun);
        let failed = failed.into_iter().map(|(row, _)| row).collect();
        Ok(Admitted {
            runs: out,
            failed,
            triggers,
        })
    }

    async fn save_specs_tx(
        tx: &mut PgConnection,
        specs: &[crate::store::SpecRow],
    ) -> Result<(), StoreError> {
        insert_specs(&mut *tx, specs).await
    }

    /// Claims the trigger values of the runs that carry one; returns those claimed.
    async fn claim_triggers(
        tx: &mut PgConnection,
        runs: &[&NewRun],
    ) -> Result<HashSet<(DagKey, String)>, StoreError> {
        let with: Vec<&NewRun> = runs
            .iter()
            .copied()
            .filter(|r| r.trigger.is_some())
            .collect();
        if with.is_empty() {
            return Ok(HashSet::new());
        }
        let (namespaces, names) = dag_columns(with.iter().map(|r| &r.dag));
        let rows = sqlx::query(CLAIM_TRIGGERS)
            .bind(namespaces)
            .bind(names)
            .bind(
                with.iter()
                    .map(|r| r.trigger.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(with.iter().map(|r| r.logical_date).collect::<Vec<_>>())
            .bind(vec!["created"; with.len()])
            .fetch_all(&mut *tx)
            .await?;
        rows.iter().map(trigger_of).collect()
    }

    /// Records what each claimed trigger came to: its run, or refused (date taken).
    async fn settle_triggers(
        tx: &mut PgConnection,
        runs: &[&NewRun],
        inserted: &[Option<RunRow>],
    ) -> Result<Vec<(DagKey, String, TriggerOutcome)>, StoreError> {
        let mut out = Vec::new();
        let (mut ns, mut dag, mut value, mut run_id, mut outcome, mut message): TriggerColumns =
            Default::default();
        for (run, row) in runs.iter().zip(inserted) {
            let Some(v) = &run.trigger else { continue };
            ns.push(run.dag.namespace.as_str());
            dag.push(run.dag.name.as_str());
            value.push(v.as_str());
            match row {
                Some(row) => {
                    run_id.push(Some(row.id));
                    outcome.push("created");
                    message.push(None);
                    out.push((run.dag.clone(), v.clone(), TriggerOutcome::Created(row.id)));
                }
                None => {
                    let why = format!(
                        "a run for logical date {} exists already",
                        run.logical_date.to_rfc3339()
                    );
                    run_id.push(None::<Uuid>);
                    outcome.push("refused");
                    message.push(Some(why.clone()));
                    out.push((run.dag.clone(), v.clone(), TriggerOutcome::Refused(why)));
                }
            }
        }
        if !value.is_empty() {
            sqlx::query(SETTLE_TRIGGERS)
                .bind(ns)
                .bind(dag)
                .bind(value)
                .bind(run_id)
                .bind(outcome)
                .bind(message)
                .execute(&mut *tx)
                .await?;
        }
        Ok(out)
    }

    /// Records trigger values refused before admission (once: a value recorded before stays
    /// as it was).
    async fn refuse_triggers(
        tx: &mut PgConnection,
        refused: &[RefusedTrigger],
    ) -> Result<Vec<(DagKey, String, TriggerOutcome)>, StoreError> {
        if refused.is_empty() {
            return Ok(Vec::new());
        }
        let (namespaces, names) = dag_columns(refused.iter().map(|r| &r.dag));
        let rows = sqlx::query(
            "INSERT INTO dag_triggers (namespace, dag_name, value, outcome, message) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             ORDER BY 1, 2, 3 ON CONFLICT (namespace, dag_name, value) DO NOTHING \
             RETURNING namespace, dag_name, value",
        )
        .bind(namespaces)
        .bind(names)
        .bind(refused.iter().map(|r| r.value.as_str()).collect::<Vec<_>>())
        .bind(vec!["refused"; refused.len()])
        .bind(
            refused
                .iter()
                .map(|r| r.message.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut recorded: HashSet<(String, String, String)> = HashSet::new();
        for row in &rows {
            recorded.insert((
                row.try_get("namespace")?,
                row.try_get("dag_name")?,
                row.try_get("value")?,
            ));
        }
        Ok(refused
            .iter()
            .map(|r| {
                let fresh = recorded.contains(&(
                    r.dag.namespace.clone(),
                    r.dag.name.clone(),
                    r.value.clone(),
                ));
                let outcome = if fresh {
                    TriggerOutcome::Refused(r.message.clone())
                } else {
                    TriggerOutcome::Known
                };
                (r.dag.clone(), r.value.clone(), outcome)
            })
            .collect())
    }

    /// Runs created failed, never started: the run and its tasks (`upstream_failed`, with
    /// why) end at once.
    async fn fail_runs_tx(
        tx: &mut PgConnection,
        failed: &[(RunRow, &str)],
    ) -> Result<(), StoreError> {
        if failed.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = failed.iter().map(|(row, _)| row.id).collect();
        let messages: Vec<&str> = failed.iter().map(|(_, why)| *why).collect();
        sqlx::query(
            "UPDATE dag_runs SET state = 'failed', ended_at = now() WHERE id = ANY($1::uuid[])",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE task_instances t SET state = 'upstream_failed', ended_at = now(), \
                 message = m.message \
             FROM UNNEST($1::uuid[], $2::text[]) AS m(run_id, message) \
             WHERE t.run_id = m.run_id",
        )
        .bind(&ids)
        .bind(&messages)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Inserts runs with their task instances; returns, for each run given, the row if it
    /// was created (none when its logical date was taken, also within the batch).
    async fn insert_runs_tx(
        tx: &mut PgConnection,
        runs: &[&NewRun],
    ) -> Result<Vec<Option<RunRow>>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        // Rows are inserted in identity order, so two writers with overlapping batches (two
        // replicas in split brain) wait on each other instead of deadlocking.
        let mut order: Vec<(Uuid, &NewRun)> = runs.iter().map(|r| (Uuid::new_v4(), *r)).collect();
        let given: Vec<Uuid> = order.iter().map(|(id, _)| *id).collect();
        order.sort_by(|(_, a), (_, b)| {
            (&a.dag.namespace, &a.dag.name, a.logical_date).cmp(&(
                &b.dag.namespace,
                &b.dag.name,
                b.logical_date,
            ))
        });
        let mut inserted: HashMap<Uuid, RunRow> = HashMap::new();
        for chunk in order.chunks(Self::RUN_CHUNK) {
            for row in Self::insert_run_chunk(tx, chunk).await? {
                inserted.insert(row.id, row);
            }
        }
        let mut tasks: Vec<(Uuid, &NewTask)> = Vec::new();
        for (id, run) in &order {
            if !inserted.contains_key(id) {
                continue;
            }
            // Task names are unique per DAG (the CRD's list-map key); should a duplicate slip
            // through, the first one wins rather than failing the whole batch forever.
            let mut seen = HashSet::with_capacity(run.tasks.len());
            for task in &run.tasks {
                if seen.insert(task.task_name.as_str()) {
                    tasks.push((*id, task));
                } else {
                    tracing::warn!(
                        dag = %run.dag,
                        task = %task.task_name,
                        "duplicate task name in a run; the first one is kept"
                    );
                }
            }
        }
        for chunk in tasks.chunks(Self::TASK_CHUNK) {
            Self::insert_task_chunk(tx, chunk).await?;
        }
        Ok(given.iter().map(|id| inserted.remove(id)).collect())
    }

    /// Records the dates Backfills are done with: the runs they created or re-ran, and the
    /// dates they skipped.
    async fn record_backfill_dates(
        tx: &mut PgConnection,
        a: &Admission,
        runs: &[&NewRun],
        inserted: &[Option<RunRow>],
        rerun: &[RunRow],
    ) -> Result<(), StoreError> {
        let (mut ns, mut bf, mut uid, mut date, mut run_id, mut outcome): DateColumns =
            Default::default();
        for (run, row) in runs.iter().zip(inserted) {
            let (Some(name), Some(u), Some(row)) = (&run.backfill_name, &run.backfill_uid, row)
            else {
                continue;
            };
            ns.push(run.dag.namespace.as_str());
            bf.push(name.as_str());
            uid.push(u.as_str());
            date.push(run.logical_date);
            run_id.push(Some(row.id));
            outcome.push("created");
        }
        for row in rerun {
            let Some(r) = a.reruns.iter().find(|r| r.id == row.id) else {
                continue;
            };
            ns.push(row.dag.namespace.as_str());
            bf.push(r.backfill_name.as_str());
            uid.push(r.backfill_uid.as_str());
            date.push(row.logical_date);
            run_id.push(Some(row.id));
            outcome.push("rerun");
        }
        for s in &a.skips {
            ns.push(s.backfill.namespace.as_str());
            bf.push(s.backfill.name.as_str());
            uid.push(s.backfill.uid.as_str());
            date.push(s.logical_date);
            run_id.push(None::<Uuid>);
            outcome.push("skipped");
        }
        if ns.is_empty() {
            return Ok(());
        }
        sqlx::query(BACKFILL_DATES)
            .bind(ns)
            .bind(bf)
            .bind(uid)
            .bind(date)
            .bind(run_id)
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn move_positions(tx: &mut PgConnection, a: &Admission) -> Result<(), StoreError> {
        let p = &a.positions;
        if p.is_empty() {
            return Ok(());
        }
        let (namespaces, names) = dag_columns(p.iter().map(|x| &x.dag));
        sqlx::query(POSITIONS)
            .bind(namespaces)
            .bind(names)
            .bind(p.iter().map(|x| x.dag_uid.as_str()).collect::<Vec<_>>())
            .bind(p.iter().map(|x| x.schedule.as_str()).collect::<Vec<_>>())
            .bind(p.iter().map(|x| x.since).collect::<Vec<_>>())
            .bind(p.iter().map(|x| x.last_tick).collect::<Vec<_>>())
            .bind(p.iter().map(|x| x.buffered).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Inserts one chunk of runs (already in lock order) and returns the rows inserted.
    async fn insert_run_chunk(
        tx: &mut PgConnection,
        chunk: &[(Uuid, &NewRun)],
    ) -> Result<Vec<RunRow>, StoreError> {
        let n = chunk.len();
        let mut ids = Vec::with_capacity(n);
        let mut namespaces = Vec::with_capacity(n);
        let mut dag_names = Vec::with_capacity(n);
        let mut dag_uids = Vec::with_capacity(n);
        let mut run_types = Vec::with_capacity(n);
        let mut backfills = Vec::with_capacity(n);
        let mut logical_dates = Vec::with_capacity(n);
        let mut interval_starts = Vec::with_capacity(n);
        let mut interval_ends = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut params = Vec::with_capacity(n);
        let mut spec_hashes = Vec::with_capacity(n);
        for (id, run) in chunk {
            ids.push(*id);
            namespaces.push(run.dag.namespace.as_str());
            dag_names.push(run.dag.name.as_str());
            dag_uids.push(run.dag_uid.as_str());
            run_types.push(run.run_type.as_str());
            backfills.push(run.backfill_name.as_deref());
            logical_dates.push(run.logical_date);
            interval_starts.push(run.data_interval_start);
            interval_ends.push(run.data_interval_end);
            priorities.push(run.priority);
            params.push(&run.params);
            spec_hashes.push(run.spec_hash.as_deref());
        }
        let rows = sqlx::query(INSERT_RUNS)
            .bind(ids)
            .bind(namespaces)
            .bind(dag_names)
            .bind(dag_uids)
            .bind(run_types)
            .bind(backfills)
            .bind(logical_dates)
            .bind(interval_starts)
            .bind(interval_ends)
            .bind(priorities)
            .bind(params)
            .bind(spec_hashes)
            .fetch_all(&mut *tx)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn insert_task_chunk(
        tx: &mut PgConnection,
        chunk: &[(Uuid, &NewTask)],
    ) -> Result<(), StoreError> {
        let n = chunk.len();
        let mut run_ids = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut pools = Vec::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        for (run_id, task) in chunk {
            run_ids.push(*run_id);
            names.push(task.task_name.as_str());
            pools.push(task.pool.as_deref());
            slots.push(task.pool_slots);
        }
        sqlx::query(INSERT_TASKS)
            .bind(run_ids)
            .bind(names)
            .bind(pools)
            .bind(slots)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Re-runs finished runs in place (Backfill `reprocess`): `attempt` + 1, `running` now,
    /// new `pending` tries after each task's latest; a running run is left alone. Returns the
    /// runs re-started.
    async fn rerun_tx(tx: &mut PgConnection, reruns: &[Rerun]) -> Result<Vec<RunRow>, StoreError> {
        if reruns.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = reruns.iter().map(|r| r.id).collect();
        let backfills: Vec<&str> = reruns.iter().map(|r| r.backfill_name.as_str()).collect();
        let params: Vec<&serde_json::Value> = reruns.iter().map(|r| &r.params).collect();
        let hashes: Vec<Option<&str>> = reruns.iter().map(|r| r.spec_hash.as_deref()).collect();
        let rows = sqlx::query(concat!(
            "UPDATE dag_runs SET state = 'running', attempt = dag_runs.attempt + 1, \
                 backfill_name = r.r_backfill, params = r.r_params, started_at = now(), \
                 ended_at = NULL, spec_hash = COALESCE(r.r_spec, dag_runs.spec_hash) \
             FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[]) \
                 AS r(r_id, r_backfill, r_params, r_spec) \
             WHERE dag_runs.id = r.r_id AND dag_runs.state <> 'running' \
             RETURNING ",
            run_columns!()
        ))
        .bind(&ids)
        .bind(&backfills)
        .bind(&params)
        .bind(&hashes)
        .fetch_all(&mut *tx)
        .await?;
        let restarted: Vec<RunRow> = rows.iter().map(run_from_row).collect::<Result<_, _>>()?;
        let mut tries: Vec<(Uuid, &NewTask)> = Vec::new();
        for run in &restarted {
            if let Some(rerun) = reruns.iter().find(|r| r.id == run.id) {
                tries.extend(rerun.tasks.iter().map(|t| (run.id, t)));
            }
        }
        Self::insert_next_tries(tx, &tries).await?;
        Ok(restarted)
    }

    /// A new `pending` try for each (run, task), after the task's latest try, in the run's
    /// current attempt (a re-run in place: earlier tries stay).
    pub(super) async fn insert_next_tries(
        tx: &mut PgConnection,
        tries: &[(Uuid, &NewTask)],
    ) -> Result<(), StoreError> {
        let (mut run_ids, mut names, mut pools, mut slots) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (run, task) in tries {
            run_ids.push(*run);
            names.push(task.task_name.as_str());
            pools.push(task.pool.as_deref());
            slots.push(task.pool_slots);
        }
        sqlx::query(
            "INSERT INTO task_instances (run_id, task_name, try_number, state, pool, pool_slots, attempt) \
             SELECT t.run_id, t.task_name, \
                 COALESCE((SELECT max(i.try_number) FROM task_instances i \
                     WHERE i.run_id = t.run_id AND i.task_name = t.task_name), 0) + 1, \
                 'pending', t.pool, t.pool_slots, d.attempt \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[]) \
                 AS t(run_id, task_name, pool, pool_slots) \
             JOIN dag_runs d ON d.id = t.run_id",
        )
        .bind(&run_ids)
        .bind(&names)
        .bind(&pools)
        .bind(&slots)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}
