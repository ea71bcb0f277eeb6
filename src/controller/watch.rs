//! One watch of a kind, followed for as long as its consumer wants: kube's watcher with its
//! default backoff, each event handed over with what it means for the objects that exist
//! ([`Relist`]: deletions, also those missed while the watch was down). Shared by the DAG
//! controller (deletions) and the Backfill controller.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::ops::ControlFlow;

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use super::relist::{Change, Relist};

/// Follows the watch of `api` until `handle` breaks (its consumer is gone) or the watch ends.
/// `identify` gives an object's key and uid (`None` for one without them); `handle` takes
/// each event with the changes it makes. Watch errors are logged (`kind` names the watched
/// kind) and retried by the backoff.
pub async fn follow<T, K, H, Fut>(
    api: Api<T>,
    kind: &'static str,
    identify: impl Fn(&T) -> Option<(K, String)>,
    mut handle: H,
) where
    T: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K: Clone + Eq + Hash,
    H: FnMut(watcher::Event<T>, Vec<Change<K>>) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut relist = Relist::default();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, kind, "watch error (retrying)");
                continue;
            }
        };
        let changes = relist.observe(&event, &identify);
        if handle(event, changes).await.is_break() {
            return;
        }
    }
}
