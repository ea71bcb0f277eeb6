//! Readiness state behind `/readyz` (SPEC §9): leader or standby, store and gate reachable.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Where this replica stands in leader election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Leader election has not decided yet.
    Starting,
    /// Holds the lease: schedules and admits.
    Leader,
    /// Another replica leads; this one is ready to take over.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Leader,
            2 => Role::Standby,
            _ => Role::Starting,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Readiness inputs, updated by the parts that know them (leader election, store, gate).
///
/// Starts not ready: role `Starting`, store and gate not yet confirmed. A replica running
/// with the in-process gate sets the gate ok once it is built.
#[derive(Debug)]
pub struct Health {
    role: AtomicU8,
    store_ok: AtomicBool,
    gate_ok: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            role: AtomicU8::new(Role::Starting as u8),
            store_ok: AtomicBool::new(false),
            gate_ok: AtomicBool::new(false),
        }
    }

    /// PostgreSQL answered (true) or failed (false) the last time it was used or probed.
    pub fn set_store_ok(&self, ok: bool) {
        self.store_ok.store(ok, Ordering::Relaxed);
    }

    /// The gate (Redis or in-process) answered (true) or failed (false) last time.
    pub fn set_gate_ok(&self, ok: bool) {
        self.gate_ok.store(ok, Ordering::Relaxed);
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    /// Ready when the role is Leader or Standby and both store and gate are reachable;
    /// otherwise the error names every part that is not, e.g.
    /// `"store unreachable; gate unreachable"`.
    pub fn ready(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.role() == Role::Starting {
            problems.push("leader election not settled");
        }
        if !self.store_ok.load(Ordering::Relaxed) {
            problems.push("store unreachable");
        }
        if !self.gate_ok.load(Ordering::Relaxed) {
            problems.push("gate unreachable");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Health>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_and_names_every_reason() {
        let h = Health::new();
        assert_eq!(h.role(), Role::Starting);
        assert_eq!(
            h.ready(),
            Err("leader election not settled; store unreachable; gate unreachable".into())
        );
    }

    #[test]
    fn ready_needs_role_store_and_gate() {
        let h = Health::new();
        h.set_store_ok(true);
        h.set_gate_ok(true);
        assert_eq!(h.ready(), Err("leader election not settled".into()));
        for role in [Role::Leader, Role::Standby] {
            h.set_role(role);
            assert_eq!(h.role(), role);
            assert_eq!(h.ready(), Ok(()));
        }
        h.set_store_ok(false);
        assert_eq!(h.ready(), Err("store unreachable".into()));
        h.set_store_ok(true);
        h.set_gate_ok(false);
        assert_eq!(h.ready(), Err("gate unreachable".into()));
        h.set_gate_ok(true);
        h.set_role(Role::Starting);
        assert!(h.ready().is_err());
    }
}
