//! Redis Sentinel failover under a steady every-second DAG (issue 17, SPEC §7, §11): the
//! operator finds the master through the Sentinel, the master is killed, the Sentinel promotes
//! the replica, and the operator follows it by itself — one run per tick (no duplicate, no
//! gap), the Pool's limit and `--max-concurrent-runs` never exceeded, and the new master holds
//! the gate's leases afterwards. The group is the test's own (e2e/src/sentinel.rs), so the
//! plane's shared Redis is untouched.

use std::time::Duration;

use dag_operator::store::{RunState, RunStore};
use dag_operator_e2e::assert_one_run_per_tick;
use dag_operator_e2e::eventually;
use dag_operator_e2e::scenario::{dag_with_spec, setup};
use dag_operator_e2e::sentinel::{MASTER_NAME, SentinelGroup};

const RUNS: usize = 4;
const POOL_SLOTS: usize = 2;

#[tokio::test]
async fn a_sentinel_failover_loses_no_tick_duplicates_none_and_exceeds_no_limit() {
    let s = setup("sentinel").await;
    let mut group = SentinelGroup::start("failover").await;
    s.apply(&format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {{name: two}}\nspec:\n  slots: {POOL_SLOTS}\n"
    ));
    s.apply(&dag_with_spec(
        "steady",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1000\n  maxCatchupRuns: 1000\n  tasks:\n  - {name: a, pool: two, container: {image: busybox}}\n",
    ));
    let sentinel = group.sentinel_address();
    let limit = RUNS.to_string();
    let op = s.operator(&[
        "--redis-sentinel",
        &sentinel,
        "--redis-sentinel-master",
        MASTER_NAME,
        "--max-concurrent-runs",
        &limit,
        "--lease-ttl",
        "6s",
    ]);
    // within limits: runs running in PostgreSQL, tries running, Pods alive
    let check = || async {
        let runs = s.runs("steady").await;
        let active: Vec<_> = runs
            .iter()
            .filter(|r| r.state == RunState::Running)
            .map(|r| r.id)
            .collect();
        let tries = s.store.task_instances(&active).await.unwrap_or_default();
        let tries_running = tries.iter().filter(|t| t.state == "running").count();
        let pods = s
            .pods("steady")
            .iter()
            .filter(|p| {
                let phase = p["status"]["phase"].as_str().unwrap_or("Pending");
                phase != "Succeeded" && phase != "Failed"
            })
            .count();
        assert!(
            active.len() <= RUNS && tries_running <= POOL_SLOTS && pods <= POOL_SLOTS,
            "a limit exceeded: {} runs running (limit {RUNS}), {tries_running} tries and {pods} \
             Pods of a {POOL_SLOTS}-slot Pool",
            active.len()
        );
        runs
    };
    eventually(
        Duration::from_secs(60),
        "runs through the Sentinel's master",
        || async {
            let ready = op.get("/readyz").await.is_some_and(|(code, _)| code == 200);
            (ready && check().await.len() >= 3).then_some(())
        },
    )
    .await;
    let old = group.master_port().expect("a master");
    let leases_before = group.cli(old, &["keys", "*:sem:*"]);
    assert!(!leases_before.is_empty(), "no lease on the first master");

    // the master dies; sampled all along, the limits hold
    let failing_over = group.fail_over();
    let new = tokio::select! {
        new = failing_over => new,
        _ = async {
            loop {
                check().await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        } => unreachable!(),
    };
    assert_ne!(new, old);
    let promoted_at = chrono::Utc::now();
    // the operator follows: runs go on through the new master until they are on time again
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let runs = check().await;
        if runs
            .iter()
            .any(|r| r.logical_date > promoted_at + chrono::Duration::seconds(10))
        {
            break runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "work did not resume after the failover:\n{}\nSentinel:\n{}",
            op.log_tail(),
            group.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_one_run_per_tick(&runs, 1);
    let leases_after = group.cli(new, &["keys", "*:sem:*"]);
    assert!(
        leases_after.contains(&format!("dagop-{}:sem:", s.ns.name)),
        "the new master holds none of the operator's leases: {leases_after:?}"
    );
    // and it found the new master itself (not only leases the replica had copied)
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("Redis master found through Sentinel")
                && l.contains(&format!("address=127.0.0.1:{new}"))),
        "{}",
        op.log_tail()
    );
}
