//! Pools and task limits end to end (issue 6, SPEC §2.2, §4): tasks naming a Pool hold its
//! slots through the gate (Redis when the plane's REDIS_URL is set) while their Pods run.

use std::collections::HashSet;
use std::time::Duration;

use dag_operator::store::{RunRow, RunState, RunStore};
use dag_operator_e2e::eventually;
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup};
use serde_json::Value;

/// A DAG of `n` independent tasks that each hold one slot of `pool` until told to finish.
fn pooled_dag(name: &str, pool: &str, n: usize) -> String {
    let tasks: String = (0..n)
        .map(|i| {
            format!("  - {{name: t{i}, pool: {pool}, container: {{image: e2e.local/hold}}}}\n")
        })
        .collect();
    dag_with_spec(name, &format!("  tasks:\n{tasks}"))
}

fn pool_yaml(name: &str, slots: i32) -> String {
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {{name: {name}}}\nspec:\n  slots: {slots}\n"
    )
}

async fn trigger(s: &Setup, dag: &str) -> RunRow {
    let date = "2024-03-01T00:00:00Z";
    s.cli(&["trigger", dag, "-n", &s.ns.name, "--logical-date", date]);
    s.runs_until(dag, "the triggered run", |r| !r.is_empty())
        .await
        .remove(0)
}

/// (tries running in PostgreSQL, task Pods not finished in the API server)
async fn in_use(s: &Setup, runs: &[uuid::Uuid], dags: &[&str]) -> (usize, usize) {
    let rows = s.store.task_instances(runs).await.unwrap_or_default();
    let running = rows.iter().filter(|t| t.state == "running").count();
    let mut pods = 0;
    for dag in dags {
        pods += s
            .pods(dag)
            .iter()
            .filter(|p| {
                let phase = p["status"]["phase"].as_str().unwrap_or("Pending");
                phase != "Succeeded" && phase != "Failed"
            })
            .count();
    }
    (running, pods)
}

/// Samples both sources for a while; panics if either ever shows more than `limit`.
async fn never_above(s: &Setup, runs: &[uuid::Uuid], dags: &[&str], limit: usize, samples: u32) {
    for _ in 0..samples {
        let (running, pods) = in_use(s, runs, dags).await;
        assert!(
            running <= limit && pods <= limit,
            "pool of {limit} slots: {running} tries running in PostgreSQL, {pods} live Pods"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn pool_status(s: &Setup, pool: &str) -> Value {
    let out = s.ns.kubectl_ok(&["get", "pool", pool, "-o", "json"], None);
    let obj: Value = serde_json::from_str(&out).expect("kubectl json");
    obj["status"].clone()
}

async fn pool_status_until(s: &Setup, pool: &str, what: &str, f: impl Fn(&Value) -> bool) {
    eventually(Duration::from_secs(60), what, || {
        let st = pool_status(s, pool);
        let ok = f(&st);
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_pool_of_two_shared_by_two_dags_never_runs_more_than_two() {
    let s = setup("pool-shared").await;
    s.apply(&pool_yaml("shared", 2));
    s.apply(&pooled_dag("left", "shared", 3));
    s.apply(&pooled_dag("right", "shared", 3));
    let _op = s.operator(&[]);
    let runs = [trigger(&s, "left").await.id, trigger(&s, "right").await.id];
    let dags = ["left", "right"];

    eventually(Duration::from_secs(60), "two tries running", || async {
        (in_use(&s, &runs, &dags).await.0 == 2).then_some(())
    })
    .await;
    never_above(&s, &runs, &dags, 2, 24).await;
    pool_status_until(
        &s,
        "shared",
        "usedSlots 2, queuedTasks 4, openSlots 0",
        |st| st["usedSlots"] == 2 && st["queuedTasks"] == 4 && st["openSlots"] == 0,
    )
    .await;

    // raising the slots admits more at once
    s.ns.kubectl_ok(
        &[
            "patch",
            "pool",
            "shared",
            "--type=merge",
            "-p",
            r#"{"spec":{"slots":4}}"#,
        ],
        None,
    );
    eventually(Duration::from_secs(30), "four tries running", || async {
        (in_use(&s, &runs, &dags).await.0 == 4).then_some(())
    })
    .await;
    never_above(&s, &runs, &dags, 4, 12).await;

    // let everything finish: every try gets to run, the slots all come back
    let ended = eventually(Duration::from_secs(90), "both runs to succeed", || async {
        s.all_pods_outcome("succeed");
        let mut states = Vec::new();
        for dag in dags {
            states.extend(s.runs(dag).await.into_iter().map(|r| r.state));
        }
        (states.len() == 2 && states.iter().all(|st| *st != RunState::Running)).then_some(states)
    })
    .await;
    assert_eq!(ended, vec![RunState::Success, RunState::Success]);
    pool_status_until(&s, "shared", "all slots back", |st| {
        st["usedSlots"] == 0 && st["queuedTasks"] == 0 && st["openSlots"] == 4
    })
    .await;
}

#[tokio::test]
async fn a_task_naming_a_missing_pool_waits_and_its_dag_says_pool_not_found() {
    let s = setup("pool-missing").await;
    s.apply(&dag_with_spec(
        "needs-pool",
        "  tasks:\n  - {name: load, pool: warehouse, poolSlots: 2, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    let status = s
        .status_until("needs-pool", "Ready=False PoolNotFound", |st| {
            st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["reason"] == "PoolNotFound")
        })
        .await;
    let message = status["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("warehouse"), "{message}");

    let run = trigger(&s, "needs-pool").await;
    eventually(Duration::from_secs(30), "the task to be queued", || async {
        let rows = s.tasks(&run).await;
        rows.iter().any(|t| t.state == "queued").then_some(())
    })
    .await;
    // it waits: no Pod while the Pool is missing (the executor passes every second)
    for _ in 0..8 {
        assert!(
            s.pods("needs-pool").is_empty(),
            "a Pod started without its Pool"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // a Pool too small for poolSlots 2 still holds it back; one big enough lets it run
    s.apply(&pool_yaml("warehouse", 1));
    s.status_until("needs-pool", "Ready again", |st| {
        st["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
    .await;
    pool_status_until(&s, "warehouse", "one task queued", |st| {
        st["queuedTasks"] == 1 && st["usedSlots"] == 0
    })
    .await;
    assert!(s.pods("needs-pool").is_empty(), "poolSlots 2 ran in 1 slot");
    s.apply(&pool_yaml("warehouse", 2));
    let ended = s
        .runs_until("needs-pool", "the run to end", |r| {
            r.iter().all(|r| r.state != RunState::Running)
        })
        .await;
    assert_eq!(ended[0].state, RunState::Success);
    let pools: HashSet<_> = s
        .tasks(&run)
        .await
        .into_iter()
        .map(|t| (t.pool, t.pool_slots))
        .collect();
    assert_eq!(pools, HashSet::from([(Some("warehouse".to_string()), 2)]));
}
