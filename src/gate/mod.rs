//! The concurrency gate (SPEC §7): every limit — `--max-concurrent-runs`, a DAG's
//! `maxActiveRuns`, a Backfill's `concurrency`, `--max-running-tasks`, a Pool's slots — is a
//! weighted semaphore with leases, behind the [`Gate`] trait.
//!
//! - [`RedisGate`]: one sorted set per semaphore in Redis, changed only by Lua scripts
//!   (`gate/lua/`), lease expiry in Redis server time, so replicas share the limits.
//! - [`MemoryGate`]: the same semantics in process, for a single replica without Redis and for
//!   engine tests.
//!
//! Both pass one conformance suite (`tests/gate.rs`); the layout and rules are in docs/GATE.md.
//!
//! Semantics shared by both:
//! - A semaphore is named by a logical key (see [`key`]) and has no stored limit: the limit is
//!   passed on every [`Gate::acquire`], so a changed limit applies at the next acquire, and
//!   lowering it never evicts holders (they drain as they release).
//! - A holder is admitted iff the weighted count of unexpired holders plus its weight stays
//!   within the limit. Re-acquiring as an existing holder is idempotent: `true`, a fresh lease,
//!   the weight it was admitted with.
//! - Every hold is a lease of [`Gate::lease_ttl`]; a holder renews it (every
//!   [`Gate::renew_interval`], i.e. TTL/3) or loses it one TTL after its last renewal, so the
//!   slots of a crashed process come back by themselves. A lease that has expired is gone for
//!   good: renewing it returns `false`.
//! - Any error means "no decision": callers fail closed (admit nothing) and retry.

mod ledger;
mod link;
mod memory;
mod redis;
mod scope;

use std::future::Future;
use std::time::Duration;

pub use self::ledger::{Hold, LeaseLedger, Upkeep};
pub use self::link::{RedisTarget, SentinelTarget};
pub use self::memory::MemoryGate;
pub use self::redis::{ClientCertificate, DEFAULT_PREFIX, RedisGate, RedisTls};
pub use self::scope::GateScope;

/// Why a gate operation gave no answer. Every variant means the same to a caller: no slot was
/// granted (fail closed), try again later.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// Redis could not be reached or did not answer in time (connection refused, reset,
    /// timeout, loading, read-only replica). The connection is re-established by itself.
    #[error("gate unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (a script error, a key of the wrong type, out of memory).
    #[error("gate error from Redis: {0}")]
    Backend(String),
    /// The request itself is malformed: empty key or holder, zero weight, a key ending in `:w`.
    #[error("invalid gate request: {0}")]
    Invalid(String),
}

/// One holder asking for several semaphores at once: all of them or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub holder: String,
    /// the semaphores, all of which the holder takes or none
    pub slots: Vec<Slot>,
}

/// A share of one semaphore: `weight` of its `limit` slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub key: String,
    pub weight: u32,
    pub limit: u32,
}

impl Slot {
    pub fn new(key: impl Into<String>, weight: u32, limit: u32) -> Self {
        Slot {
            key: key.into(),
            weight,
            limit,
        }
    }
}

/// The answer to a [`Claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// the holder holds every semaphore of the claim
    Granted,
    /// the semaphore at this index of the claim's slots refused it; nothing was taken
    Refused(usize),
}

/// Weighted semaphores with leases (SPEC §7). Keys are logical names ([`key`]); holders are
/// names unique among everything that can hold the same key at once, across replicas (e.g. a
/// run id, or `<run id>/<task>/<try>`).
pub trait Gate: Send + Sync + 'static {
    /// Takes `weight` slots of `key` for `holder` if the weighted count of unexpired holders
    /// plus `weight` is at most `limit`. Returns whether `holder` holds `key` afterwards. An
    /// existing holder gets `true` and a fresh lease, whatever `weight` and `limit` say now.
    fn acquire(
        &self,
        key: &str,
        holder: &str,
        weight: u32,
        limit: u32,
    ) -> impl Future<Output = Result<bool, GateError>> + Send;

    /// Each claim in order, each atomically (all its semaphores or none), in one round trip for
    /// Redis. An existing holder of a semaphore is admitted to it again, as by `acquire`.
    fn acquire_all(
        &self,
        claims: &[Claim],
    ) -> impl Future<Output = Result<Vec<Grant>, GateError>> + Send;

    /// Extends `holder`'s lease on `key` to one TTL from now. `false` when the holder is gone
    /// (released, expired, or never there); it must then acquire again.
    fn renew(
        &self,
        key: &str,
        holder: &str,
    ) -> impl Future<Output = Result<bool, GateError>> + Send;

    /// Gives back `holder`'s slots of `key`. Releasing a holder that is gone is a no-op.
    fn release(
        &self,
        key: &str,
        holder: &str,
    ) -> impl Future<Output = Result<(), GateError>> + Send;

    /// The weighted count of unexpired holders of `key`.
    fn usage(&self, key: &str) -> impl Future<Output = Result<u32, GateError>> + Send;

    /// [`Gate::renew`] for each `(key, holder)`, in order; one round trip for Redis.
    fn renew_all(
        &self,
        leases: &[(String, String)],
    ) -> impl Future<Output = Result<Vec<bool>, GateError>> + Send;

    /// Cheap round trip: is the gate reachable? (Always `Ok` in process.)
    fn ping(&self) -> impl Future<Output = Result<(), GateError>> + Send;

    /// How long a lease lasts without renewal.
    fn lease_ttl(&self) -> Duration;

    /// How often a holder should renew: a third of the TTL, so two renewals in a row may fail
    /// (a Redis blip) before a live holder loses its slots.
    fn renew_interval(&self) -> Duration {
        self.lease_ttl() / 3
    }
}

/// Registers leases of holders that already run — after a restart, or when the gate lost them
/// (Redis restarted empty) — without a limit, so the count tells the truth again and
/// newcomers wait; `(key, holder, weight)` each, all in one [`Gate::acquire_all`] call.
pub async fn reinstate<G: Gate>(
    gate: &G,
    leases: &[(String, String, u32)],
) -> Result<(), GateError> {
    if leases.is_empty() {
        return Ok(());
    }
    let claims: Vec<Claim> = leases
        .iter()
        .map(|(key, holder, weight)| Claim {
            holder: holder.clone(),
            slots: vec![Slot::new(key.clone(), *weight, u32::MAX)],
        })
        .collect();
    gate.acquire_all(&claims).await.map(|_| ())
}

/// The logical keys of the limits of SPEC §4 (the Redis gate prefixes them,
/// e.g. `dagop:sem:runs:global`).
pub mod key {
    /// `--max-concurrent-runs`
    pub const GLOBAL_RUNS: &str = "runs:global";
    /// `--max-running-tasks`
    pub const RUNNING_TASKS: &str = "tasks:global";

    /// Prefix of [`dag_runs`] keys.
    pub const DAG_RUNS_PREFIX: &str = "runs:dag:";
    /// Prefix of [`namespace_runs`] keys.
    pub const NAMESPACE_RUNS_PREFIX: &str = "runs:ns:";

    /// A DAG's `maxActiveRuns`.
    pub fn dag_runs(namespace: &str, dag: &str) -> String {
        format!("{DAG_RUNS_PREFIX}{namespace}/{dag}")
    }

    /// A namespace's cap on running runs (tenancy; every run holds it, capped or not, so a
    /// cap set later counts what already runs).
    pub fn namespace_runs(namespace: &str) -> String {
        format!("{NAMESPACE_RUNS_PREFIX}{namespace}")
    }

    /// A Backfill's `concurrency`.
    pub fn backfill_runs(namespace: &str, backfill: &str) -> String {
        format!("runs:backfill:{namespace}/{backfill}")
    }

    /// A Pool's slots.
    pub fn pool(namespace: &str, pool: &str) -> String {
        format!("pool:{namespace}/{pool}")
    }
}

/// Checks what both gates refuse alike.
fn check_key(key: &str) -> Result<(), GateError> {
    if key.is_empty() {
        return Err(GateError::Invalid("empty key".into()));
    }
    // The Redis gate keeps a semaphore's weights at "<set>:w"; a key ending in ":w" would
    // share its set with another semaphore's weights.
    if key.ends_with(":w") {
        return Err(GateError::Invalid(format!("key {key:?} ends in \":w\"")));
    }
    Ok(())
}

fn check_holder(holder: &str) -> Result<(), GateError> {
    if holder.is_empty() {
        return Err(GateError::Invalid("empty holder".into()));
    }
    Ok(())
}

fn check_acquire(key: &str, holder: &str, weight: u32) -> Result<(), GateError> {
    check_key(key)?;
    check_holder(holder)?;
    if weight == 0 {
        return Err(GateError::Invalid(format!(
            "weight 0 for holder {holder:?} of {key:?}"
        )));
    }
    Ok(())
}

fn check_claim(claim: &Claim) -> Result<(), GateError> {
    if claim.slots.is_empty() {
        return Err(GateError::Invalid(format!(
            "claim of {:?} names no semaphore",
            claim.holder
        )));
    }
    for slot in &claim.slots {
        check_acquire(&slot.key, &claim.holder, slot.weight)?;
    }
    Ok(())
}

fn check_ttl(lease_ttl: Duration) -> Result<(), GateError> {
    if lease_ttl.as_millis() == 0 {
        return Err(GateError::Invalid(format!(
            "lease TTL {lease_ttl:?} is below one millisecond"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key::dag_runs("ns", "etl"), "runs:dag:ns/etl");
        assert_eq!(key::backfill_runs("ns", "bf"), "runs:backfill:ns/bf");
        assert_eq!(key::pool("ns", "db"), "pool:ns/db");
        for k in [
            key::GLOBAL_RUNS.to_string(),
            key::RUNNING_TASKS.to_string(),
            key::dag_runs("a", "w"),
            key::pool("a", "w"),
        ] {
            assert_eq!(check_key(&k), Ok(()), "{k}");
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(matches!(check_key(""), Err(GateError::Invalid(_))));
        assert!(matches!(check_key("pool:x:w"), Err(GateError::Invalid(_))));
        assert!(matches!(check_holder(""), Err(GateError::Invalid(_))));
        assert!(matches!(
            check_acquire("k", "h", 0),
            Err(GateError::Invalid(_))
        ));
        assert_eq!(check_acquire("k", "h", 1), Ok(()));
        assert!(check_ttl(Duration::from_micros(999)).is_err());
        assert_eq!(check_ttl(Duration::from_millis(1)), Ok(()));
    }
}
