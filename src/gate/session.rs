//! A gate session as its holder sees it (SPEC §7): the id it goes by, whether that id was
//! registered, and an epoch that moves on each time the session is found ended. An ended
//! session is never revived: the holder goes on under a new id (`<base>.<epoch>`) and registers
//! what it holds again. Shared by the Redis and the in-process gate; the lease lives in the gate.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

/// What a heartbeat ([`crate::gate::Gate::keep_alive`]) found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// the session had ended: its holds are gone or going, its holder now goes on under a new
    /// session and registers them again
    pub ended: bool,
    /// how many holds the session keeps (after the heartbeat)
    pub kept: u64,
}

#[derive(Debug)]
pub struct Session {
    base: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    registered: bool,
}

impl Session {
    pub fn new(base: String) -> Self {
        Session {
            base,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id_at(&self, epoch: u64) -> String {
        format!("{}.{epoch}", self.base)
    }

    /// The id to send, and whether it was registered before (a heartbeat registers a new id,
    /// but does not revive a registered one that ended).
    pub fn current(&self) -> (String, bool) {
        let state = self.lock();
        (self.id_at(state.epoch), state.registered)
    }

    /// Takes a heartbeat's answer for `id`: was its lease running (a new id is registered by
    /// it and answers yes)? Returns whether the session's holds stood; `false` moves on to the
    /// next epoch and a new id. An answer about an earlier id changes nothing.
    pub fn observe(&self, id: &str, alive: bool) -> bool {
        let mut state = self.lock();
        if id != self.id_at(state.epoch) {
            return alive;
        }
        if alive {
            state.registered = true;
            return true;
        }
        state.epoch += 1;
        state.registered = false;
        false
    }

    /// A heartbeat as every gate gives one: `beat(id, registered)` answers whether the lease
    /// ran and how many holds the session keeps; when the session had ended, the new
    /// session's first beat follows at once.
    pub async fn keep_alive<E, F, Fut>(&self, mut beat: F) -> Result<Heartbeat, E>
    where
        F: FnMut(String, bool) -> Fut,
        Fut: Future<Output = Result<(bool, u64), E>>,
    {
        let (id, registered) = self.current();
        let (alive, kept) = beat(id.clone(), registered).await?;
        if self.observe(&id, alive) {
            return Ok(Heartbeat { ended: false, kept });
        }
        let (id, registered) = self.current();
        let (alive, kept) = beat(id.clone(), registered).await?;
        self.observe(&id, alive);
        Ok(Heartbeat { ended: true, kept })
    }

    /// How many times the session was found ended.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_session_goes_on_under_a_new_id() {
        let s = Session::new("s".into());
        let (id, registered) = s.current();
        assert_eq!((id.as_str(), registered), ("s.0", false));
        assert!(s.observe(&id, true));
        assert_eq!(s.current(), ("s.0".to_string(), true));
        assert!(!s.observe(&id, false), "ended after it ran");
        assert_eq!((s.epoch(), s.current()), (1, ("s.1".to_string(), false)));
        assert!(!s.observe("s.0", false), "a late answer about s.0");
        assert_eq!(s.epoch(), 1, "changes nothing");
        assert!(s.observe("s.1", true));
        assert_eq!(s.current(), ("s.1".to_string(), true));
    }
}
