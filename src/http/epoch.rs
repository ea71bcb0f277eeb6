//! Which incarnation of a namespace the API serves (issue 28, finding 8; docs/SEMANTICS.md,
//! "History and namespaces"). History is kept by namespace *name*; before a namespace's
//! history is read, the namespace is looked up (its uid and `creationTimestamp`, fresh for a
//! few seconds) and its incarnation recorded in the store if it is new to this replica, so the
//! store's reads leave out every row from before it — on every replica, whether or not a leader
//! has seen the namespace yet. A namespace that does not exist has no history to serve.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use super::api::ApiError;
use crate::operator::history::incarnation;
use crate::store::PgStore;

/// How long a namespace looked up is taken as it was.
const FRESH: Duration = Duration::from_secs(5);
/// Most namespaces remembered (past it, the stale ones are forgotten).
const REMEMBERED: usize = 4096;

/// What a lookup found: the namespace's uid, or none (it does not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Looked {
    at: Instant,
    uid: Option<String>,
}

/// The namespaces' current incarnations, as this replica last looked them up.
#[derive(Default)]
pub struct NamespaceEpochs {
    /// none: no lookups (tests of the reads alone): everything recorded is served
    api: Option<Api<Namespace>>,
    looked: Mutex<HashMap<String, Looked>>,
}

impl NamespaceEpochs {
    /// Looks namespaces up with `client` (the operator's: `get namespaces`).
    pub fn new(client: kube::Client) -> Self {
        NamespaceEpochs {
            api: Some(Api::all(client)),
            looked: Mutex::default(),
        }
    }

    /// Makes sure the store leaves out what was recorded of `namespace` before its current
    /// incarnation; 404 when it does not exist. Call it after the caller's right to read the
    /// namespace was checked (it must not tell others whether a namespace exists).
    pub async fn confirm(&self, store: &PgStore, namespace: &str) -> Result<(), ApiError> {
        let Some(api) = &self.api else {
            return Ok(());
        };
        let now = Instant::now();
        let before = self.remembered(namespace);
        let uid = match &before {
            Some(l) if now.duration_since(l.at) < FRESH => l.uid.clone(),
            _ => {
                let found = match api.get_opt(namespace).await {
                    Ok(found) => found,
                    Err(e) => {
                        return Err(ApiError::Unavailable(format!(
                            "cannot look up namespace {namespace:?}: {e}"
                        )));
                    }
                };
                let current = found.as_ref().and_then(incarnation);
                if let Some(c) = &current
                    && before.as_ref().and_then(|l| l.uid.as_ref()) != Some(&c.uid)
                {
                    store.record_namespaces(std::slice::from_ref(c)).await?;
                }
                let uid = current.map(|c| c.uid);
                self.remember(
                    namespace,
                    Looked {
                        at: now,
                        uid: uid.clone(),
                    },
                );
                uid
            }
        };
        match uid {
            Some(_) => Ok(()),
            None => Err(ApiError::NotFound(format!(
                "namespace {namespace:?} not found"
            ))),
        }
    }

    fn remembered(&self, namespace: &str) -> Option<Looked> {
        let looked = self.looked.lock().unwrap_or_else(|p| p.into_inner());
        looked.get(namespace).cloned()
    }

    fn remember(&self, namespace: &str, l: Looked) {
        let mut looked = self.looked.lock().unwrap_or_else(|p| p.into_inner());
        if looked.len() >= REMEMBERED {
            let at = l.at;
            looked.retain(|_, old| at.duration_since(old.at) < FRESH);
        }
        if looked.len() < REMEMBERED {
            looked.insert(namespace.to_string(), l);
        }
    }
}
