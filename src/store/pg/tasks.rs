//! Task and run changes the executor decided, in one transaction (`write_changes`).

use sqlx::postgres::PgConnection;

use super::PgStore;
use crate::store::{Changes, StoreError};

/// Moves task tries from one state to another, each guarded by the state it leaves; returns
/// the position (1-based) of each move that took effect.
const MOVE_TASKS: &str = "UPDATE task_instances t SET state = m.to_state, \
         pod_name = COALESCE(m.pod_name, t.pod_name), \
         exit_code = COALESCE(m.exit_code, t.exit_code), \
         message = COALESCE(m.message, t.message), \
         queued_at = CASE WHEN m.stamp = 'queued' THEN m.at ELSE t.queued_at END, \
         started_at = CASE WHEN m.stamp = 'started' THEN m.at ELSE t.started_at END, \
         ended_at = CASE WHEN m.stamp = 'ended' THEN m.at ELSE t.ended_at END \
     FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], \
         $7::int4[], $8::text[], $9::text[], $10::timestamptz[]) WITH ORDINALITY \
         AS m(run_id, task_name, try_number, from_state, to_state, pod_name, exit_code, \
             message, stamp, at, ord) \
     WHERE t.run_id = m.run_id AND t.task_name = m.task_name \
       AND t.try_number = m.try_number AND t.state = m.from_state \
     RETURNING m.ord";

/// A retry in one statement: the try leaves `up_for_retry` for `failed` and the next try is
/// added `queued` (its pool, slots and attempt), both or neither. Returns the positions of
/// the retries that took effect.
const RETRY_TASKS: &str = "WITH failed AS ( \
         UPDATE task_instances t SET state = 'failed' \
         FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[]) WITH ORDINALITY \
             AS r(run_id, task_name, try_number, at, ord) \
         WHERE t.run_id = r.run_id AND t.task_name = r.task_name \
           AND t.try_number = r.try_number AND t.state = 'up_for_retry' \
         RETURNING t.run_id, t.task_name, t.try_number, t.pool, t.pool_slots, t.attempt, \
             r.at, r.ord), \
     added AS ( \
         INSERT INTO task_instances \
             (run_id, task_name, try_number, state, pool, pool_slots, queued_at, attempt) \
         SELECT run_id, task_name, try_number + 1, 'queued', pool, pool_slots, at, attempt \
         FROM failed ON CONFLICT DO NOTHING RETURNING 1) \
     SELECT ord FROM failed";

/// Ends running runs; returns the positions of the runs that were still running.
const END_RUNS: &str = "UPDATE dag_runs d SET state = r.state, ended_at = r.at \
     FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) WITH ORDINALITY \
         AS r(id, state, at, ord) \
     WHERE d.id = r.id AND d.state = 'running' \
     RETURNING r.ord";

/// `len` flags, true at the 1-based positions a statement returned.
fn positions(len: usize, returned: Vec<i64>) -> Vec<bool> {
    let mut flags = vec![false; len];
    for ord in returned {
        if let Some(flag) = usize::try_from(ord - 1).ok().and_then(|i| flags.get_mut(i)) {
            *flag = true;
        }
    }
    flags
}

impl PgStore {
    pub(super) async fn write_moves(
        tx: &mut PgConnection,
        c: &Changes,
    ) -> Result<Vec<bool>, StoreError> {
        if c.moves.is_empty() {
            return Ok(Vec::new());
        }
        let m = &c.moves;
        let returned: Vec<i64> = sqlx::query_scalar(MOVE_TASKS)
            .bind(m.iter().map(|x| x.key.run_id).collect::<Vec<_>>())
            .bind(
                m.iter()
                    .map(|x| x.key.task_name.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(m.iter().map(|x| x.key.try_number).collect::<Vec<_>>())
            .bind(m.iter().map(|x| x.from.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|x| x.to.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|x| x.pod_name.as_deref()).collect::<Vec<_>>())
            .bind(m.iter().map(|x| x.exit_code).collect::<Vec<_>>())
            .bind(m.iter().map(|x| x.message.as_deref()).collect::<Vec<_>>())
            .bind(m.iter().map(|x| x.stamp.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|x| x.at).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        Ok(positions(m.len(), returned))
    }

    pub(super) async fn write_retries(
        tx: &mut PgConnection,
        c: &Changes,
    ) -> Result<Vec<bool>, StoreError> {
        if c.retries.is_empty() {
            return Ok(Vec::new());
        }
        let r = &c.retries;
        let returned: Vec<i64> = sqlx::query_scalar(RETRY_TASKS)
            .bind(r.iter().map(|x| x.key.run_id).collect::<Vec<_>>())
            .bind(
                r.iter()
                    .map(|x| x.key.task_name.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(r.iter().map(|x| x.key.try_number).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.at).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        Ok(positions(r.len(), returned))
    }

    pub(super) async fn write_run_ends(
        tx: &mut PgConnection,
        c: &Changes,
    ) -> Result<Vec<bool>, StoreError> {
        if c.run_ends.is_empty() {
            return Ok(Vec::new());
        }
        let e = &c.run_ends;
        let returned: Vec<i64> = sqlx::query_scalar(END_RUNS)
            .bind(e.iter().map(|x| x.id).collect::<Vec<_>>())
            .bind(e.iter().map(|x| x.state.as_str()).collect::<Vec<_>>())
            .bind(e.iter().map(|x| x.at).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        Ok(positions(e.len(), returned))
    }
}
