//! The leases one process holds, and their upkeep: release what ended, register what runs but
//! is not held (after a restart, or when the gate lost it), renew everything every
//! [`Gate::renew_interval`]. Shared by the engine (runs) and the executor (task tries).

use std::collections::HashMap;
use std::time::Instant;

use super::{Gate, GateError, reinstate};

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
    pub reinstated: usize,
    pub renewed: usize,
}

/// The leases of one process: holder → the semaphores it holds.
#[derive(Debug, Default)]
pub struct LeaseLedger {
    held: HashMap<String, Vec<Hold>>,
    /// holds to register without a limit (adopted: they run already)
    adopt: Vec<(String, Vec<Hold>)>,
    /// holds to give back
    release: Vec<(String, Vec<Hold>)>,
    last_renewal: Option<Instant>,
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

    /// Stops renewing a holder's holds without giving them back: they may be another
    /// process's too (replicas claim a run under one name), so they lapse within one TTL
    /// unless that process renews them.
    pub fn forget(&mut self, holder: &str) {
        self.held.remove(holder);
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

    /// Gives back what ended, registers what was adopted, and renews every lease once a
    /// renew interval has passed (a lease the gate lost is registered again). On an error the
    /// work left is kept for the next call.
    pub async fn upkeep<G: Gate>(&mut self, gate: &G) -> Result<Upkeep, GateError> {
        let mut done = Upkeep::default();
        while let Some((holder, holds)) = self.release.pop() {
            let keys: Vec<String> = holds.iter().map(|h| h.key.clone()).collect();
            for key in keys {
                if let Err(e) = gate.release(&key, &holder).await {
                    // the lease runs out by itself within one TTL; try again next time
                    self.release.push((holder, holds));
                    return Err(e);
                }
            }
            done.released += 1;
        }
        if !self.adopt.is_empty() {
            let leases = flatten(self.adopt.iter().map(|(h, holds)| (h, holds)));
            reinstate(gate, &leases).await?;
            done.reinstated += self.adopt.len();
            self.adopt.clear();
        }
        if self
            .last_renewal
            .is_some_and(|t| t.elapsed() < gate.renew_interval())
        {
            return Ok(done);
        }
        let leases = flatten(&self.held);
        let pairs: Vec<(String, String)> = leases
            .iter()
            .map(|(key, holder, _)| (key.clone(), holder.clone()))
            .collect();
        let kept = gate.renew_all(&pairs).await?;
        let lost: Vec<(String, String, u32)> = leases
            .into_iter()
            .zip(kept)
            .filter(|(_, ok)| !ok)
            .map(|(lease, _)| lease)
            .collect();
        reinstate(gate, &lost).await?;
        done.renewed = pairs.len();
        done.reinstated += lost.len();
        self.last_renewal = Some(Instant::now());
        Ok(done)
    }

    /// Renews at the next upkeep, whatever the interval says (e.g. after an outage).
    pub fn renew_soon(&mut self) {
        self.last_renewal = None;
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
        let gate = MemoryGate::new(Duration::from_secs(30));
        let (mut one, mut two) = (LeaseLedger::new(), LeaseLedger::new());
        assert!(gate.acquire("k", "run", 1, 5).await.unwrap());
        one.granted("run", vec![Hold::new("k", 1)]);
        assert!(gate.acquire("k", "run", 1, 5).await.unwrap());
        two.granted("run", vec![Hold::new("k", 1)]);
        // the second process finds the run is not its own: it forgets, the first keeps it
        two.forget("run");
        two.upkeep(&gate).await.unwrap();
        assert_eq!(gate.usage("k").await.unwrap(), 1);
        assert!(one.holds("run") && !two.holds("run"));
    }

    #[tokio::test]
    async fn a_lease_the_gate_lost_is_registered_again_at_renewal() {
        let gate = MemoryGate::new(Duration::from_secs(30));
        let mut ledger = LeaseLedger::new();
        assert!(gate.acquire("k", "a", 2, 5).await.unwrap());
        ledger.granted("a", vec![Hold::new("k", 2)]);
        gate.release("k", "a").await.unwrap(); // the gate forgot it
        ledger.renew_soon();
        let done = ledger.upkeep(&gate).await.unwrap();
        assert_eq!((done.renewed, done.reinstated), (1, 1));
        assert_eq!(gate.usage("k").await.unwrap(), 2);
    }
}
