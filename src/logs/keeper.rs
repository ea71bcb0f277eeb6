//! Keeps the end of each ended try's log in PostgreSQL, so it outlives the Pod.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::LogSource;
use crate::executor::EndedTry;
use crate::store::PgStore;

/// Tails fetched at once.
const CONCURRENCY: usize = 8;

/// Saves the last `max_bytes` of the log of every try it is told ended.
pub struct LogKeeper {
    source: Arc<dyn LogSource>,
    store: PgStore,
    max_bytes: usize,
}

impl LogKeeper {
    /// `max_bytes` 0: nothing is kept.
    pub fn new(source: Arc<dyn LogSource>, store: PgStore, max_bytes: usize) -> Self {
        LogKeeper {
            source,
            store,
            max_bytes,
        }
    }

    /// Fetches and saves one try's tail; a failure is logged (the Pod may be gone already).
    pub async fn keep(&self, ended: &EndedTry) {
        if self.max_bytes == 0 {
            return;
        }
        let tail = match self.source.tail(&ended.pod, self.max_bytes).await {
            Ok(Some(tail)) => tail,
            Ok(None) => {
                tracing::debug!(pod = %ended.pod, "no log kept: the Pod is gone");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "no log kept");
                return;
            }
        };
        if let Err(e) = self
            .store
            .save_log(&ended.key, &ended.pod.name, &tail.text, tail.complete)
            .await
        {
            tracing::warn!(try_ = %ended.key, error = %e, "could not save a log tail");
        }
    }

    /// Keeps the tails of the tries that arrive until the channel closes.
    pub async fn run(self, mut ended: mpsc::UnboundedReceiver<Vec<EndedTry>>) {
        while let Some(batch) = ended.recv().await {
            futures::stream::iter(batch.iter())
                .for_each_concurrent(CONCURRENCY, |t| self.keep(t))
                .await;
        }
    }
}
