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
//! - A holder is admitted iff the weighted count of live holds plus its weight stays
//!   within the limit. Re-acquiring as an existing holder is idempotent: `true`, the weight it
//!   was admitted with, the session asking among its keepers.
//! - Holds live on sessions (as ZooKeeper's ephemeral nodes do): each gate handle belongs to a
//!   session, one per process, whose lease of [`Gate::lease_ttl`] it extends with
//!   [`Gate::keep_alive`] every [`Gate::renew_interval`] (TTL/3) — one call whatever it holds,
//!   so upkeep costs nothing per running run or task. A hold lasts while some session that
//!   acquired it lives; a session that stops (crash, `kill -9`, partition) loses its holds one
//!   TTL after its last heartbeat, so slots cannot leak. A session found ended moves its
//!   [`Gate::session_epoch`] on: its holder registers what it holds again.
//! - [`Gate::let_go`] stops keeping a hold without ending it (another session may keep it
//!   too): kept by nobody, it lapses one TTL later unless acquired again.
//! - A heartbeat counts the holds the session keeps; when that differs from what its holder
//!   holds, [`Gate::kept`] says which, and [`LeaseLedger`] lets go of those it does not hold
//!   and registers again those it holds but the session lost.
//! - [`Gate::release`] ends a hold at once, but only when no other live session keeps it;
//!   otherwise it only lets go: a release never takes another live session's hold.
//! - Any error means "no decision": callers fail closed (admit nothing) and retry.

mod ledger;
mod link;
mod memory;
mod redis;
mod scope;
mod session;

use std::future::Future;
use std::time::Duration;

pub use self::ledger::{Hold, LeaseLedger, Upkeep};
pub use self::link::{RedisTarget, SentinelTarget};
pub use self::memory::{GateSnapshot, MemoryGate};
pub use self::redis::{ClientCertificate, DEFAULT_PREFIX, RedisGate, RedisTls};
pub use self::scope::GateScope;
pub use self::session::Heartbeat;

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
    /// Takes `weight` slots of `key` for `holder` if the weighted count of live holds plus
    /// `weight` is at most `limit`. Returns whether `holder` holds `key` afterwards; this
    /// session keeps the hold. An existing holder gets `true` (the session joins its keepers),
    /// whatever `weight` and `limit` say now.
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

    /// Extends this handle's session lease to one TTL from now: every hold the session keeps
    /// lasts as long. When the session had ended (its holds are gone or going), the handle
    /// goes on under a new session (the epoch moves on) and its holder must register what it
    /// holds again. Says how many holds the session keeps, so a holder can check the gate
    /// lost none (a failover to a replica that lags).
    fn keep_alive(&self) -> impl Future<Output = Result<Heartbeat, GateError>> + Send;

    /// Which holds this session keeps, `(key, holder)` sorted: what a holder reconciles with
    /// when a heartbeat's count differs from what it holds (a failover to a replica that lags
    /// can lose holds, or bring back a release or a let-go that was acknowledged). Not
    /// atomic with acquires of the same session made meanwhile; for Redis, a scan of the
    /// semaphores' keepers, so only sent when the counts differ.
    fn kept(&self) -> impl Future<Output = Result<Vec<(String, String)>, GateError>> + Send;

    /// How many times this handle's session was found ended, by [`Gate::keep_alive`] or by an
    /// acquire. A holder compares it with the last it saw: a change means "register what you
    /// hold again".
    fn session_epoch(&self) -> u64;

    /// Another handle on the same semaphores with a session of its own, as another process
    /// would have (the engine and the executor each keep their holds on their own).
    fn new_session(&self) -> Self
    where
        Self: Sized;

    /// This session stops keeping `holder`'s hold of `key` without ending it: if no other
    /// session keeps it, it lapses one TTL from now, unless acquired again.
    fn let_go(&self, key: &str, holder: &str)
    -> impl Future<Output = Result<(), GateError>> + Send;

    /// Gives back `holder`'s slots of `key`, unless another live session keeps the hold: then
    /// this session only lets go of it (as [`Gate::let_go`]), so a replica that lost the
    /// write of a run or a try cannot free the winner's slot. Releasing a holder that is gone
    /// is a no-op.
    fn release(
        &self,
        key: &str,
        holder: &str,
    ) -> impl Future<Output = Result<(), GateError>> + Send;

    /// The weighted count of live holds of `key`.
    fn usage(&self, key: &str) -> impl Future<Output = Result<u32, GateError>> + Send;

    /// Cheap round trip: is the gate reachable? (Always `Ok` in process.)
    fn ping(&self) -> impl Future<Output = Result<(), GateError>> + Send;

    /// How long a session's lease lasts without a heartbeat (and a let-go hold without a
    /// keeper).
    fn lease_ttl(&self) -> Duration;

    /// How often a session should [`Gate::keep_alive`]: a third of the TTL, so two heartbeats
    /// in a row may fail (a Redis blip) before a live process loses its slots.
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
    // The Redis gate keeps a semaphore's weights at "<set>:w" and its keepers at "<set>:k"
    // and "<set>:s"; a key ending in one of those would share them with another semaphore.
    if let Some(suffix) = [":w", ":k", ":s"].into_iter().find(|s| key.ends_with(s)) {
        return Err(GateError::Invalid(format!(
            "key {key:?} ends in {suffix:?}"
        )));
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
        for key in ["pool:x:w", "pool:x:k", "pool:x:s"] {
            assert!(
                matches!(check_key(key), Err(GateError::Invalid(_))),
                "{key}"
            );
        }
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
