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
        "dag-schedules.yaml",
        "dag-jitter.yaml",
        "dag-depends-on.yaml",
        "dag-pod-template.yaml",
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

/// The podTemplate example's Pods: the template and the defaults applied, the task's own
/// values winning, and `$(DS)` left for Kubernetes to expand from the variables it is given.
#[test]
fn the_pod_template_example_builds_its_pods() {
    use dag_operator::executor::pod::{DagClock, build_pod};
    use dag_operator::store::{DagKey, RunRow, RunState, RunType};

    let dag: Dag = serde_yaml::from_str(&read("dag-pod-template.yaml")).expect("dag");
    let (schedule, _) = dag.spec.validate(chrono_tz::Tz::UTC).expect("valid");
    let tick = schedule
        .expect("scheduled")
        .next_after("2024-02-29T12:00:00Z".parse().expect("date"))
        .expect("a tick");
    let run = RunRow {
        id: uuid::Uuid::nil(),
        dag: DagKey::new("ns", "daily-report"),
        dag_uid: "uid".into(),
        run_type: RunType::Scheduled,
        backfill_name: None,
        logical_date: tick,
        data_interval_start: tick,
        data_interval_end: tick,
        priority: 0,
        state: RunState::Running,
        params: serde_json::json!({}),
        attempt: 1,
        created_at: tick,
        started_at: Some(tick),
        ended_at: None,
        spec_hash: None,
    };
    let clock = DagClock::of(&dag.spec, chrono_tz::Tz::UTC);
    let pods: Vec<_> = dag
        .spec
        .tasks
        .iter()
        .map(|t| build_pod(&run, &dag.spec, &clock, t, 1))
        .collect();
    let env = |i: usize, name: &str| -> String {
        pods[i].spec.as_ref().expect("spec").containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("{name}"))
    };
    // 06:00 in Tokyo on 2024-03-01 is 21:00 UTC on 2024-02-29
    assert_eq!(tick.to_rfc3339(), "2024-02-29T21:00:00+00:00");
    assert_eq!(env(0, "DS"), "2024-03-01");
    assert_eq!(env(0, "TS"), "2024-03-01T06:00:00+09:00");
    assert_eq!(env(0, "PREV_LOGICAL_DATE"), "2024-02-28T21:00:00Z");
    assert_eq!(env(0, "OUTPUT"), "/scratch/$(DS)");
    assert_eq!(env(2, "OUTPUT"), "/scratch/published-$(DS_NODASH)");
    for (i, pod) in pods.iter().enumerate() {
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["team"], "analytics");
        assert_eq!(labels["dagoperator.io/dag"], "daily-report");
        let spec = pod.spec.as_ref().expect("spec");
        assert!(spec.security_context.is_some());
        let c = &spec.containers[0];
        let image = if i == 2 {
            "docker.io/library/busybox:1.35"
        } else {
            "busybox:1.35"
        };
        assert_eq!(c.image.as_deref(), Some(image));
        assert_eq!(c.volume_mounts.as_ref().map(Vec::len), Some(1));
        assert!(c.args.iter().flatten().any(|a| a.contains("$(")));
    }
}

#[test]
fn the_triggered_by_example_is_valid_and_unscheduled() {
    let dag: Dag = serde_yaml::from_str(&read("dag-triggered-by.yaml")).expect("dag");
    let (schedule, _) = dag.spec.validate(chrono_tz::Tz::UTC).expect("valid");
    assert!(schedule.is_none(), "runs only when its upstream succeeds");
    assert_eq!(dag.spec.triggered_by[0].dag, "load-sales");
}
