//! The example manifests parse as the API types and pass the controller's checks.

use dag_operator::api::{Backfill, Dag, Pool};
use dag_operator::schedule::BackfillPlan;

fn read(name: &str) -> String {
    let path = format!("{}/manifests/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn example_dags_are_valid() {
    for file in [
        "dag-etl-pipeline.yaml",
        "dag-every-second.yaml",
        "dag-run-timeout.yaml",
        "dag-buffer-one.yaml",
        "dag-auto-suspend.yaml",
    ] {
        let dag: Dag = serde_yaml::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (schedule, graph) = dag
            .spec
            .validate(chrono_tz::Tz::UTC)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(schedule.is_some(), "{file} has a schedule");
        assert!(!graph.is_empty());
    }
}

#[test]
fn example_pool_and_backfill_parse() {
    let pool: Pool = serde_yaml::from_str(&read("pool-warehouse.yaml")).expect("pool");
    assert_eq!(pool.spec.slots, 2);
    let bf: Backfill = serde_yaml::from_str(&read("backfill-january.yaml")).expect("backfill");
    let dag: Dag = serde_yaml::from_str(&read("dag-etl-pipeline.yaml")).expect("dag");
    assert_eq!(
        bf.spec.dag_ref.name,
        dag.metadata.name.clone().unwrap_or_default()
    );
    let schedule = dag
        .spec
        .parse_schedule(chrono_tz::Tz::UTC)
        .expect("valid")
        .expect("scheduled");
    let plan = BackfillPlan::new(&schedule, bf.spec.start, bf.spec.end, bf.spec.order.into());
    assert_eq!(plan.count(), 31);
}
