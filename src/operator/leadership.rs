//! Leadership as the operator uses it: wait for the Lease, then hold it; the moment it cannot
//! be confirmed the process exits (it admits nothing more; its slots lapse within one lease
//! TTL; a restart comes back as a standby). On shutdown the Lease is given up so a standby
//! takes over at once. The Lease protocol itself is `leader.rs`.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::{OperatorError, Shutdown};
use crate::leader::{Elector, LeaseConfig};

/// Which Lease, and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    pub namespace: String,
    pub name: String,
    /// unique per process
    pub identity: String,
    pub lease_duration: Duration,
}

impl LeaderSettings {
    fn lease(&self) -> Result<LeaseConfig, OperatorError> {
        let duration = self.lease_duration.max(Duration::from_secs(3));
        let mut cfg = LeaseConfig::new(&self.namespace, &self.name, &self.identity);
        cfg.lease_duration = duration;
        cfg.renew_deadline = duration * 2 / 3;
        cfg.retry_period = duration / 7;
        cfg.validate()
            .map_err(|e| OperatorError::LeaderElection(e.to_string()))?;
        Ok(cfg)
    }
}

/// The Lease this replica holds; [`Leadership::step_down`] gives it up.
pub struct Leadership {
    done: tokio::sync::oneshot::Sender<()>,
    holder: JoinHandle<()>,
}

/// Waits until this replica holds the leader Lease; `None` when shut down first.
pub async fn lead(
    settings: &LeaderSettings,
    client: &kube::Client,
    shutdown: &Shutdown,
) -> Result<Option<Leadership>, OperatorError> {
    let mut elector = Elector::new(client.clone(), settings.lease()?);
    tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.name),
        identity = %settings.identity, "standby: waiting to become the leader");
    tokio::select! {
        r = elector.acquire() => r.map_err(|e| OperatorError::LeaderElection(e.to_string()))?,
        _ = shutdown.wait() => return Ok(None),
    }
    tracing::info!(identity = %settings.identity, "elected leader: scheduling");
    let (done, done_rx) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        tokio::select! {
            lost = elector.hold() => {
                tracing::error!(reason = %lost, "lost the leader Lease: stopping at once");
                std::process::exit(1);
            }
            _ = done_rx => {
                elector.release().await;
                tracing::info!("gave up the leader Lease");
            }
        }
    });
    Ok(Some(Leadership { done, holder }))
}

impl Leadership {
    /// Gives the Lease up (waits a few seconds at most).
    pub async fn step_down(self) {
        if self.done.send(()).is_err() {
            tracing::debug!("the Lease holder already ended");
        }
        if tokio::time::timeout(Duration::from_secs(3), self.holder)
            .await
            .is_err()
        {
            tracing::warn!("giving up the Lease took too long");
        }
    }
}
