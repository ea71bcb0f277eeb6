//! Pod creates first: while the executor admits tries (runs handed over and not loaded yet, or
//! an admission whose creates are queued or in flight), the writers that can wait — the status
//! writer, the event publisher — hold back, for at most a bound, so the API server spends
//! itself on the Pods that start work. At a busy tick they are as many writes as the creates
//! (one status per DAG); held, they are coalesced and written right after.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Longest a writer waits while the executor admits.
pub const GIVE_WAY_MOST: Duration = Duration::from_secs(5);

/// Whether the executor is admitting; shared by the executor (which says so) and the writers
/// that wait for it.
#[derive(Clone, Debug)]
pub struct Admitting {
    state: Arc<watch::Sender<bool>>,
}

impl Default for Admitting {
    fn default() -> Self {
        Admitting {
            state: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl Admitting {
    /// The executor says whether it is admitting now.
    pub fn set(&self, admitting: bool) {
        self.state.send_if_modified(|now| {
            let changed = *now != admitting;
            *now = admitting;
            changed
        });
    }

    pub fn is_set(&self) -> bool {
        *self.state.borrow()
    }

    /// A writer's turn after the creates: waits while the executor admits (at most
    /// [`GIVE_WAY_MOST`]), then takes into `batch` what arrived on `queue` meanwhile.
    pub async fn give_way<T>(&self, queue: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>) {
        if self.settled(GIVE_WAY_MOST).await {
            while let Ok(item) = queue.try_recv() {
                batch.push(item);
            }
        }
    }

    /// Waits until the executor is not admitting, at most `most`. Says whether it waited.
    pub async fn settled(&self, most: Duration) -> bool {
        let mut state = self.state.subscribe();
        if !*state.borrow_and_update() {
            return false;
        }
        // a timeout is the bound doing its job; a closed channel cannot happen (we hold the sender)
        let _ = tokio::time::timeout(most, state.wait_for(|admitting| !admitting)).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writers_wait_for_the_admission_to_end_but_not_longer_than_the_bound() {
        let admitting = Admitting::default();
        assert!(
            !admitting.settled(Duration::from_secs(5)).await,
            "idle: no wait"
        );

        admitting.set(true);
        let started = tokio::time::Instant::now();
        assert!(admitting.settled(Duration::from_secs(5)).await);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "held for the bound"
        );

        let waiter = {
            let a = admitting.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                a.settled(Duration::from_secs(5)).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        admitting.set(false);
        let waited = waiter.await.expect("the waiter");
        assert_eq!(
            waited,
            Duration::from_secs(1),
            "released when the admission ends"
        );
    }
}
