//! dag-operator: a Kubernetes operator that schedules workflow DAGs.
//!
//! The pure core (`schedule`, `queue`, `graph`) has no async, Kubernetes, database or Redis
//! dependency; see ARCHITECTURE in the README.

pub mod api;
pub mod controller;
pub mod engine;
pub mod executor;
pub mod gate;
pub mod graph;
pub mod http;
pub mod k8s;
pub mod key;
pub mod leader;
pub mod logs;
pub mod operator;
pub mod queue;
pub mod report;
pub mod schedule;
pub mod store;
pub mod telemetry;
