//! dag-operator: a Kubernetes operator that schedules workflow DAGs.
//!
//! The pure core (`schedule`, `queue`, `graph`) has no async, Kubernetes, database or Redis
//! dependency; see ARCHITECTURE in the README.

pub mod api;
pub mod graph;
pub mod queue;
pub mod schedule;
