//! The Backfill controller (SPEC §2.3): hands every Backfill to the engine as it is created or
//! changed, and tells it when one is deleted (also deletions missed while the watch was down,
//! found by relisting). Planning, admission and status live in the engine
//! (`engine/backfill.rs`); the status writer writes what the engine reports.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use crate::api::Backfill;
use crate::engine::{BackfillInfo, Command};
use crate::store::DagKey;
use crate::telemetry::{ControllerKind, Metrics};

fn key_of(bf: &Backfill) -> Option<DagKey> {
    Some(DagKey::new(
        bf.metadata.namespace.clone()?,
        bf.metadata.name.clone()?,
    ))
}

/// A reference to a Backfill object for events.
pub fn backfill_reference(key: &DagKey) -> k8s_openapi::api::core::v1::ObjectReference {
    crate::k8s::reference("Backfill", key, None)
}

/// Watches Backfills until the engine goes away. Each event handled is observed as a
/// reconcile of controller `backfill`.
pub async fn run(api: Api<Backfill>, commands: mpsc::Sender<Command>, metrics: Arc<Metrics>) {
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut known: HashSet<DagKey> = HashSet::new();
    let mut relisted: HashSet<DagKey> = HashSet::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "backfill watch error (retrying)");
                continue;
            }
        };
        let started = std::time::Instant::now();
        let mut send = Vec::new();
        match event {
            watcher::Event::Apply(bf) | watcher::Event::InitApply(bf) => {
                if let Some(key) = key_of(&bf) {
                    relisted.insert(key.clone());
                    known.insert(key.clone());
                    send.push(Command::UpsertBackfill(Box::new(BackfillInfo {
                        key,
                        uid: bf.metadata.uid.clone().unwrap_or_default(),
                        generation: bf.metadata.generation,
                        spec: bf.spec.clone(),
                    })));
                }
            }
            watcher::Event::Delete(bf) => {
                if let Some(key) = key_of(&bf) {
                    known.remove(&key);
                    send.push(Command::RemoveBackfill(key));
                }
            }
            watcher::Event::Init => relisted.clear(),
            watcher::Event::InitDone => {
                let gone: Vec<DagKey> = known.difference(&relisted).cloned().collect();
                for key in gone {
                    known.remove(&key);
                    send.push(Command::RemoveBackfill(key));
                }
            }
        }
        for cmd in send {
            if commands.send(cmd).await.is_err() {
                return;
            }
        }
        metrics.reconcile_observed(
            ControllerKind::Backfill,
            started.elapsed().as_secs_f64(),
            true,
        );
    }
}
