//! Leader election on a real `coordination.k8s.io/v1` Lease (SPEC §11 "two replicas"):
//! exactly one of two replicas leads; a standby takes over when the leader stops renewing
//! (within lease duration + retry period, never earlier than the lease allows) or releases;
//! a leader whose Lease is overwritten by another identity steps down within two renewals.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dag_operator::leader::{Elector, LeaderLost, LeaseConfig};
use dag_operator_e2e::{TestNamespace, eventually, plane};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LEASE: &str = "dag-operator-leader";
const DURATION: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);
/// API round trips and the 100 ms polling of `eventually`.
const SLACK: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting,
    Leader(Instant),
    Lost(LeaderLost, Instant),
    Released,
}

/// One replica: an Elector in its own task, reporting its state.
struct Replica {
    identity: String,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Replica {
    async fn start(ns: &TestNamespace, identity: &str) -> Replica {
        let cfg = LeaseConfig {
            namespace: ns.name.clone(),
            name: LEASE.to_string(),
            identity: identity.to_string(),
            lease_duration: DURATION,
            renew_deadline: RENEW,
            retry_period: RETRY,
        };
        let mut elector = Elector::new(plane().client().await, cfg);
        let state = Arc::new(Mutex::new(State::Waiting));
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            elector.acquire().await.expect("the config is valid");
            set(&shared, State::Leader(Instant::now()));
            let lost = tokio::select! {
                lost = elector.hold() => Some(lost),
                _ = stopped => None,
            };
            match lost {
                Some(lost) => set(&shared, State::Lost(lost, Instant::now())),
                None => {
                    elector.release().await;
                    set(&shared, State::Released);
                }
            }
        });
        Replica {
            identity: identity.to_string(),
            state,
            stop: Some(stop),
            task,
        }
    }

    fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn leading_since(&self) -> Option<Instant> {
        match self.state() {
            State::Leader(at) => Some(at),
            _ => None,
        }
    }

    /// Stops renewing at once, as a killed process would: no release.
    fn crash(&self) {
        self.task.abort();
    }

    /// Graceful shutdown: stop holding and release the Lease.
    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn set(state: &Mutex<State>, value: State) {
    *state.lock().unwrap_or_else(|e| e.into_inner()) = value;
}

async fn leases(ns: &TestNamespace) -> Api<Lease> {
    Api::namespaced(plane().client().await, &ns.name)
}

async fn spec(api: &Api<Lease>) -> LeaseSpec {
    api.get(LEASE)
        .await
        .expect("the lease is readable")
        .spec
        .expect("the lease has a spec")
}

/// Waits until `replica` leads; returns when it started leading.
async fn leads(replica: &Replica, within: Duration) -> Instant {
    eventually(within, &format!("{} to lead", replica.identity), || async {
        replica.leading_since()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_replicas_leads() {
    let ns = TestNamespace::new("leader-one");
    let api = leases(&ns).await;
    let a = Replica::start(&ns, "replica-a").await;
    let b = Replica::start(&ns, "replica-b").await;

    let leader = eventually(Duration::from_secs(10), "a leader", || async {
        match (a.leading_since(), b.leading_since()) {
            (Some(_), Some(_)) => panic!("both replicas lead"),
            (Some(_), None) => Some(&a),
            (None, Some(_)) => Some(&b),
            (None, None) => None,
        }
    })
    .await;
    let standby = if std::ptr::eq(leader, &a) { &b } else { &a };

    let first = spec(&api).await;
    assert_eq!(
        first.holder_identity.as_deref(),
        Some(leader.identity.as_str())
    );
    assert_eq!(first.lease_duration_seconds, Some(3));
    assert_eq!(first.lease_transitions, Some(0));
    assert!(first.acquire_time.is_some());

    // for two lease durations the standby keeps waiting and the leader keeps renewing
    let until = Instant::now() + DURATION * 2;
    while Instant::now() < until {
        assert!(
            leader.leading_since().is_some(),
            "leader: {:?}",
            leader.state()
        );
        assert_eq!(standby.state(), State::Waiting);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = spec(&api).await;
    assert_eq!(
        later.holder_identity.as_deref(),
        Some(leader.identity.as_str())
    );
    assert_eq!(later.lease_transitions, Some(0));
    assert_eq!(later.acquire_time, first.acquire_time);
    assert!(later.renew_time > first.renew_time, "the leader renews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_stops_renewing() {
    let ns = TestNamespace::new("leader-crash");
    let api = leases(&ns).await;
    let a = Replica::start(&ns, "replica-a").await;
    leads(&a, Duration::from_secs(10)).await;
    let b = Replica::start(&ns, "replica-b").await;
    // let b observe a renewing for a while
    tokio::time::sleep(DURATION).await;
    assert_eq!(b.state(), State::Waiting);

    a.crash();
    let crashed = Instant::now();
    let since = leads(&b, DURATION + RETRY + SLACK * 2).await;
    let took = since.duration_since(crashed);
    assert!(
        took <= DURATION + RETRY + SLACK,
        "took over {took:?} after the leader stopped"
    );
    // never before the lease could have expired: a renewed at most one retry period before
    assert!(
        took >= DURATION - RETRY * 2,
        "took over too early: {took:?}"
    );

    let now = spec(&api).await;
    assert_eq!(now.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(now.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_over_promptly() {
    let ns = TestNamespace::new("leader-release");
    let api = leases(&ns).await;
    let mut a = Replica::start(&ns, "replica-a").await;
    leads(&a, Duration::from_secs(10)).await;
    let b = Replica::start(&ns, "replica-b").await;
    tokio::time::sleep(RETRY * 2).await;
    assert_eq!(b.state(), State::Waiting);

    a.shutdown();
    let released = Instant::now();
    eventually(Duration::from_secs(5), "a to release", || async {
        (a.state() == State::Released).then_some(())
    })
    .await;
    let since = leads(&b, DURATION).await;
    let took = since.duration_since(released);
    // well before the lease would have expired (at least DURATION - RETRY after release)
    assert!(
        took <= RETRY + SLACK,
        "took over {took:?} after the release"
    );

    let now = spec(&api).await;
    assert_eq!(now.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(now.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_when_its_lease_is_overwritten() {
    let ns = TestNamespace::new("leader-overwrite");
    let api = leases(&ns).await;
    let a = Replica::start(&ns, "replica-a").await;
    leads(&a, Duration::from_secs(10)).await;

    // another identity writes itself in, with the resourceVersion it read (retry on 409:
    // the leader may renew between our read and write)
    let overwritten = eventually(Duration::from_secs(5), "the overwrite", || async {
        let mut lease = api.get(LEASE).await.expect("the lease is readable");
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some("intruder".to_string());
        spec.renew_time = Timestamp::from_microsecond(chrono::Utc::now().timestamp_micros())
            .ok()
            .map(MicroTime);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        match api.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => Some(Instant::now()),
            Err(kube::Error::Api(s)) if s.code == 409 => None,
            Err(e) => panic!("replace failed: {e}"),
        }
    })
    .await;

    let (lost, at) = eventually(RETRY * 2 + SLACK * 2, "a to step down", || async {
        match a.state() {
            State::Lost(lost, at) => Some((lost, at)),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        lost,
        LeaderLost::Superseded {
            holder: Some("intruder".to_string())
        }
    );
    let took = at.duration_since(overwritten);
    assert!(
        took <= RETRY * 2,
        "stepped down {took:?} after the overwrite"
    );

    // and it did not write itself back
    tokio::time::sleep(RETRY * 2).await;
    assert_eq!(
        spec(&api).await.holder_identity.as_deref(),
        Some("intruder")
    );
}
