//! The in-process gate: the semantics of the Redis gate for a single replica (SPEC §7,
//! "without `--redis-url`") and for engine tests. Sessions and lapses run on the monotonic
//! clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::session::{Heartbeat, Session};
use super::{Claim, Gate, GateError, Grant, Slot, check_claim, check_holder, check_key, check_ttl};

/// One holder's slots of a semaphore: its weight, and who keeps it — sessions, or nobody and
/// then the instant it lapses.
#[derive(Clone, Debug)]
struct Hold {
    weight: u32,
    keepers: Vec<String>,
    lapses: Option<Instant>,
}

impl Hold {
    fn over(&mut self, now: Instant, sessions: &HashMap<String, Instant>) -> bool {
        if let Some(t) = self.lapses {
            return t <= now;
        }
        self.keepers
            .retain(|s| sessions.get(s).is_some_and(|end| *end > now));
        self.keepers.is_empty()
    }

    /// `session` keeps the hold; whether it joined its keepers.
    fn keep(&mut self, session: &str) -> bool {
        self.lapses = None;
        if self.keepers.iter().any(|s| s == session) {
            return false;
        }
        self.keepers.push(session.to_string());
        true
    }
}

#[derive(Clone, Debug, Default)]
struct State {
    /// semaphore → holder → hold
    semaphores: HashMap<String, HashMap<String, Hold>>,
    /// session → the end of its lease
    sessions: HashMap<String, Instant>,
    /// session → how many holds it keeps
    counts: HashMap<String, u64>,
}

impl State {
    /// Drops the holds of `key` that are over (see [`Hold::over`]).
    fn purge(&mut self, key: &str, now: Instant) {
        let State {
            semaphores,
            sessions,
            ..
        } = self;
        if let Some(holders) = semaphores.get_mut(key) {
            holders.retain(|_, hold| !hold.over(now, sessions));
            if holders.is_empty() {
                semaphores.remove(key);
            }
        }
    }

    fn used(&self, key: &str) -> u64 {
        self.semaphores
            .get(key)
            .map(|h| h.values().map(|l| u64::from(l.weight)).sum())
            .unwrap_or(0)
    }

    /// A heartbeat of session `id` (see `lua/session.lua`): whether its lease ran (a new id
    /// is registered and answers yes; a registered one that ended is not revived), and how
    /// many holds it keeps.
    fn heartbeat(
        &mut self,
        id: &str,
        registered: bool,
        ttl: Duration,
        now: Instant,
    ) -> (bool, u64) {
        let alive = self.sessions.get(id).is_some_and(|end| *end > now);
        if registered && !alive {
            return (false, 0);
        }
        let State {
            sessions, counts, ..
        } = self;
        sessions.retain(|s, end| {
            let live = *end > now;
            if !live {
                counts.remove(s);
            }
            live
        });
        sessions.insert(id.to_string(), now + ttl);
        (true, counts.get(id).copied().unwrap_or(0))
    }

    /// Extends a live session's lease; whether it was alive.
    fn extend(&mut self, id: &str, ttl: Duration, now: Instant) -> bool {
        match self.sessions.get_mut(id) {
            Some(end) if *end > now => {
                *end = now + ttl;
                true
            }
            _ => false,
        }
    }

    /// `session` stops keeping `holder`'s hold of `key`; kept by nobody, it lapses at `lapses`.
    fn let_go(&mut self, key: &str, holder: &str, session: &str, lapses: Instant) {
        let Some(hold) = self.semaphores.get_mut(key).and_then(|h| h.get_mut(holder)) else {
            return;
        };
        let Some(at) = hold.keepers.iter().position(|s| s == session) else {
            return;
        };
        hold.keepers.remove(at);
        if hold.keepers.is_empty() {
            hold.lapses = Some(lapses);
        }
        self.unkeep(&[session.to_string()]);
    }

    /// The sessions in `keepers` keep one hold less.
    fn unkeep(&mut self, keepers: &[String]) {
        for s in keepers {
            if let Some(n) = self.counts.get_mut(s) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// Weighted semaphores with sessions in a `Mutex<HashMap>`; cheap to clone (clones share the
/// state and the session; [`MemoryGate::new_session`] is another process's handle).
#[derive(Clone, Debug)]
pub struct MemoryGate {
    lease_ttl: Duration,
    state: Arc<Mutex<State>>,
    session: Arc<Session>,
    sessions_made: Arc<AtomicU64>,
    /// how far the gate's clock is ahead of the process's (tests: leases lapse on demand)
    skew_ms: Arc<AtomicU64>,
}

/// The semaphores and sessions of a [`MemoryGate`] at one instant: what a replica that lags
/// holds (restored by [`MemoryGate::restore`]).
#[derive(Clone, Debug)]
pub struct GateSnapshot(State);

impl MemoryGate {
    /// A gate whose sessions last `lease_ttl` without a heartbeat. A TTL below one
    /// millisecond is raised to one millisecond (the Redis gate's resolution).
    pub fn new(lease_ttl: Duration) -> Self {
        let lease_ttl = if check_ttl(lease_ttl).is_ok() {
            lease_ttl
        } else {
            Duration::from_millis(1)
        };
        MemoryGate {
            lease_ttl,
            state: Arc::new(Mutex::new(State::default())),
            session: Arc::new(Session::new("s1".into())),
            sessions_made: Arc::new(AtomicU64::new(1)),
            skew_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.skew_ms.load(Ordering::SeqCst))
    }

    /// Moves the gate's clock forward: leases and let-go holds lapse as if `by` had passed.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.skew_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Everything the gate holds now.
    pub fn snapshot(&self) -> GateSnapshot {
        GateSnapshot(self.lock().clone())
    }

    /// Goes back to `snapshot`: a failover to a replica that lagged (releases and let-gos
    /// since come back, holds taken since are gone).
    pub fn restore(&self, snapshot: &GateSnapshot) {
        *self.lock() = snapshot.0.clone();
    }

    /// The holders of a semaphore some live session keeps (let-go holds, lapsing, left out),
    /// sorted.
    pub fn kept_holders(&self, key: &str) -> Vec<String> {
        self.holders_where(key, |hold| {
            hold.lapses.is_none() && !hold.keepers.is_empty()
        })
    }

    /// Another handle on the same semaphores with a session of its own (what another process
    /// would have).
    pub fn new_session(&self) -> Self {
        let id = self.sessions_made.fetch_add(1, Ordering::SeqCst) + 1;
        MemoryGate {
            session: Arc::new(Session::new(format!("s{id}"))),
            ..self.clone()
        }
    }

    /// Forgets every hold and session at once: what a Redis restarted without its data looks
    /// like to the holders (tests of the executor's and the engine's in-process floors).
    pub fn forget_everything(&self) {
        let mut state = self.lock();
        *state = State::default();
    }

    /// The holders of a semaphore whose hold is live, sorted (for tests and diagnostics).
    pub fn holders(&self, key: &str) -> Vec<String> {
        self.holders_where(key, |_| true)
    }

    /// The holders of a semaphore whose live hold `pick` takes, sorted.
    fn holders_where(&self, key: &str, pick: impl Fn(&Hold) -> bool) -> Vec<String> {
        let now = self.now();
        let mut state = self.lock();
        state.purge(key, now);
        let mut holders: Vec<String> = state
            .semaphores
            .get(key)
            .map(|h| {
                h.iter()
                    .filter(|(_, hold)| pick(hold))
                    .map(|(holder, _)| holder.clone())
                    .collect()
            })
            .unwrap_or_default();
        holders.sort();
        holders
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the map consistent, so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acquire_all_now(&self, claims: &[Claim]) -> Result<Vec<Grant>, GateError> {
        for claim in claims {
            check_claim(claim)?;
        }
        let now = self.now();
        let mut state = self.lock();
        let (session, registered) = self.session.current();
        // a new session is registered; a registered one must be alive, and an acquire extends
        // its lease (see `lua/acquire_all.lua`)
        let alive = if registered {
            state.extend(&session, self.lease_ttl, now)
        } else {
            state.heartbeat(&session, false, self.lease_ttl, now).0
        };
        if !self.session.observe(&session, alive) {
            return Err(GateError::Unavailable(
                "the gate session had ended: its holds are being registered again".into(),
            ));
        }
        // each semaphore is purged once per call, its count kept up to date as claims are
        // granted
        let mut used: HashMap<String, u64> = HashMap::new();
        let mut grants = Vec::with_capacity(claims.len());
        for claim in claims {
            let mut refused = None;
            for (i, Slot { key, weight, limit }) in claim.slots.iter().enumerate() {
                if !used.contains_key(key) {
                    state.purge(key, now);
                    used.insert(key.clone(), state.used(key));
                }
                let count = used.get(key).copied().unwrap_or(0);
                let held = state
                    .semaphores
                    .get(key)
                    .is_some_and(|h| h.contains_key(&claim.holder));
                if !held && count + u64::from(*weight) > u64::from(*limit) {
                    refused = Some(i);
                    break;
                }
            }
            if let Some(i) = refused {
                grants.push(Grant::Refused(i));
                continue;
            }
            for Slot { key, weight, .. } in &claim.slots {
                let holders = state.semaphores.entry(key.clone()).or_default();
                let joined = holders
                    .entry(claim.holder.clone())
                    .or_insert_with(|| {
                        *used.entry(key.clone()).or_default() += u64::from(*weight);
                        Hold {
                            weight: *weight,
                            keepers: Vec::new(),
                            lapses: None,
                        }
                    })
                    .keep(&session);
                if joined {
                    *state.counts.entry(session.clone()).or_default() += 1;
                }
            }
            grants.push(Grant::Granted);
        }
        Ok(grants)
    }

    fn let_go_now(&self, key: &str, holder: &str) -> Result<(), GateError> {
        check_key(key)?;
        check_holder(holder)?;
        let lapses = self.now() + self.lease_ttl;
        let (session, _) = self.session.current();
        self.lock().let_go(key, holder, &session, lapses);
        Ok(())
    }

    fn release_now(&self, key: &str, holder: &str) -> Result<(), GateError> {
        check_key(key)?;
        check_holder(holder)?;
        let now = self.now();
        let (session, _) = self.session.current();
        let mut state = self.lock();
        let State {
            semaphores,
            sessions,
            ..
        } = &mut *state;
        // another live session keeps it: this one only lets go (see `lua/release.lua`)
        let kept_by_another = semaphores
            .get(key)
            .and_then(|h| h.get(holder))
            .is_some_and(|hold| {
                hold.keepers
                    .iter()
                    .any(|s| *s != session && sessions.get(s).is_some_and(|end| *end > now))
            });
        if kept_by_another {
            state.let_go(key, holder, &session, now + self.lease_ttl);
            return Ok(());
        }
        let Some(holders) = state.semaphores.get_mut(key) else {
            return Ok(());
        };
        let removed = holders.remove(holder);
        if holders.is_empty() {
            state.semaphores.remove(key);
        }
        if let Some(hold) = removed {
            state.unkeep(&hold.keepers);
        }
        Ok(())
    }

    fn kept_now(&self) -> Vec<(String, String)> {
        let (session, _) = self.session.current();
        let state = self.lock();
        let mut kept: Vec<(String, String)> = state
            .semaphores
            .iter()
            .flat_map(|(key, holders)| {
                holders
                    .iter()
                    .filter(|(_, hold)| hold.keepers.contains(&session))
                    .map(move |(holder, _)| (key.clone(), holder.clone()))
            })
            .collect();
        kept.sort();
        kept
    }

    fn usage_now(&self, key: &str) -> Result<u32, GateError> {
        check_key(key)?;
        let mut state = self.lock();
        state.purge(key, self.now());
        Ok(u32::try_from(state.used(key)).unwrap_or(u32::MAX))
    }
}

impl Gate for MemoryGate {
    async fn acquire(
        &self,
        key: &str,
        holder: &str,
        weight: u32,
        limit: u32,
    ) -> Result<bool, GateError> {
        let claim = Claim {
            holder: holder.to_string(),
            slots: vec![Slot::new(key, weight, limit)],
        };
        let grants = self.acquire_all_now(std::slice::from_ref(&claim))?;
        Ok(grants.first() == Some(&Grant::Granted))
    }

    async fn acquire_all(&self, claims: &[Claim]) -> Result<Vec<Grant>, GateError> {
        self.acquire_all_now(claims)
    }

    async fn keep_alive(&self) -> Result<Heartbeat, GateError> {
        let now = self.now();
        self.session
            .keep_alive(|id, registered| {
                let beat = self.lock().heartbeat(&id, registered, self.lease_ttl, now);
                std::future::ready(Ok(beat))
            })
            .await
    }

    async fn kept(&self) -> Result<Vec<(String, String)>, GateError> {
        Ok(self.kept_now())
    }

    fn session_epoch(&self) -> u64 {
        self.session.epoch()
    }

    fn new_session(&self) -> Self {
        MemoryGate::new_session(self)
    }

    async fn let_go(&self, key: &str, holder: &str) -> Result<(), GateError> {
        self.let_go_now(key, holder)
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), GateError> {
        self.release_now(key, holder)
    }

    async fn usage(&self, key: &str) -> Result<u32, GateError> {
        self.usage_now(key)
    }

    async fn ping(&self) -> Result<(), GateError> {
        Ok(())
    }

    fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(gate: &MemoryGate, key: &str, holder: &str, weight: u32, limit: u32) -> bool {
        let claim = Claim {
            holder: holder.into(),
            slots: vec![Slot::new(key, weight, limit)],
        };
        gate.acquire_all_now(&[claim])
            .map(|g| g == [Grant::Granted])
            == Ok(true)
    }

    #[tokio::test]
    async fn ended_sessions_leave_no_entry() {
        let gate = MemoryGate::new(Duration::from_millis(1));
        assert!(grant(&gate, "k", "a", 1, 1));
        std::thread::sleep(Duration::from_millis(5));
        let other = gate.new_session();
        assert_eq!(other.usage_now("k"), Ok(0), "a's session ended");
        assert!(gate.lock().semaphores.is_empty(), "{:?}", gate.lock());
        assert!(!grant(&other, "k", "b", 2, 1));
        assert!(
            gate.lock().semaphores.is_empty(),
            "a refused acquire leaves nothing behind"
        );
        let beat = gate.keep_alive().await.expect("a heartbeat");
        assert!(beat.ended, "the first session had ended");
        assert_eq!(gate.session.epoch(), 1);
        assert!(grant(&gate, "k", "c", 1, 5), "and goes on under a new one");
    }
}
