//! The holds one process keeps, and their upkeep: release what ended, let go of what may be
//! another process's, register what runs but is not held (after a restart, or when the gate
//! lost it), let go of what the session keeps but nothing here holds (a release the gate
//! lost), and the session's heartbeat every [`Gate::renew_interval`] — one call whatever is
//! held. Shared by the engine (runs) and the executor (task tries).

use std::collections::HashMap;
use std::time::Instant;

use super::{Claim, Gate, GateError, reinstate};

/// One semaphore a holder holds, with its weight in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hold {
    pub key: String,
    pub weight: u32,
}

impl Hold {
    pub fn new(key: impl Into<String>, weight: u32) -> Self {
        Hold {
            key: key.into(),
            weight,
        }
    }
}

/// What [`LeaseLedger::upkeep`] did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    pub released: usize,
    pub let_go: usize,
    /// holds the session kept that nothing here held (a release or a let-go the gate lost in
    /// a failover), let go
    pub surplus: usize,
    pub reinstated: usize,
    /// whether the session's heartbeat was sent
    pub heartbeat: bool,
}

/// The holds of one process: holder → the semaphores it holds.
#[derive(Debug, Default)]
pub struct LeaseLedger {
    held: HashMap<String, Vec<Hold>>,
    /// holds to register without a limit (adopted: they run already)
    adopt: Vec<(String, Vec<Hold>)>,
    /// holds to give back
    release: Vec<(String, Vec<Hold>)>,
    /// holds to stop keeping without ending them: `(holder, key)`
    let_go: Vec<(String, String)>,
    last_heartbeat: Option<Instant>,
    /// the gate session's epoch when everything held was last registered
    epoch: u64,
}

impl LeaseLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records holds the gate just granted (added to what the holder holds already).
    pub fn granted(&mut self, holder: &str, holds: Vec<Hold>) {
        let held = self.held.entry(holder.to_string()).or_default();
        for hold in holds {
            if !held.iter().any(|h| h.key == hold.key) {
                held.push(hold);
            }
        }
    }

    /// Records claims whose answer never came (an error after they were sent): the gate may
    /// have granted them to this session. What is not held by then is let go at the next
    /// upkeep, so a grant nobody recorded lapses instead of living as long as the process.
    pub fn unanswered(&mut self, claims: &[Claim]) {
        for claim in claims {
            for slot in &claim.slots {
                self.let_go.push((claim.holder.clone(), slot.key.clone()));
            }
        }
    }

    /// Records holds of work that runs already but that the gate may not know (a restart):
    /// the next upkeep registers them over any limit, so the count tells the truth again.
    pub fn adopt(&mut self, holder: &str, holds: Vec<Hold>) {
        if self.held.contains_key(holder) {
            return;
        }
        self.held.insert(holder.to_string(), holds.clone());
        self.adopt.push((holder.to_string(), holds));
    }

    /// The holder's work ended: its holds go back at the next upkeep.
    pub fn end(&mut self, holder: &str) {
        if let Some(holds) = self.held.remove(holder) {
            self.release.push((holder.to_string(), holds));
        }
        self.adopt.retain(|(h, _)| h != holder);
    }

    /// Stops keeping a holder's holds without giving them back: they may be another
    /// process's too (replicas claim a run under one name), so they lapse within one TTL
    /// unless that process keeps them.
    pub fn forget(&mut self, holder: &str) {
        if let Some(holds) = self.held.remove(holder) {
            self.let_go
                .extend(holds.into_iter().map(|h| (holder.to_string(), h.key)));
        }
        self.adopt.retain(|(h, _)| h != holder);
    }

    pub fn holds(&self, holder: &str) -> bool {
        self.held.contains_key(holder)
    }

    /// How many holders hold something.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Every holder.
    pub fn holders(&self) -> impl Iterator<Item = &str> {
        self.held.keys().map(String::as_str)
    }

    /// Gives back what ended, lets go of what was forgotten (unless held again since),
    /// registers what was adopted, sends the session's heartbeat once a renew interval has
    /// passed, and registers everything held again when the gate says the session had ended.
    /// On an error the work left is kept for the next call.
    pub async fn upkeep<G: Gate>(&mut self, gate: &G) -> Result<Upkeep, GateError> {
        let mut done = Upkeep::default();
        while let Some((holder, holds)) = self.release.pop() {
            let keys: Vec<String> = holds.iter().map(|h| h.key.clone()).collect();
            for key in keys {
                if let Err(e) = gate.release(&key, &holder).await {
                    // kept by nobody once this process stops; try again next time
                    self.release.push((holder, holds));
                    return Err(e);
                }
            }
            done.released += 1;
        }
        while let Some((holder, key)) = self.let_go.pop() {
            let held_again = self
                .held
                .get(&holder)
                .is_some_and(|holds| holds.iter().any(|h| h.key == key));
            if held_again {
                continue;
            }
            if let Err(e) = gate.let_go(&key, &holder).await {
                self.let_go.push((holder, key));
                return Err(e);
            }
            done.let_go += 1;
        }
        if !self.adopt.is_empty() {
            let leases = flatten(self.adopt.iter().map(|(h, holds)| (h, holds)));
            reinstate(gate, &leases).await?;
            done.reinstated += self.adopt.len();
            self.adopt.clear();
        }
        let due = self
            .last_heartbeat
            .is_none_or(|t| t.elapsed() >= gate.renew_interval());
        let mut register_all = false;
        if due {
            let beat = gate.keep_alive().await?;
            self.last_heartbeat = Some(Instant::now());
            done.heartbeat = true;
            let held = self.held.values().map(Vec::len).sum::<usize>();
            if !beat.ended && usize::try_from(beat.kept).ok() != Some(held) {
                // a failover to a replica that lags: the gate lost holds of a live session,
                // or brought back a release or a let-go it had acknowledged
                tracing::warn!(
                    held,
                    kept = beat.kept,
                    "the gate's count of this process's holds differs; reconciling"
                );
                let (surplus, lost) = self.reconcile(gate).await?;
                done.surplus += surplus;
                register_all = lost;
            }
        }
        let epoch = gate.session_epoch();
        if epoch != self.epoch || register_all {
            // the session had ended (its holds are gone or going), or lost some
            reinstate(gate, &flatten(&self.held)).await?;
            done.reinstated += self.held.len();
            self.epoch = epoch;
        }
        Ok(done)
    }

    /// Compares what the session keeps with what is held: lets go of each hold the session
    /// keeps that nothing here holds (not released: it may be another process's under the
    /// same name, so it lapses one TTL later unless that process keeps it); returns how many,
    /// and whether some hold held here is not kept.
    async fn reconcile<G: Gate>(&self, gate: &G) -> Result<(usize, bool), GateError> {
        let kept = gate.kept().await?;
        let mut surplus = 0;
        for (key, holder) in &kept {
            let known = self
                .held
                .get(holder)
                .is_some_and(|holds| holds.iter().any(|h| h.key == *key));
            if !known {
                tracing::warn!(%key, %holder, "the gate keeps a hold not held here; letting it go");
                gate.let_go(key, holder).await?;
                surplus += 1;
            }
        }
        let lost = self.held.iter().any(|(holder, holds)| {
            holds.iter().any(|h| {
                !kept
                    .iter()
                    .any(|(key, kept_holder)| *key == h.key && kept_holder == holder)
            })
        });
        Ok((surplus, lost))
    }

    /// Sends the heartbeat at the next upkeep, whatever the interval says (e.g. after an
    /// outage).
    pub fn renew_soon(&mut self) {
        self.last_heartbeat = None;
    }
}

/// `(key, holder, weight)` of every hold.
fn flatten<'a>(
    holders: impl IntoIterator<Item = (&'a String, &'a Vec<Hold>)>,
) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    for (holder, holds) in holders {
        for h in holds {
            out.push((h.key.clone(), holder.clone(), h.weight));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::MemoryGate;
    use std::time::Duration;

    #[tokio::test]
    async fn adopted_holds_count_over_the_limit_and_ended_ones_go_back() {
        let gate = MemoryGate::new(Duration::from_secs(30));
        let mut ledger = LeaseLedger::new();
        ledger.adopt("run-1", vec![Hold::new("k", 1)]);
        ledger.adopt("run-2", vec![Hold::new("k", 1)]);
        let done = ledger.upkeep(&gate).await.unwrap();
        assert_eq!(done.reinstated, 2);
        assert_eq!(gate.usage("k").await.unwrap(), 2);
        // a limit of 2 is full now
        assert!(!gate.acquire("k", "new", 1, 2).await.unwrap());
        ledger.end("run-1");
        ledger.upkeep(&gate).await.unwrap();
        assert_eq!(gate.usage("k").await.unwrap(), 1);
        assert!(!ledger.holds("run-1") && ledger.holds("run-2"));
    }

    #[tokio::test]
    async fn a_forgotten_holder_keeps_its_slot_for_whoever_else_holds_it() {
        let ttl = Duration::from_millis(200);
        let gate = MemoryGate::new(ttl);
        let other = gate.new_session();
        let (mut one, mut two) = (LeaseLedger::new(), LeaseLedger::new());
        assert!(gate.acquire("k", "run", 1, 5).await.unwrap());
        one.granted("run", vec![Hold::new("k", 1)]);
        assert!(other.acquire("k", "run", 1, 5).await.unwrap());
        two.granted("run", vec![Hold::new("k", 1)]);
        // the second process finds the run is not its own: it lets go, the first keeps it
        two.forget("run");
        assert_eq!(two.upkeep(&other).await.unwrap().let_go, 1);
        tokio::time::sleep(ttl * 2).await;
        one.renew_soon();
        one.upkeep(&gate).await.unwrap();
        assert_eq!(gate.usage("k").await.unwrap(), 1, "kept by the first");
        assert!(one.holds("run") && !two.holds("run"));
        // kept by nobody, it lapses one TTL later
        one.forget("run");
        one.upkeep(&gate).await.unwrap();
        assert_eq!(gate.usage("k").await.unwrap(), 1, "not at once");
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        assert_eq!(gate.usage("k").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn holds_the_gate_lost_are_registered_again_at_the_heartbeat() {
        let gate = MemoryGate::new(Duration::from_secs(30));
        let mut ledger = LeaseLedger::new();
        assert!(gate.acquire("k", "a", 2, 5).await.unwrap());
        assert!(gate.acquire("k", "b", 1, 5).await.unwrap());
        ledger.granted("a", vec![Hold::new("k", 2)]);
        ledger.granted("b", vec![Hold::new("k", 1)]);
        ledger.upkeep(&gate).await.unwrap();
        // the session lives but one hold is gone (a failover to a replica that lagged)
        gate.release("k", "a").await.unwrap();
        ledger.renew_soon();
        let done = ledger.upkeep(&gate).await.unwrap();
        assert!(done.heartbeat);
        assert_eq!(done.reinstated, 2);
        assert_eq!(gate.usage("k").await.unwrap(), 3);
        // everything lost (Redis restarted empty): the session ended, a new one registers all
        gate.forget_everything();
        ledger.renew_soon();
        let done = ledger.upkeep(&gate).await.unwrap();
        assert_eq!(done.reinstated, 2);
        assert_eq!(gate.usage("k").await.unwrap(), 3);
        assert_eq!(gate.session_epoch(), 1);
        // at rest: a heartbeat, nothing registered
        ledger.renew_soon();
        let done = ledger.upkeep(&gate).await.unwrap();
        assert_eq!((done.heartbeat, done.reinstated), (true, 0));
    }

    #[tokio::test]
    async fn holds_the_ledger_does_not_know_are_let_go_at_the_heartbeat() {
        let ttl = Duration::from_millis(200);
        let gate = MemoryGate::new(ttl);
        let mut ledger = LeaseLedger::new();
        assert!(gate.acquire("k", "a", 1, 1).await.unwrap());
        ledger.granted("a", vec![Hold::new("k", 1)]);
        ledger.end("a");
        ledger.upkeep(&gate).await.unwrap();
        assert!(gate.acquire("p", "b", 1, 5).await.unwrap());
        ledger.granted("b", vec![Hold::new("p", 1)]);
        // a's release comes back (a failover to a replica that lagged): the session keeps it
        assert!(gate.acquire("k", "a", 1, 1).await.unwrap());
        ledger.renew_soon();
        let done = ledger.upkeep(&gate).await.unwrap();
        assert!(done.heartbeat);
        assert_eq!(done.surplus, 1);
        assert_eq!(gate.keep_alive().await.unwrap().kept, 1, "b only");
        assert_eq!(gate.kept().await.unwrap(), [("p".into(), "b".into())]);
        // a lapses one TTL later, b stays while the session lives
        let deadline = Instant::now() + ttl * 10;
        while !gate.holders("k").is_empty() {
            assert!(Instant::now() < deadline, "a never lapsed");
            assert!(!gate.keep_alive().await.unwrap().ended);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(gate.holders("p"), ["b"]);
        assert!(
            gate.acquire("k", "c", 1, 1).await.unwrap(),
            "the one slot is free"
        );
    }

    #[tokio::test]
    async fn unanswered_claims_are_let_go_unless_held() {
        let ttl = Duration::from_millis(100);
        let gate = MemoryGate::new(ttl);
        let mut ledger = LeaseLedger::new();
        let claim = |holder: &str| Claim {
            holder: holder.into(),
            slots: vec![crate::gate::Slot::new("k", 1, 5)],
        };
        // granted by the gate, but the answers were lost on the way back
        let claims = [claim("lost"), claim("kept")];
        assert_eq!(gate.acquire_all(&claims).await.unwrap().len(), 2);
        ledger.unanswered(&claims);
        // the next pass claims "kept" again and records it
        assert!(gate.acquire("k", "kept", 1, 5).await.unwrap());
        ledger.granted("kept", vec![Hold::new("k", 1)]);
        assert_eq!(ledger.upkeep(&gate).await.unwrap().let_go, 1);
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        ledger.renew_soon();
        ledger.upkeep(&gate).await.unwrap();
        assert_eq!(gate.holders("k"), ["kept"]);
    }
}
