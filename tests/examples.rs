//! The example manifests parse as the API types and pass the controller's checks.

use dag_operator::api::{Backfill, Dag, Pool};
use dag_operator::graph::{Decision, TaskGraph, TaskState};
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
        "dag-trigger-rules.yaml",
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

/// The trigger-rules example does what its comments say.
#[test]
fn trigger_rules_example_behaves_as_described() {
    let dag: Dag = serde_yaml::from_str(&read("dag-trigger-rules.yaml")).expect("dag");
    let graph = dag.spec.graph().expect("valid graph");
    let task = |name: &str| {
        graph
            .index_of(name)
            .unwrap_or_else(|| panic!("no task {name}"))
    };
    let states = |set: &[(&str, TaskState)]| {
        let mut s = vec![TaskState::Pending; graph.len()];
        for (name, state) in set {
            s[task(name)] = *state;
        }
        s
    };
    let decided = |g: &TaskGraph, set: &[(&str, TaskState)]| {
        let mut d: Vec<(String, Decision)> = g
            .evaluate(&states(set))
            .into_iter()
            .map(|(t, d)| (g.name(t).to_string(), d))
            .collect();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        d
    };
    use TaskState::*;
    // merge starts with the first source, the other still running
    assert_eq!(
        decided(
            &graph,
            &[("fetch-primary", Running), ("fetch-mirror", Success)]
        ),
        [("merge".to_string(), Decision::Ready)]
    );
    // both sources fail: merge and publish upstream_failed, notify and cleanup run, and
    // mark-exported (NoneFailed) is upstream_failed at once, without waiting for cleanup
    let both_failed = decided(
        &graph,
        &[("fetch-primary", Failed), ("fetch-mirror", Failed)],
    );
    assert_eq!(
        both_failed,
        [
            ("cleanup".to_string(), Decision::Ready),
            ("mark-exported".to_string(), Decision::UpstreamFailed),
            ("merge".to_string(), Decision::UpstreamFailed),
            ("notify-failure".to_string(), Decision::Ready),
            ("publish".to_string(), Decision::UpstreamFailed),
        ]
    );
    // everything succeeded: the notification is skipped, the run succeeds
    let happy = [
        ("fetch-primary", Success),
        ("fetch-mirror", Success),
        ("merge", Success),
        ("publish", Success),
        ("cleanup", Success),
    ];
    assert_eq!(
        decided(&graph, &happy),
        [
            ("mark-exported".to_string(), Decision::Ready),
            ("notify-failure".to_string(), Decision::Skipped),
        ]
    );
}
