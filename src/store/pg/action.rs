//! Run actions (issue 16): recorded by any replica, carried out by the leader's executor with
//! the outcome written in the same transaction as the run's change.

use sqlx::postgres::PgRow;
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::epoch::current;
use super::{PgStore, dag_key, run_from_row};
use crate::store::action::{
    ActionKind, ActionOutcome, ActionWrite, ActionWritten, NewAction, RunAction, RunChange,
    TaskEffect, TaskTarget,
};
use crate::store::{NewTask, StoreError};

macro_rules! action_columns {
    () => {
        "id, namespace, dag_name, run_id, action, detail, task_name, downstream, upstream, \
         requested_by, requested_at, done_at, outcome, message"
    };
}

fn action_from_row(row: &PgRow) -> Result<RunAction, StoreError> {
    let kind: String = row.try_get("action")?;
    let outcome: Option<String> = row.try_get("outcome")?;
    let task: Option<String> = row.try_get("task_name")?;
    Ok(RunAction {
        task: match task {
            None => None,
            Some(task) => Some(TaskTarget {
                task,
                downstream: row.try_get("downstream")?,
                upstream: row.try_get("upstream")?,
            }),
        },
        id: row.try_get("id")?,
        dag: dag_key(row, "namespace", "dag_name")?,
        run_id: row.try_get("run_id")?,
        kind: ActionKind::parse(&kind).ok_or(StoreError::Corrupt {
            column: "run_actions.action",
            value: kind,
        })?,
        detail: row.try_get("detail")?,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        done_at: row.try_get("done_at")?,
        outcome: match outcome {
            None => None,
            Some(o) => Some(ActionOutcome::parse(&o).ok_or(StoreError::Corrupt {
                column: "run_actions.outcome",
                value: o,
            })?),
        },
        message: row.try_get("message")?,
    })
}

impl PgStore {
    /// Records an action (pending, or done when `action.done` says so).
    pub async fn record_action(&self, action: &NewAction) -> Result<RunAction, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO run_actions (namespace, dag_name, run_id, action, detail, requested_by, \
                 done_at, outcome, message, task_name, downstream, upstream) \
             VALUES ($1, $2, $3, $4, $5, $6, \
                 CASE WHEN $7::text IS NULL THEN NULL ELSE now() END, \
                 CASE WHEN $7::text IS NULL THEN NULL ELSE 'done' END, $7, $8, $9, $10) \
             RETURNING ",
            action_columns!()
        ))
        .bind(&action.dag.namespace)
        .bind(&action.dag.name)
        .bind(action.run_id)
        .bind(action.kind.as_str())
        .bind(&action.detail)
        .bind(&action.requested_by)
        .bind(action.done.as_deref())
        .bind(action.task.as_ref().map(|t| t.task.as_str()))
        .bind(action.task.as_ref().is_some_and(|t| t.downstream))
        .bind(action.task.as_ref().is_some_and(|t| t.upstream))
        .fetch_one(&self.pool)
        .await?;
        action_from_row(&row)
    }

    /// One recorded action.
    pub async fn action(&self, id: i64) -> Result<Option<RunAction>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM run_actions a WHERE id = $1 AND ",
            current!("a", "requested_at")
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// What was asked of a run, oldest first.
    pub async fn actions_of_run(&self, run: Uuid) -> Result<Vec<RunAction>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM run_actions WHERE run_id = $1 ORDER BY id"
        ))
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(action_from_row).collect()
    }

    pub(super) async fn pending_actions_q(
        &self,
        namespace: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunAction>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM run_actions \
             WHERE done_at IS NULL AND ($1::text IS NULL OR namespace = $1) \
             ORDER BY id LIMIT $2"
        ))
        .bind(namespace)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// Runs `run` again in a new attempt, if it is still `from` (none: it moved on): it is
    /// `running`, its start kept if it was running, now if it had ended.
    async fn run_again(
        tx: &mut sqlx::PgConnection,
        run: Uuid,
        from: crate::store::RunState,
    ) -> Result<Option<crate::store::RunRow>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE dag_runs SET state = 'running', attempt = attempt + 1, \
                 started_at = CASE WHEN state = 'running' THEN started_at ELSE now() END, \
                 ended_at = NULL \
             WHERE id = $1 AND state = $2 RETURNING ",
            run_columns!()
        ))
        .bind(run)
        .bind(from.as_str())
        .fetch_optional(tx)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub(super) async fn write_action_tx(
        &self,
        w: &ActionWrite,
    ) -> Result<ActionWritten, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let run = match &w.change {
            None => None,
            Some(RunChange::SetState {
                run,
                from,
                to,
                tries_to,
            }) => {
                let row = sqlx::query(concat!(
                    "WITH changed AS ( \
                         UPDATE dag_runs SET state = $3, \
                             ended_at = CASE WHEN $2 = 'running' THEN now() ELSE ended_at END \
                         WHERE id = $1 AND state = $2 RETURNING ",
                    run_columns!(),
                    "), \
                     tries AS ( \
                         UPDATE task_instances SET state = $4, \
                             ended_at = coalesce(ended_at, now()), \
                             message = coalesce(message, $5) \
                         WHERE run_id IN (SELECT id FROM changed) \
                           AND state IN ('pending', 'queued', 'running', 'up_for_retry') \
                         RETURNING 1) \
                     SELECT * FROM changed"
                ))
                .bind(run)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(tries_to.as_str())
                .bind(&w.message)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some(row) => Some(run_from_row(&row)?),
                    None => return Ok(ActionWritten::Stale),
                }
            }
            Some(RunChange::Rerun { run, from, tasks }) => {
                let Some(restarted) = Self::run_again(&mut tx, *run, *from).await? else {
                    return Ok(ActionWritten::Stale);
                };
                let tries: Vec<(Uuid, &NewTask)> = tasks.iter().map(|t| (*run, t)).collect();
                Self::insert_next_tries(&mut tx, &tries).await?;
                Some(restarted)
            }
            Some(RunChange::Tasks { run, from, changes }) => {
                let Some(changed) = Self::run_again(&mut tx, *run, *from).await? else {
                    return Ok(ActionWritten::Stale);
                };
                let mut next = Vec::new();
                for c in changes {
                    // the latest try must still be the one decided from, in the same state;
                    // an unfinished one a clear replaces ends `cancelled`
                    let to = match &c.effect {
                        TaskEffect::Set(to) => *to,
                        TaskEffect::NewTry if c.from.is_terminal() => c.from,
                        TaskEffect::NewTry => crate::graph::TaskState::Cancelled,
                    };
                    if c.try_number > 0 {
                        let done = sqlx::query(
                            "UPDATE task_instances i SET state = $5, \
                                 ended_at = CASE WHEN $4 = $5 THEN ended_at \
                                     ELSE coalesce(ended_at, now()) END, \
                                 message = CASE WHEN $4 = $5 THEN message ELSE $6 END \
                             WHERE run_id = $1 AND task_name = $2 AND try_number = $3 \
                               AND state = $4 \
                               AND NOT EXISTS (SELECT 1 FROM task_instances j \
                                   WHERE j.run_id = i.run_id AND j.task_name = i.task_name \
                                     AND j.try_number > i.try_number)",
                        )
                        .bind(run)
                        .bind(&c.task)
                        .bind(c.try_number)
                        .bind(c.from.as_str())
                        .bind(to.as_str())
                        .bind(&w.message)
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() != 1 {
                            // the task moved on since the decision: nothing is written
                            return Ok(ActionWritten::Stale);
                        }
                    }
                    if c.effect == TaskEffect::NewTry {
                        next.push(NewTask {
                            task_name: c.task.clone(),
                            pool: c.pool.clone(),
                            pool_slots: c.pool_slots,
                        });
                    }
                }
                let tries: Vec<(Uuid, &NewTask)> = next.iter().map(|t| (*run, t)).collect();
                Self::insert_next_tries(&mut tx, &tries).await?;
                Some(changed)
            }
        };
        let done = sqlx::query(
            "UPDATE run_actions SET done_at = now(), outcome = $2, message = $3 \
             WHERE id = $1 AND done_at IS NULL",
        )
        .bind(w.action)
        .bind(w.outcome.as_str())
        .bind(&w.message)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            // carried out already (by an earlier leader): nothing of this is written
            return Ok(ActionWritten::Stale);
        }
        tx.commit().await?;
        Ok(ActionWritten::Recorded(run.map(Box::new)))
    }
}
