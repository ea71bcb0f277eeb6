//! Several operator processes on one Redis and one PostgreSQL (SPEC §4, §7, §11 "two
//! replicas"): even with leader election off — split brain — they never exceed a limit
//! together and never create a run twice.

use std::time::Duration;

use dag_operator::store::{RunFilter, RunState, RunStore};
use dag_operator_e2e::scenario::{dag_with_spec, setup};
use dag_operator_e2e::{assert_one_run_per_tick, eventually};

const LIMIT: usize = 3;

#[tokio::test]
async fn two_operators_without_leader_election_share_the_global_limit_and_create_each_run_once() {
    let s = setup("split-brain").await;
    s.apply(&dag_with_spec(
        "tick",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 100\n  maxCatchupRuns: 1000\n  tasks:\n  - {name: a, container: {image: e2e.local/hold}}\n",
    ));
    let limit = LIMIT.to_string();
    let args = ["--max-concurrent-runs", limit.as_str()];
    let first = s.operator(&args);
    let second = s.operator(&args);
    let filter = RunFilter {
        namespace: Some(s.ns.name.clone()),
        dag_name: Some("tick".into()),
        state: None,
        limit: 1_000_000,
    };
    eventually(Duration::from_secs(60), "the limit reached", || async {
        let runs = s.store.list_runs(&filter).await.ok()?;
        (runs.iter().filter(|r| r.state == RunState::Running).count() == LIMIT).then_some(())
    })
    .await;
    // keep finishing runs so both replicas keep competing for the freed slots
    let mut finished = 0;
    for _ in 0..60 {
        let runs = s.store.list_runs(&filter).await.unwrap_or_default();
        let active = runs.iter().filter(|r| r.state == RunState::Running).count();
        assert!(
            active <= LIMIT,
            "{active} runs running with --max-concurrent-runs {LIMIT} on both replicas"
        );
        finished = runs.iter().filter(|r| r.state == RunState::Success).count();
        s.all_pods_outcome("succeed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(finished >= 5, "only {finished} runs finished: no progress");
    let runs = s.store.list_runs(&filter).await.unwrap_or_default();
    // both admit the oldest queued tick first: what exists is every tick from the first on
    assert_one_run_per_tick(&runs, 1);
    // each try ran as one Pod: the replicas did not start a try twice
    let ids: Vec<_> = runs.iter().map(|r| r.id).collect();
    let tries = s.store.task_instances(&ids).await.unwrap_or_default();
    assert!(
        tries.iter().all(|t| t.try_number == 1),
        "a task was retried"
    );
    drop((first, second));
}

/// The value of an unlabelled metric (or the sum of a family's series) from `/metrics`.
async fn metric(op: &dag_operator_e2e::operator::Operator, name: &str) -> Option<f64> {
    let (_, body) = op.get("/metrics").await?;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[tokio::test]
async fn with_leader_election_one_replica_admits_and_a_standby_takes_over_after_kill_9() {
    let s = setup("leader").await;
    s.apply(&dag_with_spec(
        "tick",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1000\n  maxCatchupRuns: 1000\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let lease_secs = 6;
    let duration = format!("{lease_secs}s");
    let args = [
        "--leader-election=true",
        "--leader-election-namespace",
        s.ns.name.as_str(),
        "--leader-lease-duration",
        duration.as_str(),
    ];
    let mut first = s.operator(&args);
    eventually(
        Duration::from_secs(60),
        "the first replica leads",
        || async { (metric(&first, "dagop_leader").await == Some(1.0)).then_some(()) },
    )
    .await;
    let second = s.operator(&args);
    eventually(
        Duration::from_secs(60),
        "the second replica ready as standby",
        || async {
            let ready = second.get("/readyz").await.is_some_and(|(c, _)| c == 200);
            (ready && metric(&second, "dagop_leader").await == Some(0.0)).then_some(())
        },
    )
    .await;
    // exactly one admits: the standby creates nothing while the leader schedules
    eventually(
        Duration::from_secs(30),
        "the leader creating runs",
        || async { (metric(&first, "dagop_runs_created_total").await >= Some(3.0)).then_some(()) },
    )
    .await;
    for _ in 0..8 {
        assert_eq!(metric(&second, "dagop_runs_created_total").await, Some(0.0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    first.kill9();
    let killed = std::time::Instant::now();
    eventually(
        Duration::from_secs(30),
        "the standby to take over",
        || async { (metric(&second, "dagop_leader").await == Some(1.0)).then_some(()) },
    )
    .await;
    let handover = killed.elapsed();
    // the Lease lapses at most one duration after the last renewal; the standby looks every
    // duration/7
    assert!(
        handover <= Duration::from_secs(lease_secs) + Duration::from_millis(1500),
        "handover took {handover:?} with a {lease_secs}s lease"
    );
    let taken_over = chrono::Utc::now();
    let filter = RunFilter {
        namespace: Some(s.ns.name.clone()),
        dag_name: Some("tick".into()),
        state: None,
        limit: 1_000_000,
    };
    let runs = eventually(
        Duration::from_secs(60),
        "runs after the handover",
        || async {
            let runs = s.store.list_runs(&filter).await.ok()?;
            runs.iter()
                .any(|r| r.logical_date > taken_over + chrono::Duration::seconds(3))
                .then_some(runs)
        },
    )
    .await;
    // every due tick across the handover has exactly one run
    assert_one_run_per_tick(&runs, 1);
    assert!(metric(&second, "dagop_runs_created_total").await >= Some(1.0));
}
