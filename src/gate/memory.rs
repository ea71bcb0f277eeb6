//! The in-process gate: the semantics of the Redis gate for a single replica (SPEC §7,
//! "without `--redis-url`") and for engine tests. Leases expire on the monotonic clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Claim, Gate, GateError, Grant, Slot, check_claim, check_holder, check_key, check_ttl};

/// One holder's slots: its weight and when its lease ends.
#[derive(Clone, Copy, Debug)]
struct Lease {
    weight: u32,
    expires: Instant,
}

type Semaphores = HashMap<String, HashMap<String, Lease>>;

/// Weighted semaphores with leases in a `Mutex<HashMap>`; cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct MemoryGate {
    lease_ttl: Duration,
    semaphores: Arc<Mutex<Semaphores>>,
}

impl MemoryGate {
    /// A gate whose leases last `lease_ttl` without renewal. A TTL below one millisecond is
    /// raised to one millisecond (the Redis gate's resolution).
    pub fn new(lease_ttl: Duration) -> Self {
        let lease_ttl = if check_ttl(lease_ttl).is_ok() {
            lease_ttl
        } else {
            Duration::from_millis(1)
        };
        MemoryGate {
            lease_ttl,
            semaphores: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Forgets every lease at once: what a Redis restarted without its data looks like to
    /// the holders (tests of the executor's and the engine's in-process floors).
    pub fn forget_everything(&self) {
        self.lock().clear();
    }

    /// The holders of a semaphore with an unexpired lease, sorted (for tests and diagnostics).
    pub fn holders(&self, key: &str) -> Vec<String> {
        let now = Instant::now();
        let mut holders: Vec<String> = self
            .lock()
            .get(key)
            .map(|h| {
                h.iter()
                    .filter(|(_, lease)| lease.expires > now)
                    .map(|(holder, _)| holder.clone())
                    .collect()
            })
            .unwrap_or_default();
        holders.sort();
        holders
    }

    fn lock(&self) -> MutexGuard<'_, Semaphores> {
        // Every critical section leaves the map consistent, so a poisoned lock is still good.
        self.semaphores.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acquire_now(
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

    fn acquire_all_now(&self, claims: &[Claim]) -> Result<Vec<Grant>, GateError> {
        for claim in claims {
            check_claim(claim)?;
        }
        let now = Instant::now();
        let expires = now + self.lease_ttl;
        let mut semaphores = self.lock();
        // each semaphore's weighted count, computed once per call (after dropping expired
        // leases) and kept up to date as claims are granted
        let mut used: HashMap<String, u64> = HashMap::new();
        let mut grants = Vec::with_capacity(claims.len());
        for claim in claims {
            let mut refused = None;
            for (i, Slot { key, weight, limit }) in claim.slots.iter().enumerate() {
                let holders = semaphores.entry(key.clone()).or_default();
                let count = used.entry(key.clone()).or_insert_with(|| {
                    holders.retain(|_, lease| lease.expires > now);
                    holders.values().map(|l| u64::from(l.weight)).sum()
                });
                if holders.contains_key(&claim.holder) {
                    continue;
                }
                if *count + u64::from(*weight) > u64::from(*limit) {
                    refused = Some(i);
                    break;
                }
            }
            if let Some(i) = refused {
                grants.push(Grant::Refused(i));
                continue;
            }
            for Slot { key, weight, .. } in &claim.slots {
                let holders = semaphores.entry(key.clone()).or_default();
                match holders.get_mut(&claim.holder) {
                    Some(lease) => lease.expires = expires,
                    None => {
                        holders.insert(
                            claim.holder.clone(),
                            Lease {
                                weight: *weight,
                                expires,
                            },
                        );
                        *used.entry(key.clone()).or_default() += u64::from(*weight);
                    }
                }
            }
            grants.push(Grant::Granted);
        }
        semaphores.retain(|_, holders| !holders.is_empty());
        Ok(grants)
    }

    fn renew_locked(&self, semaphores: &mut Semaphores, key: &str, holder: &str) -> bool {
        let now = Instant::now();
        let Some(holders) = semaphores.get_mut(key) else {
            return false;
        };
        let renewed = match holders.get_mut(holder) {
            Some(lease) if lease.expires > now => {
                lease.expires = now + self.lease_ttl;
                true
            }
            Some(_) => {
                holders.remove(holder);
                false
            }
            None => false,
        };
        if holders.is_empty() {
            semaphores.remove(key);
        }
        renewed
    }

    fn renew_now(&self, key: &str, holder: &str) -> Result<bool, GateError> {
        check_key(key)?;
        check_holder(holder)?;
        Ok(self.renew_locked(&mut self.lock(), key, holder))
    }

    fn renew_all_now(&self, leases: &[(String, String)]) -> Result<Vec<bool>, GateError> {
        for (key, holder) in leases {
            check_key(key)?;
            check_holder(holder)?;
        }
        let mut semaphores = self.lock();
        Ok(leases
            .iter()
            .map(|(key, holder)| self.renew_locked(&mut semaphores, key, holder))
            .collect())
    }

    fn release_now(&self, key: &str, holder: &str) -> Result<(), GateError> {
        check_key(key)?;
        check_holder(holder)?;
        let mut semaphores = self.lock();
        if let Some(holders) = semaphores.get_mut(key) {
            holders.remove(holder);
            if holders.is_empty() {
                semaphores.remove(key);
            }
        }
        Ok(())
    }

    fn usage_now(&self, key: &str) -> Result<u32, GateError> {
        check_key(key)?;
        let now = Instant::now();
        let semaphores = self.lock();
        let used: u64 = semaphores
            .get(key)
            .map(|holders| {
                holders
                    .values()
                    .filter(|l| l.expires > now)
                    .map(|l| u64::from(l.weight))
                    .sum()
            })
            .unwrap_or(0);
        Ok(u32::try_from(used).unwrap_or(u32::MAX))
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
        self.acquire_now(key, holder, weight, limit)
    }

    async fn acquire_all(&self, claims: &[Claim]) -> Result<Vec<Grant>, GateError> {
        self.acquire_all_now(claims)
    }

    async fn renew(&self, key: &str, holder: &str) -> Result<bool, GateError> {
        self.renew_now(key, holder)
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), GateError> {
        self.release_now(key, holder)
    }

    async fn usage(&self, key: &str) -> Result<u32, GateError> {
        self.usage_now(key)
    }

    async fn renew_all(&self, leases: &[(String, String)]) -> Result<Vec<bool>, GateError> {
        self.renew_all_now(leases)
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

    #[test]
    fn expired_semaphores_leave_no_entry() {
        let gate = MemoryGate::new(Duration::from_millis(1));
        assert_eq!(gate.acquire_now("k", "a", 1, 1), Ok(true));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(gate.renew_now("k", "a"), Ok(false));
        assert!(gate.lock().is_empty(), "{:?}", gate.lock());
        assert_eq!(gate.acquire_now("k", "b", 2, 1), Ok(false));
        assert!(
            gate.lock().is_empty(),
            "a refused acquire leaves nothing behind"
        );
    }
}
