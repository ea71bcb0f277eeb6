//! Pools (SPEC §2.2): the executor holds their slots and reports each Pool's usage; here that
//! usage becomes the Pool's status (`usedSlots`, `openSlots`, `queuedTasks`, a Ready condition)
//! and its metrics. A status write is the Pool's reconcile (`controller="pool"`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::api::PoolStatus;
use crate::api::conditions::{Condition, READY, set_condition};
use crate::executor::output::PoolUsage;
use crate::key::PoolKey;
use crate::telemetry::{ControllerKind, Metrics};

/// The Pools' conditions as last written, and their metrics.
#[derive(Default)]
pub struct PoolStatuses {
    conditions: HashMap<PoolKey, Vec<Condition>>,
    metrics: Option<Arc<Metrics>>,
}

impl PoolStatuses {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        PoolStatuses {
            conditions: HashMap::new(),
            metrics,
        }
    }

    /// A Pool's usage changed: its metrics now, and the status to write.
    pub fn status(&mut self, usage: &PoolUsage, now: DateTime<Utc>) -> PoolStatus {
        if let Some(m) = &self.metrics {
            m.set_pool_slots(
                &usage.key.namespace,
                &usage.key.name,
                usage.used.into(),
                (usage.slots - usage.used).max(0).into(),
                usage.queued.into(),
            );
        }
        let conditions = self.conditions.entry(usage.key.clone()).or_default();
        render_pool(usage, conditions, now)
    }

    /// The Pool was deleted: its metrics and conditions go.
    pub fn gone(&mut self, key: &PoolKey) {
        self.conditions.remove(key);
        if let Some(m) = &self.metrics {
            m.remove_pool(&key.namespace, &key.name);
        }
    }

    /// A DAG was deleted: its series go (the writer holds the metrics).
    pub fn forget_dag(&self, dag: &crate::key::DagKey) {
        if let Some(m) = &self.metrics {
            m.remove_dag(&dag.namespace, &dag.name);
        }
    }

    /// One status write took `secs` (`error`: why it failed).
    pub fn written(&self, secs: f64, error: Option<&'static str>) {
        if let Some(m) = &self.metrics {
            m.reconcile_observed(ControllerKind::Pool, secs, error);
        }
    }
}

/// A Pool's status from its usage.
pub fn render_pool(
    usage: &PoolUsage,
    conditions: &mut Vec<Condition>,
    now: DateTime<Utc>,
) -> PoolStatus {
    let open = (usage.slots - usage.used).max(0);
    let (reason, message) = if open > 0 {
        (
            "SlotsOpen",
            format!("{} of {} slots used, {open} open", usage.used, usage.slots),
        )
    } else {
        (
            "Full",
            format!(
                "{} of {} slots used; {} tasks wait for a slot",
                usage.used, usage.slots, usage.queued
            ),
        )
    };
    set_condition(
        conditions,
        Condition::new(READY, true, reason, message, usage.generation, now),
    );
    PoolStatus {
        observed_generation: usage.generation,
        used_slots: usage.used,
        queued_tasks: usage.queued,
        open_slots: open,
        conditions: conditions.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_status() {
        let now = Utc::now();
        let mut conditions = Vec::new();
        let mut usage = PoolUsage {
            key: PoolKey::new("ns", "db"),
            generation: Some(2),
            slots: 2,
            used: 1,
            queued: 0,
        };
        let s = render_pool(&usage, &mut conditions, now);
        assert_eq!((s.used_slots, s.open_slots, s.queued_tasks), (1, 1, 0));
        assert_eq!(s.conditions[0].reason, "SlotsOpen");
        // lowered below usage: nothing negative, running tasks keep their slots
        usage.slots = 1;
        usage.used = 2;
        usage.queued = 3;
        let s = render_pool(&usage, &mut conditions, now);
        assert_eq!((s.used_slots, s.open_slots, s.queued_tasks), (2, 0, 3));
        assert_eq!(s.conditions[0].reason, "Full");
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn a_deleted_pool_loses_its_series() {
        let metrics = Arc::new(Metrics::new());
        let mut pools = PoolStatuses::new(Some(metrics.clone()));
        let usage = PoolUsage {
            key: PoolKey::new("ns", "gpu"),
            generation: None,
            slots: 4,
            used: 1,
            queued: 0,
        };
        pools.status(&usage, Utc::now());
        assert!(metrics.encode().contains("namespace=\"ns\",pool=\"gpu\""));
        pools.gone(&usage.key);
        assert!(!metrics.encode().contains("pool=\"gpu\""));
    }
}
