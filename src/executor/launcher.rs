//! Where task Pods are created and deleted: the [`PodLauncher`] trait, its Kubernetes
//! implementation, and [`FakeLauncher`], an in-memory cluster for tests of the executor
//! that need no API server (the e2e tests drive the real one).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::plan::PodVerdict;
use super::pod::{self, LABEL_RUN};
use super::{ExecInput, PodEvent, PodSeen};
use crate::key::PoolKey;

/// Where a Pod lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a Pod could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// a Pod of that name exists already (409)
    #[error("a pod of that name exists")]
    Exists,
    /// the API server refused it for good (a 4xx other than 409 and 429): invalid, forbidden
    /// by policy or quota; creating it again would be refused again
    #[error("refused by the API server ({code}): {message}")]
    Refused { code: u16, message: String },
    /// it may work later: throttled (429), a server error, the network
    #[error("could not reach the API server: {0}")]
    Transient(String),
}

/// Creates and deletes task Pods.
pub trait PodLauncher: Clone + Send + Sync + 'static {
    fn create(&self, pod: Pod) -> impl Future<Output = Result<(), LaunchError>> + Send;

    /// The labels of an existing Pod (`None` when there is none).
    fn labels(
        &self,
        key: &PodKey,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, LaunchError>> + Send;

    /// Deletes a Pod; one that is gone already is no error.
    fn delete(&self, key: &PodKey) -> impl Future<Output = Result<(), LaunchError>> + Send;

    /// Deletes every Pod of a run in `namespace`.
    fn delete_run(
        &self,
        namespace: &str,
        run: Uuid,
    ) -> impl Future<Output = Result<(), LaunchError>> + Send;
}

/// The API server.
#[derive(Clone)]
pub struct KubeLauncher {
    client: kube::Client,
}

impl KubeLauncher {
    pub fn new(client: kube::Client) -> Self {
        KubeLauncher { client }
    }

    fn api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

fn launch_error(e: kube::Error) -> LaunchError {
    match e {
        kube::Error::Api(s) if s.code == 409 => LaunchError::Exists,
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 => {
            LaunchError::Refused {
                code: s.code,
                message: s.message,
            }
        }
        other => LaunchError::Transient(other.to_string()),
    }
}

impl PodLauncher for KubeLauncher {
    async fn create(&self, pod: Pod) -> Result<(), LaunchError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        self.api(&ns)
            .create(&PostParams::default(), &pod)
            .await
            .map(|_| ())
            .map_err(launch_error)
    }

    async fn labels(&self, key: &PodKey) -> Result<Option<BTreeMap<String, String>>, LaunchError> {
        match self.api(&key.namespace).get_opt(&key.name).await {
            Ok(pod) => Ok(pod.map(|p| p.metadata.labels.unwrap_or_default())),
            Err(e) => Err(LaunchError::Transient(e.to_string())),
        }
    }

    async fn delete(&self, key: &PodKey) -> Result<(), LaunchError> {
        match self
            .api(&key.namespace)
            .delete(&key.name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(LaunchError::Transient(e.to_string())),
        }
    }

    async fn delete_run(&self, namespace: &str, run: Uuid) -> Result<(), LaunchError> {
        let lp = ListParams::default().labels(&format!("{LABEL_RUN}={run}"));
        self.api(namespace)
            .delete_collection(&DeleteParams::default(), &lp)
            .await
            .map(|_| ())
            .map_err(|e| LaunchError::Transient(e.to_string()))
    }
}

/// A Pod of the fake cluster.
#[derive(Clone, Debug)]
pub struct FakePod {
    pub pod: Pod,
    pub verdict: PodVerdict,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Default)]
struct FakeState {
    pods: BTreeMap<PodKey, FakePod>,
    /// creates refused with this answer while it is set
    refuse: Option<LaunchError>,
    created: usize,
    /// how long the API server takes to answer a create
    latency: std::time::Duration,
    /// deletes fail (transiently) while set
    fail_deletes: bool,
    /// creates waiting for [`FakeLauncher::release_creates`]
    held_creates: usize,
}

/// An in-memory cluster for executor tests: creates and deletes Pods, tells the executor
/// about them as a watch would (through the input channel it was given), and lets the test
/// decide what each Pod does.
#[derive(Clone)]
pub struct FakeLauncher {
    state: Arc<Mutex<FakeState>>,
    events: Arc<Mutex<mpsc::UnboundedSender<ExecInput>>>,
    /// while true, creates wait before they reach the cluster (held in flight)
    hold: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FakeLauncher {
    pub fn new(events: mpsc::UnboundedSender<ExecInput>) -> Self {
        FakeLauncher {
            state: Arc::new(Mutex::new(FakeState::default())),
            events: Arc::new(Mutex::new(events)),
            hold: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, input: ExecInput) {
        let sent = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(input);
        if sent.is_err() {
            tracing::debug!("fake Pod event dropped: the executor has stopped");
        }
    }

    fn tell(&self, key: &PodKey, pod: &FakePod) {
        self.send(ExecInput::Pod(PodEvent::Applied(seen(key, pod))));
    }

    /// Tells another executor from now on (a restarted one), starting with a list of every
    /// Pod, as a new watch would.
    pub fn watch(&self, events: mpsc::UnboundedSender<ExecInput>) {
        let listed = self.lock().pods.iter().map(|(k, p)| seen(k, p)).collect();
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = events;
        self.send(ExecInput::Pod(PodEvent::Listed(listed)));
    }

    /// Every create is answered with `error` until [`Self::accept`].
    pub fn refuse(&self, error: LaunchError) {
        self.lock().refuse = Some(error);
    }

    pub fn accept(&self) {
        self.lock().refuse = None;
    }

    /// Every create is answered `latency` after it is sent (on the tokio clock).
    pub fn answer_after(&self, latency: std::time::Duration) {
        self.lock().latency = latency;
    }

    /// Creates sent from now on wait, in flight, until [`Self::release_creates`].
    pub fn hold_creates(&self) {
        self.hold.send_replace(true);
    }

    /// The held creates go on to the cluster (and later ones are not held).
    pub fn release_creates(&self) {
        self.hold.send_replace(false);
    }

    /// How many creates are held in flight now.
    pub fn held_creates(&self) -> usize {
        self.lock().held_creates
    }

    /// Deletes fail as a broken connection would, until told otherwise.
    pub fn fail_deletes(&self, fail: bool) {
        self.lock().fail_deletes = fail;
    }

    /// Puts a Pod in place without the executor asking (e.g. another run's Pod).
    pub fn insert(&self, pod: Pod) {
        let key = key_of(&pod);
        self.lock().pods.insert(
            key,
            FakePod {
                pod,
                verdict: PodVerdict::Running,
                finished_at: None,
            },
        );
    }

    /// Sets what a Pod does and tells the executor; false if there is no such Pod.
    pub fn set(&self, key: &PodKey, verdict: PodVerdict) -> bool {
        self.change(key, verdict, None)
    }

    /// A Pod finishes at `at` (its container's end, as the watch reports it).
    pub fn finish(
        &self,
        key: &PodKey,
        verdict: PodVerdict,
        at: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        self.change(key, verdict, Some(at))
    }

    fn change(
        &self,
        key: &PodKey,
        verdict: PodVerdict,
        finished_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> bool {
        let pod = {
            let mut state = self.lock();
            let Some(pod) = state.pods.get_mut(key) else {
                return false;
            };
            pod.verdict = verdict;
            pod.finished_at = finished_at;
            pod.clone()
        };
        self.tell(key, &pod);
        true
    }

    /// Deletes a Pod behind the executor's back and tells it.
    pub fn remove(&self, key: &PodKey) {
        let gone = self.lock().pods.remove(key);
        if let Some(pod) = gone {
            self.send(ExecInput::Pod(PodEvent::Deleted(seen(key, &pod))));
        }
    }

    /// The Pods that exist, by key.
    pub fn pods(&self) -> BTreeMap<PodKey, FakePod> {
        self.lock().pods.clone()
    }

    /// The Pods that exist and have not finished.
    pub fn live(&self) -> Vec<PodKey> {
        self.lock()
            .pods
            .iter()
            .filter(|(_, p)| {
                !matches!(p.verdict, PodVerdict::Succeeded | PodVerdict::Failed { .. })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// How many creates succeeded so far.
    pub fn created(&self) -> usize {
        self.lock().created
    }
}

fn key_of(pod: &Pod) -> PodKey {
    PodKey::new(
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn seen(key: &PodKey, pod: &FakePod) -> PodSeen {
    PodSeen {
        key: key.clone(),
        owner: pod::owner(pod.pod.metadata.labels.as_ref()),
        verdict: pod.verdict.clone(),
        finished_at: pod.finished_at,
    }
}

impl PodLauncher for FakeLauncher {
    async fn create(&self, pod: Pod) -> Result<(), LaunchError> {
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut hold = self.hold.subscribe();
        if *hold.borrow_and_update() {
            self.lock().held_creates += 1;
            // the sender lives as long as `self`: the wait ends when the test releases
            let _ = hold.wait_for(|held| !held).await;
            self.lock().held_creates -= 1;
        }
        let key = key_of(&pod);
        let created = {
            let mut state = self.lock();
            if let Some(e) = state.refuse.clone() {
                return Err(e);
            }
            if state.pods.contains_key(&key) {
                return Err(LaunchError::Exists);
            }
            let fake = FakePod {
                pod,
                verdict: PodVerdict::Running,
                finished_at: None,
            };
            state.pods.insert(key.clone(), fake.clone());
            state.created += 1;
            fake
        };
        self.tell(&key, &created);
        Ok(())
    }

    async fn labels(&self, key: &PodKey) -> Result<Option<BTreeMap<String, String>>, LaunchError> {
        Ok(self
            .lock()
            .pods
            .get(key)
            .map(|p| p.pod.metadata.labels.clone().unwrap_or_default()))
    }

    async fn delete(&self, key: &PodKey) -> Result<(), LaunchError> {
        if self.lock().fail_deletes {
            return Err(LaunchError::Transient("connection reset".into()));
        }
        self.remove(key);
        Ok(())
    }

    async fn delete_run(&self, namespace: &str, run: Uuid) -> Result<(), LaunchError> {
        if self.lock().fail_deletes {
            return Err(LaunchError::Transient("connection reset".into()));
        }
        let id = run.to_string();
        let keys: Vec<PodKey> = self
            .lock()
            .pods
            .iter()
            .filter(|(k, p)| {
                k.namespace == namespace
                    && p.pod
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_RUN))
                        == Some(&id)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.remove(&key);
        }
        Ok(())
    }
}

/// Pod slots per namespace/name, for tests (the operator reads Pools from a watch cache).
#[derive(Clone, Default)]
pub struct FixedPools(Arc<Mutex<HashMap<PoolKey, i32>>>);

impl FixedPools {
    pub fn set(&self, namespace: &str, name: &str, slots: i32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(PoolKey::new(namespace, name), slots);
    }
}

impl super::PoolDirectory for FixedPools {
    fn pools(&self) -> Vec<super::PoolInfo> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, slots)| super::PoolInfo {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                generation: None,
                slots: *slots,
            })
            .collect()
    }

    fn slots(&self, namespace: &str, name: &str) -> Option<i32> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&PoolKey::new(namespace, name))
            .copied()
    }
}
