//! Redis down for 30 s under a running operator (SPEC §7, §11): admission pauses (fail closed),
//! no limit is exceeded, `Ready` says `GateUnavailable`, and when Redis returns the work
//! resumes by itself with exactly one run per due tick. A test binary of its own, because it
//! stops the plane's shared Redis (cargo runs test binaries one at a time).

use std::time::Duration;

use dag_operator::store::{RunFilter, RunState, RunStore};
use dag_operator_e2e::db::TestDb;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::{TestNamespace, assert_one_run_per_tick, eventually, plane, plane_cmd};

const LIMIT: usize = 4;

#[tokio::test]
async fn redis_down_for_30s_pauses_admission_within_limits_and_loses_nothing() {
    plane().install_crds();
    let ns = TestNamespace::new("redis-outage");
    let db = TestDb::create("e2e_redis_outage").await;
    let store = db.migrated().await;
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {name: steady}\nspec:\n  schedule: '* * * * * *'\n  maxActiveRuns: 1000\n  maxCatchupRuns: 1000\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
        ),
    );
    let limit = LIMIT.to_string();
    let mut op = Operator::start(
        &ns.name,
        &db.url,
        &["--max-concurrent-runs", &limit, "--lease-ttl", "6s"],
    );
    let filter = RunFilter {
        namespace: Some(ns.name.clone()),
        dag_name: Some("steady".into()),
        state: None,
        limit: 1_000_000,
    };
    let running = || async {
        let runs = store.list_runs(&filter).await.unwrap_or_default();
        let active: Vec<_> = runs
            .iter()
            .filter(|r| r.state == RunState::Running)
            .map(|r| r.id)
            .collect();
        let tries = store.task_instances(&active).await.unwrap_or_default();
        let tries_running = tries.iter().filter(|t| t.state == "running").count();
        (runs.len(), active.len(), tries_running)
    };
    eventually(Duration::from_secs(60), "ready and scheduling", || async {
        let ready = op.get("/readyz").await.is_some_and(|(code, _)| code == 200);
        (ready && running().await.0 >= 3).then_some(())
    })
    .await;

    plane_cmd(&["stop", "redis"]);
    let down_at = chrono::Utc::now();
    let (_, body) = eventually(Duration::from_secs(30), "/readyz to fail", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 503)
    })
    .await;
    assert!(body.contains("gate"), "{body}");
    eventually(
        Duration::from_secs(15),
        "Ready=False GateUnavailable",
        || async {
            let out = ns.kubectl_ok(&["get", "dag", "steady", "-o", "json"], None);
            let dag: serde_json::Value = serde_json::from_str(&out).ok()?;
            dag["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["reason"] == "GateUnavailable" && c["status"] == "False")
                .then_some(())
        },
    )
    .await;
    // 30 s of outage, sampled: never over the limit, and no run admitted while the gate
    // cannot be asked (a few seconds' grace for an admission in flight when Redis stopped)
    let created_before = running().await.0;
    let outage_end = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut created_in_outage = 0;
    while tokio::time::Instant::now() < outage_end {
        let (total, active, tries) = running().await;
        assert!(
            active <= LIMIT && tries <= LIMIT,
            "limit {LIMIT} exceeded while Redis was down: {active} runs, {tries} tries running"
        );
        created_in_outage = total - created_before;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(created_in_outage, 0, "runs admitted without the gate");
    assert!(op.alive(), "the operator died:\n{}", op.log_tail());
    assert_eq!(op.get("/healthz").await.map(|(c, _)| c), Some(200));

    plane_cmd(&["up"]);
    let up_at = chrono::Utc::now();
    eventually(Duration::from_secs(60), "ready again", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 200)
    })
    .await;
    // the backlog drains under the limit until runs are on time again
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let runs = loop {
        let (_, active, tries) = running().await;
        assert!(
            active <= LIMIT && tries <= LIMIT,
            "limit {LIMIT} exceeded after Redis returned: {active} runs, {tries} tries running"
        );
        let runs = store.list_runs(&filter).await.unwrap_or_default();
        if runs
            .iter()
            .any(|r| r.logical_date > up_at + chrono::Duration::seconds(5))
        {
            break runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "work did not resume:\n{}",
            op.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dates = assert_one_run_per_tick(&runs, 1);
    assert!(dates.first().is_some_and(|d| *d < down_at));
}
