//! Leader election on a `coordination.k8s.io/v1` Lease (SPEC §1, §9, §11 "two replicas").
//!
//! The protocol is the one of client-go's `leaderelection` package, written small:
//! - the Lease's `holderIdentity` names the leader; it renews `renewTime` every `retry_period`;
//! - a candidate takes the Lease over when its holder is empty, or when the record has not
//!   changed for `leaseDurationSeconds`, judged by the candidate's own monotonic clock since it
//!   last *observed* a change of the record (so clock skew between replicas does not matter:
//!   `renewTime` is informative, never compared across machines);
//! - every write is a replace carrying the `resourceVersion` that was read, so two candidates
//!   can never both win: the second gets 409 Conflict and re-reads;
//! - the leader gives up (and its caller stops admitting at once) when it sees another holder,
//!   or when no renewal succeeded within `renew_deadline` (< lease duration) of the last one.
//!
//! See docs/LEADER.md.

use std::fmt;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// Default time a standby waits, after the last observed change, before taking a Lease over.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default time the leader keeps leading without a successful renewal.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default interval between renewals (leader) and between attempts (standby).
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Which Lease to contend for, as whom, and the timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process (e.g. pod name plus a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A config with the default timings (15 s, 10 s, 2 s).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks names and `lease_duration > renew_deadline > retry_period > 0`.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |m: String| Err(LeaderError::InvalidConfig(m));
        if self.namespace.is_empty() || self.name.is_empty() {
            return bad("lease namespace and name must not be empty".into());
        }
        if self.identity.is_empty() {
            return bad("identity must not be empty".into());
        }
        if self.retry_period.is_zero() {
            return bad("retry period must be positive".into());
        }
        if self.renew_deadline <= self.retry_period {
            return bad(format!(
                "renew deadline ({:?}) must be longer than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return bad(format!(
                "lease duration ({:?}) must be longer than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election config: {0}")]
    InvalidConfig(String),
}

/// Why this replica is no longer leader. The caller must stop admitting at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderLost {
    /// Another identity holds the Lease (or someone cleared it: `None`).
    Superseded { holder: Option<String> },
    /// The Lease object was deleted.
    Deleted,
    /// No renewal succeeded within the renew deadline since the last successful one.
    RenewDeadline { since_last: Duration },
    /// `hold` was called without holding the Lease.
    NotLeader,
}

impl fmt::Display for LeaderLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaderLost::Superseded { holder: Some(h) } => write!(f, "lease taken over by {h}"),
            LeaderLost::Superseded { holder: None } => {
                f.write_str("lease cleared by another writer")
            }
            LeaderLost::Deleted => f.write_str("lease deleted"),
            LeaderLost::RenewDeadline { since_last } => {
                write!(f, "no successful renewal for {since_last:?}")
            }
            LeaderLost::NotLeader => f.write_str("not leader"),
        }
    }
}

/// Contends for one Lease as one identity.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<Observed>,
    /// Start of the last attempt whose write made (or kept) us holder; `None` when not leader.
    last_renewal: Option<Instant>,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            last_renewal: None,
        }
    }

    /// Blocks until this replica holds the Lease: creates it if absent, takes it over when
    /// its holder is empty or the record has not changed for its `leaseDurationSeconds` by
    /// our clock since we last observed a change. API errors are logged and retried every
    /// `retry_period`; the only error is an invalid config.
    pub async fn acquire(&mut self) -> Result<(), LeaderError> {
        self.cfg.validate()?;
        let retry = self.cfg.retry_period;
        let mut seen_holder: Option<Option<String>> = None;
        loop {
            let start = Instant::now();
            let wait = match tokio::time::timeout(self.cfg.renew_deadline, self.attempt(true)).await
            {
                Ok(Ok(Step::Leading)) => {
                    self.last_renewal = Some(start);
                    tracing::info!(
                        lease = %self.cfg.name,
                        namespace = %self.cfg.namespace,
                        identity = %self.cfg.identity,
                        "became leader"
                    );
                    return Ok(());
                }
                Ok(Ok(Step::Held { holder, wait })) => {
                    if seen_holder.as_ref() != Some(&holder) {
                        tracing::info!(
                            lease = %self.cfg.name,
                            holder = holder.as_deref().unwrap_or(""),
                            "standing by: another replica holds the lease"
                        );
                        seen_holder = Some(holder);
                    }
                    // wake just when the lease would expire if that is sooner
                    wait.min(retry)
                }
                Ok(Ok(Step::Conflict | Step::Missing)) => retry,
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.cfg.name, error = %e, "lease acquire attempt failed");
                    retry
                }
                Err(_) => {
                    tracing::warn!(lease = %self.cfg.name, "lease acquire attempt timed out");
                    retry
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Renews every `retry_period` while leader. Returns as soon as leadership cannot be
    /// confirmed: another holder seen, the Lease deleted, or no successful renewal within
    /// `renew_deadline` of the last successful one. The caller must stop admitting at once.
    pub async fn hold(&mut self) -> LeaderLost {
        let lost = self.renew_loop().await;
        self.last_renewal = None;
        tracing::warn!(
            lease = %self.cfg.name,
            identity = %self.cfg.identity,
            reason = %lost,
            "lost leadership"
        );
        lost
    }

    async fn renew_loop(&mut self) -> LeaderLost {
        let Some(mut last) = self.last_renewal else {
            return LeaderLost::NotLeader;
        };
        loop {
            let deadline = last + self.cfg.renew_deadline;
            let wake = Instant::now()
                .checked_add(self.cfg.retry_period)
                .map_or(deadline, |w| w.min(deadline));
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
            let start = Instant::now();
            if start >= deadline {
                return LeaderLost::RenewDeadline {
                    since_last: start.duration_since(last),
                };
            }
            match tokio::time::timeout(deadline - start, self.attempt(false)).await {
                Ok(Ok(Step::Leading)) => {
                    last = start;
                    self.last_renewal = Some(start);
                }
                Ok(Ok(Step::Held { holder, .. })) => return LeaderLost::Superseded { holder },
                Ok(Ok(Step::Missing)) => return LeaderLost::Deleted,
                Ok(Ok(Step::Conflict)) => {
                    tracing::debug!(lease = %self.cfg.name, "lease renewal conflicted; re-reading")
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.cfg.name, error = %e, "lease renewal failed")
                }
                Err(_) => tracing::warn!(lease = %self.cfg.name, "lease renewal timed out"),
            }
        }
    }

    /// Best effort, on graceful shutdown: if we still hold the Lease, clear `holderIdentity`
    /// (with our observed `resourceVersion`) so a standby takes over at its next attempt.
    pub async fn release(&mut self) {
        self.last_renewal = None;
        match tokio::time::timeout(self.cfg.renew_deadline, self.clear()).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.cfg.name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.cfg.name, error = %e, "could not release the lease")
            }
            Err(_) => tracing::warn!(lease = %self.cfg.name, "releasing the lease timed out"),
        }
    }

    async fn clear(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(false);
        };
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        if record.holder.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = now_micro();
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // someone else wrote since our read: it is not ours to clear any more
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One read and, if `decide` allows (and `may_take` for a take-over), one write.
    async fn attempt(&mut self, may_take: bool) -> Result<Step, kube::Error> {
        let me = self.cfg.identity.clone();
        let seconds = duration_seconds(self.cfg.lease_duration);
        let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
            if !may_take {
                return Ok(Step::Missing);
            }
            let now = now_micro();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: now.clone(),
                    renew_time: now,
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Step::Leading)
                }
                // created by another candidate meanwhile: re-read next time
                Err(e) if is_conflict(&e) => Ok(Step::Conflict),
                Err(e) => Err(e),
            };
        };
        let record = self.observe(&current);
        let observed_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
        let action = decide(
            &record,
            observed_at,
            &me,
            Instant::now(),
            self.cfg.lease_duration,
        );
        let renewing = match action {
            Action::Renew => true,
            Action::Take if may_take => false,
            Action::Take => {
                return Ok(Step::Held {
                    holder: record.holder,
                    wait: Duration::ZERO,
                });
            }
            Action::Wait(wait) => {
                return Ok(Step::Held {
                    holder: record.holder,
                    wait,
                });
            }
        };
        // `current` carries the resourceVersion we read: the replace is conditional on it
        let mut next = current;
        let now = now_micro();
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(me);
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = now.clone();
        if renewing {
            if spec.acquire_time.is_none() {
                spec.acquire_time = now;
            }
        } else {
            spec.acquire_time = now;
            spec.lease_transitions = Some(record.transitions.saturating_add(1));
        }
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                if !renewing {
                    tracing::info!(
                        lease = %self.cfg.name,
                        previous = record.holder.as_deref().unwrap_or(""),
                        transitions = record.transitions.saturating_add(1),
                        "took the lease over"
                    );
                }
                Ok(Step::Leading)
            }
            Err(e) if is_conflict(&e) => Ok(Step::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Records what we read, keeping the time of the last observed change.
    fn observe(&mut self, lease: &Lease) -> LeaseRecord {
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        self.observed = Some(observe(
            self.observed.take(),
            record.clone(),
            Instant::now(),
        ));
        record
    }
}

/// Outcome of one attempt.
#[derive(Debug)]
enum Step {
    /// We hold the Lease (created, taken over or renewed).
    Leading,
    /// Someone else holds it (or it is free but we may not take it); `wait` until it expires.
    Held {
        holder: Option<String>,
        wait: Duration,
    },
    /// Our write lost a race (409): re-read.
    Conflict,
    /// The Lease does not exist and we may not create it.
    Missing,
}

/// The fields of a Lease that leader election reads, normalized (`""` holder = none).
#[derive(Clone, Debug, PartialEq, Eq)]
struct LeaseRecord {
    holder: Option<String>,
    duration_seconds: Option<i32>,
    acquire_time: Option<Timestamp>,
    renew_time: Option<Timestamp>,
    transitions: i32,
}

impl LeaseRecord {
    fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else {
            return LeaseRecord {
                holder: None,
                duration_seconds: None,
                acquire_time: None,
                renew_time: None,
                transitions: 0,
            };
        };
        LeaseRecord {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            duration_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0).max(0),
        }
    }
}

/// A record and the local instant at which we first saw it in this form.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    record: LeaseRecord,
    at: Instant,
}

/// Keeps the earlier observation time while the record is unchanged.
fn observe(previous: Option<Observed>, record: LeaseRecord, now: Instant) -> Observed {
    match previous {
        Some(prev) if prev.record == record => prev,
        _ => Observed { record, at: now },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// We are the holder: renew.
    Renew,
    /// Free, or its holder let it expire: take it over (a transition).
    Take,
    /// Another holder's lease is live for this long still.
    Wait(Duration),
}

/// The pure decision: what `me` may do with the `observed` record, first seen in this form
/// at `observed_at`, now. Only local monotonic instants are compared; `renewTime` is not.
fn decide(
    observed: &LeaseRecord,
    observed_at: Instant,
    me: &str,
    now: Instant,
    default_duration: Duration,
) -> Action {
    match observed.holder.as_deref() {
        Some(holder) if holder == me => Action::Renew,
        None => Action::Take,
        Some(_) => {
            let duration = observed
                .duration_seconds
                .filter(|s| *s > 0)
                .map_or(default_duration, |s| {
                    Duration::from_secs(s.unsigned_abs().into())
                });
            match observed_at.checked_add(duration) {
                Some(expires) if now < expires => Action::Wait(expires.duration_since(now)),
                Some(_) => Action::Take,
                // unrepresentably far: treat as live
                None => Action::Wait(duration),
            }
        }
    }
}

/// Whole seconds for `leaseDurationSeconds`, rounded up, at least 1.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i32::try_from(secs).unwrap_or(i32::MAX).max(1)
}

fn now_micro() -> Option<MicroTime> {
    Timestamp::from_microsecond(chrono::Utc::now().timestamp_micros())
        .ok()
        .map(MicroTime)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn record(holder: Option<&str>, secs: Option<i32>) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_string),
            duration_seconds: secs,
            acquire_time: None,
            renew_time: None,
            transitions: 3,
        }
    }

    #[test]
    fn holder_renews_even_after_expiry() {
        let t0 = Instant::now();
        let r = record(Some("me"), Some(3));
        assert_eq!(decide(&r, t0, "me", t0, D), Action::Renew);
        assert_eq!(
            decide(&r, t0, "me", t0 + Duration::from_secs(3600), D),
            Action::Renew
        );
    }

    #[test]
    fn empty_holder_is_taken_at_once() {
        let t0 = Instant::now();
        assert_eq!(
            decide(&record(None, Some(15)), t0, "me", t0, D),
            Action::Take
        );
    }

    #[test]
    fn live_lease_of_another_holder_is_waited_for() {
        let t0 = Instant::now();
        let r = record(Some("other"), Some(3));
        assert_eq!(
            decide(&r, t0, "me", t0 + Duration::from_millis(500), D),
            Action::Wait(Duration::from_millis(2500))
        );
        assert_eq!(
            decide(&r, t0, "me", t0 + Duration::from_secs(3), D),
            Action::Take
        );
        assert_eq!(
            decide(&r, t0, "me", t0 + Duration::from_secs(10), D),
            Action::Take
        );
    }

    #[test]
    fn missing_or_invalid_duration_falls_back_to_ours() {
        let t0 = Instant::now();
        for secs in [None, Some(0), Some(-5)] {
            let r = record(Some("other"), secs);
            assert_eq!(
                decide(&r, t0, "me", t0 + Duration::from_secs(14), D),
                Action::Wait(Duration::from_secs(1)),
                "{secs:?}"
            );
            assert_eq!(
                decide(&r, t0, "me", t0 + Duration::from_secs(15), D),
                Action::Take
            );
        }
    }

    #[test]
    fn remote_timestamps_do_not_matter() {
        // a holder whose clock is an hour behind (or ahead) still gets its full duration,
        // counted from when we observed its write
        let t0 = Instant::now();
        for ts in [0_i64, 4_000_000_000] {
            let mut r = record(Some("other"), Some(10));
            r.renew_time = Timestamp::from_second(ts).ok();
            assert_eq!(
                decide(&r, t0, "me", t0 + Duration::from_secs(4), D),
                Action::Wait(Duration::from_secs(6))
            );
        }
    }

    #[test]
    fn observation_time_moves_only_on_change() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let t2 = t0 + Duration::from_secs(4);
        let a = record(Some("other"), Some(3));
        let first = observe(None, a.clone(), t0);
        assert_eq!(first.at, t0);
        let same = observe(Some(first), a.clone(), t1);
        assert_eq!(
            same.at, t0,
            "unchanged record keeps the first observation time"
        );
        let mut renewed = a;
        renewed.renew_time = Timestamp::from_second(1_700_000_000).ok();
        let changed = observe(Some(same), renewed, t2);
        assert_eq!(changed.at, t2, "a renewal restarts the clock");
    }

    #[test]
    fn record_normalizes_the_spec() {
        assert_eq!(
            LeaseRecord::from_spec(None),
            LeaseRecord {
                transitions: 0,
                ..record(None, None)
            }
        );
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(15),
            lease_transitions: None,
            ..LeaseSpec::default()
        };
        let r = LeaseRecord::from_spec(Some(&spec));
        assert_eq!(r.holder, None);
        assert_eq!(r.transitions, 0);
        assert_eq!(r.duration_seconds, Some(15));
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(duration_seconds(Duration::from_secs(15)), 15);
        assert_eq!(duration_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(duration_seconds(Duration::from_millis(1)), 1);
        assert_eq!(duration_seconds(Duration::ZERO), 1);
        assert_eq!(duration_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn config_timings_are_ordered() {
        let ok = LeaseConfig::new("ns", "dag-operator", "pod-a");
        assert_eq!(ok.validate().ok(), Some(()));
        let mut c = ok.clone();
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.retry_period = c.renew_deadline;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.retry_period = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.identity.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn lost_reasons_read_well() {
        assert_eq!(
            LeaderLost::Superseded {
                holder: Some("b".into())
            }
            .to_string(),
            "lease taken over by b"
        );
        assert_eq!(LeaderLost::Deleted.to_string(), "lease deleted");
    }
}
