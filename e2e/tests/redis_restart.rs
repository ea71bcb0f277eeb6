//! Redis restarted without saving while a one-slot Pool is in use (issue 12, SPEC §11): the
//! gate comes back empty, yet no second task of the Pool ever runs beside the first — the
//! executor's own count of what runs is a floor under the gate. A test binary of its own: it
//! restarts the plane's shared Redis (cargo runs test binaries one at a time).

use std::time::Duration;

use dag_operator::store::RunStore;
use dag_operator_e2e::scenario::{dag_with_spec, setup};
use dag_operator_e2e::{eventually, plane_cmd};

#[tokio::test]
async fn redis_restarted_empty_never_lets_a_one_slot_pool_run_two_tasks() {
    let s = setup("redis-restart").await;
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: one}\nspec:\n  slots: 1\n",
    );
    let tasks: String = (0..3)
        .map(|i| format!("  - {{name: t{i}, pool: one, container: {{image: e2e.local/hold}}}}\n"))
        .collect();
    s.apply(&dag_with_spec("narrow", &format!("  tasks:\n{tasks}")));
    let _op = s.operator(&["--lease-ttl", "30s"]);
    s.cli(&[
        "trigger",
        "narrow",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-07-01T00:00:00Z",
    ]);
    let run = s
        .runs_until("narrow", "the run", |r| !r.is_empty())
        .await
        .remove(0);
    let live = || {
        s.pods("narrow")
            .iter()
            .filter(|p| {
                let phase = p["status"]["phase"].as_str().unwrap_or("Pending");
                phase != "Succeeded" && phase != "Failed"
            })
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let sample = |what: &str| {
        let pods = live();
        assert!(
            pods.len() <= 1,
            "{what}: two tasks of a one-slot Pool run: {pods:?}"
        );
        pods
    };
    eventually(Duration::from_secs(60), "one task running", || {
        let n = live().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    // Redis loses everything: stopped without saving and started empty at once
    plane_cmd(&["stop", "redis"]);
    plane_cmd(&["up"]);
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < until {
        sample("after Redis restarted empty");
        let tries = s.store.task_instances(&[run.id]).await.unwrap_or_default();
        let running = tries.iter().filter(|t| t.state == "running").count();
        assert!(running <= 1, "{running} tries running in PostgreSQL");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // the tasks still run one after another to the end
    for _ in 0..3 {
        let pod = eventually(Duration::from_secs(60), "the next task", || {
            let pods = sample("while draining");
            async move { pods.first().cloned() }
        })
        .await;
        s.pod_outcome(&pod, "succeed");
        eventually(Duration::from_secs(30), "that task to end", || {
            let gone = !live().contains(&pod);
            async move { gone.then_some(()) }
        })
        .await;
    }
}
