//! Lifecycle, round 3 (issue 27): the ways work was still lost, doubled or held in the engine
//! — each test is the regression test of a defect the issue names, the real engine on a real
//! PostgreSQL with the clock in the test's hands.

mod common;
#[path = "support/faulty.rs"]
mod faulty;
#[path = "support/engine.rs"]
mod support;

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use dag_operator::engine::{Command, EngineConfig};
use dag_operator::store::{DagKey, RunState};
use support::{Harness, info, spec, utc};

fn t0() -> DateTime<Utc> {
    utc("2025-01-01T00:00:00Z")
}

/// Defect 1: the set of existing DAGs comes from the last listing, which can be hours old; a
/// DAG created since and then made invalid left the engine's map, so a resync took its
/// running run for a deleted DAG's and cancelled it. SPEC §11: the run finishes.
#[tokio::test]
async fn a_running_run_of_a_dag_created_after_the_listing_survives_it_going_invalid() {
    let store = common::fresh_store("r3_invalid_listed").await;
    let mut h = Harness::new(store, EngineConfig::default()).await;
    // the watch listed the DAGs at start: none yet
    h.engine.apply(Command::Listed(HashMap::new()), t0());
    let x = spec("schedule: '* * * * *'");
    h.upsert(info("x", t0(), x), t0());
    h.tick(t0() + Duration::minutes(1)).await;
    assert!(!h.runs("x").await.is_empty(), "the first ticks' runs");
    // a broken cron: the DAG goes invalid; the next resync looks at the running runs
    h.engine
        .apply(Command::Invalid(DagKey::new("ns", "x")), t0());
    h.engine.resync_active().await.expect("resync");
    h.tick(t0() + Duration::minutes(2)).await;
    for run in h.runs("x").await {
        assert_eq!(
            run.state,
            RunState::Running,
            "the run of an invalid DAG goes on; it was cancelled as if the DAG were deleted"
        );
    }
    assert!(h.events("RunCancelled").is_empty());
}
