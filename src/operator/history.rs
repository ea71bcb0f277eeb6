//! History does not outlive its namespace (issue 28, finding 8; docs/SEMANTICS.md, "History
//! and namespaces"). The leader's Namespace watch (`controller/namespace.rs`) tells this task
//! every namespace it sees and every one it sees go; the task records each namespace's current
//! incarnation (its uid and `creationTimestamp`) and deletes, a batch at a time, what was
//! recorded of the name before it. The store's reads already ignore those rows from the moment
//! the incarnation is recorded (`store/pg/epoch.rs`), so the deletion may take its time.
//!
//! After the watch's first list, namespaces with history that are not in the list are gone —
//! deleted while no leader watched — and go the same way. Until that first list is recorded
//! (or [`FIRST_LIST_WAIT`] passed) the leader does not start its DAG controller, so the
//! scheduler never reads an earlier incarnation's positions or trigger values.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use tokio::sync::{mpsc, watch};

use super::Shutdown;
use super::retention::{BATCH, PASS_INTERVAL, rest};
use crate::store::{NamespaceIncarnation, PgStore, PurgeStep, StoreError};

/// How long the leader waits for the first list of namespaces to be recorded before it
/// schedules anyway (a store that does not answer; the watch refused).
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(30);

/// What the Namespace watch saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sighting {
    /// a namespace, as it is now
    Seen(NamespaceIncarnation),
    /// a namespace deleted
    Gone(String),
    /// the watch's complete list (at start, and after every relist)
    Listed(Vec<NamespaceIncarnation>),
    /// the watch cannot list namespaces (no history is purged for want of them)
    Unavailable,
}

/// The incarnation of a namespace object (`None` without a name, uid or creation time).
pub fn incarnation(ns: &Namespace) -> Option<NamespaceIncarnation> {
    Some(NamespaceIncarnation {
        name: ns.metadata.name.clone()?,
        uid: ns.uid()?,
        created: ns
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(crate::k8s::to_chrono)?,
    })
}

/// The namespaces with history that the list proves gone: those not in it (of the watched one
/// only, when the operator watches one).
pub fn gone_after_list(
    with_history: &[String],
    listed: &[NamespaceIncarnation],
    watched: Option<&str>,
) -> Vec<String> {
    let present: HashSet<&str> = listed.iter().map(|n| n.name.as_str()).collect();
    with_history
        .iter()
        .filter(|ns| watched.is_none_or(|w| w == ns.as_str()))
        .filter(|ns| !present.contains(ns.as_str()))
        .cloned()
        .collect()
}

/// Where the Namespace watch tells what it saw.
#[derive(Clone)]
pub struct Sightings(mpsc::UnboundedSender<Sighting>);

impl Sightings {
    pub fn tell(&self, sighting: Sighting) {
        // the task is gone only at shutdown
        let _ = self.0.send(sighting);
    }
}

/// The history task's inputs and its "first list recorded" signal.
pub fn channel() -> (Sightings, Keeper, watch::Receiver<bool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = watch::channel(false);
    (
        Sightings(tx),
        Keeper {
            inbox: rx,
            pending: VecDeque::new(),
            ready: ready_tx,
        },
        ready_rx,
    )
}

/// The task that records incarnations and purges what came before them.
pub struct Keeper {
    inbox: mpsc::UnboundedReceiver<Sighting>,
    /// sightings not recorded yet (the store failed): retried first
    pending: VecDeque<Sighting>,
    ready: watch::Sender<bool>,
}

impl Keeper {
    /// Records and purges until shutdown (or the watch is gone).
    pub async fn run(
        mut self,
        store: PgStore,
        watched: Option<String>,
        pause: Duration,
        shutdown: Shutdown,
    ) {
        loop {
            self.record(&store, watched.as_deref()).await;
            match self.purge(&store, watched.as_deref(), pause).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    rows = n,
                    "history of deleted or re-created namespaces deleted"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete the history of deleted namespaces yet")
                }
            }
            // the store failed: retry soon, else at the next pass or sighting
            let wait = if self.pending.is_empty() {
                PASS_INTERVAL
            } else {
                Duration::from_secs(2)
            };
            tokio::select! {
                s = self.inbox.recv() => match s {
                    Some(s) => self.pending.push_back(s),
                    None => return,
                },
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Records every sighting waiting, in order; stops at the first the store refuses (kept
    /// for the next try).
    async fn record(&mut self, store: &PgStore, watched: Option<&str>) {
        while let Ok(s) = self.inbox.try_recv() {
            self.pending.push_back(s);
        }
        while let Some(s) = self.pending.front() {
            match record_one(store, s, watched).await {
                Ok(()) => {
                    if matches!(s, Sighting::Listed(_) | Sighting::Unavailable) {
                        self.ready.send_replace(true);
                    }
                    self.pending.pop_front();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a namespace's incarnation yet");
                    return;
                }
            }
        }
    }

    /// Deletes what is due, a batch at a time, recording new sightings between batches.
    /// Returns how many rows went.
    async fn purge(
        &mut self,
        store: &PgStore,
        watched: Option<&str>,
        pause: Duration,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        for due in store.purges_due().await? {
            for step in PurgeStep::ALL {
                loop {
                    let started = std::time::Instant::now();
                    let gone = store
                        .purge_namespace_step(step, &due.namespace, due.before, BATCH)
                        .await?;
                    total += gone;
                    if gone < BATCH.unsigned_abs() {
                        break;
                    }
                    tokio::time::sleep(rest(pause, started.elapsed())).await;
                    self.record(store, watched).await;
                }
            }
            if !store.namespace_purged(&due.namespace, due.before).await? {
                tracing::debug!(namespace = %due.namespace, "runs of an earlier incarnation still running; purged later");
            }
        }
        Ok(total)
    }
}

async fn record_one(
    store: &PgStore,
    sighting: &Sighting,
    watched: Option<&str>,
) -> Result<(), StoreError> {
    match sighting {
        Sighting::Seen(n) => store.record_namespaces(std::slice::from_ref(n)).await,
        Sighting::Gone(name) => store.namespace_gone(name).await,
        Sighting::Listed(list) => {
            store.record_namespaces(list).await?;
            let with_history = store.namespaces_with_history().await?;
            for name in gone_after_list(&with_history, list, watched) {
                store.namespace_gone(&name).await?;
            }
            Ok(())
        }
        Sighting::Unavailable => Ok(()),
    }
}

/// Waits until the first list is recorded, at most [`FIRST_LIST_WAIT`].
pub async fn first_list(mut ready: watch::Receiver<bool>) {
    let recorded = tokio::time::timeout(FIRST_LIST_WAIT, ready.wait_for(|r| *r)).await;
    if !matches!(recorded, Ok(Ok(_))) {
        tracing::warn!(
            wait = ?FIRST_LIST_WAIT,
            "the namespaces' incarnations are not recorded yet; scheduling anyway"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn inc(name: &str) -> NamespaceIncarnation {
        NamespaceIncarnation {
            name: name.into(),
            uid: format!("uid-{name}"),
            created: Utc::now(),
        }
    }

    #[test]
    fn a_namespace_with_history_missing_from_the_list_is_gone() {
        let history = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let listed = vec![inc("b"), inc("d")];
        assert_eq!(gone_after_list(&history, &listed, None), vec!["a", "c"]);
    }

    #[test]
    fn an_operator_watching_one_namespace_judges_only_that_one() {
        let history = vec!["a".to_string(), "b".to_string()];
        assert_eq!(gone_after_list(&history, &[], Some("b")), vec!["b"]);
        assert!(gone_after_list(&history, &[inc("b")], Some("b")).is_empty());
    }
}
