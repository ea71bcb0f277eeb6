//! The kept ends of task logs (`task_logs`).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::PgStore;
use crate::store::{StoreError, TryKey};

/// A try's kept log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLog {
    pub pod_name: String,
    /// the end of the log
    pub text: String,
    /// `text` is the whole log
    pub complete: bool,
    pub saved_at: DateTime<Utc>,
}

impl PgStore {
    /// Saves a try's log tail (a tail saved before is kept: the first one written wins).
    pub async fn save_log(
        &self,
        key: &TryKey,
        pod_name: &str,
        text: &str,
        complete: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO task_logs (run_id, task_name, try_number, pod_name, tail, complete) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(key.run_id)
        .bind(&key.task_name)
        .bind(key.try_number)
        .bind(pod_name)
        // PostgreSQL text cannot hold NUL
        .bind(text.replace('\0', ""))
        .bind(complete)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A try's kept log, if any.
    pub async fn log(&self, key: &TryKey) -> Result<Option<StoredLog>, StoreError> {
        let row = sqlx::query(
            "SELECT pod_name, tail, complete, saved_at FROM task_logs \
             WHERE run_id = $1 AND task_name = $2 AND try_number = $3",
        )
        .bind(key.run_id)
        .bind(&key.task_name)
        .bind(key.try_number)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StoredLog {
                pod_name: r.try_get("pod_name")?,
                text: r.try_get("tail")?,
                complete: r.try_get("complete")?,
                saved_at: r.try_get("saved_at")?,
            })
        })
        .transpose()
    }
}
