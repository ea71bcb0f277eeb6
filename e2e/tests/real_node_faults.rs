//! Faults of the real node while tasks run (issue 26), in a test binary of their own: they stop
//! the node's containerd or kubelet, which every Pod on the node shares. One at a time.
//!
//! - containerd stopped for 10 s: the containers go on under their shims; when containerd is
//!   back the kubelet reads their exits, so the runs end as the containers did, one try each.
//! - the kubelet stopped: the node goes NotReady, then unreachable; Kubernetes' taint manager
//!   evicts the Pods once their toleration of `node.kubernetes.io/unreachable` runs out (300 s
//!   by default, 5 s here through the DAG's podTemplate), and the operator fails the try with
//!   that reason (docs/SEMANTICS.md): nothing holds a slot for ever.

use std::time::Duration;

use dag_operator::graph::TaskState;
use dag_operator::store::RunState;
use dag_operator_e2e::node::{TASK_IMAGE, containers_of_pod};
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup_on_real_node};
use dag_operator_e2e::{eventually, plane, plane_cmd};
use serde_json::Value;

/// Each test runs on its own Tokio runtime, so the lock is tokio's (held across awaits).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn container_running(ns: &str, pod: &str) -> bool {
    let out = plane().kubectl_ok(&["-n", ns, "get", "pod", pod, "-o", "json"], None);
    let p: Value = serde_json::from_str(&out).expect("json");
    p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// Triggers `dag` and waits until the container of its task `work` runs; its Pod's name.
async fn started(s: &Setup, dag: &str) -> String {
    s.cli(&["trigger", dag, "-n", &s.ns.name]);
    let pod = s.pod_of(dag, "work", 1).await;
    eventually(Duration::from_secs(60), "the container running", || {
        let running = container_running(&s.ns.name, &pod);
        async move { running.then_some(()) }
    })
    .await;
    pod
}

/// The plane is whole again, whatever the test did (`up` restarts what is stopped).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::process::Command::new(plane().repo.join("e2e/plane"))
            .arg("up")
            .status();
    }
}

#[tokio::test]
async fn containerd_stopped_for_10s_loses_and_doubles_no_try() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup_on_real_node("real-ctrd").await;
    s.apply(&dag_with_spec(
        "steady",
        &format!(
            "  tasks:\n  - name: work\n    retries: 2\n    container: {{image: '{TASK_IMAGE}', command: [sh, -c, 'echo begin; sleep 15; echo end']}}\n"
        ),
    ));
    let _op = s.operator(&[]);
    let pod = started(&s, "steady").await;
    let restore = Restore;
    plane_cmd(&["stop", "containerd"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    plane_cmd(&["up"]);
    drop(restore);
    let run = eventually(Duration::from_secs(120), "the run to end", || async {
        s.runs("steady")
            .await
            .into_iter()
            .find(|r| r.state != RunState::Running)
    })
    .await;
    assert_eq!(run.state, RunState::Success, "the container went on");
    let tries = s.tasks(&run).await;
    assert_eq!(tries.len(), 1, "one try: {tries:?}");
    assert_eq!(tries[0].state, TaskState::Success);
    assert_eq!(tries[0].exit_code, Some(0));
    // its output is whole: the container was not restarted
    let log = s.ns.kubectl_ok(&["logs", &pod], None);
    assert_eq!(log, "begin\nend\n");
}

#[tokio::test]
async fn a_stopped_kubelet_ends_its_tries_by_kubernetes_eviction_and_holds_no_slot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup_on_real_node("real-kubelet").await;
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: one}\nspec: {slots: 1}\n",
    );
    // the toleration of an unreachable node runs out after 5 s instead of 300 s
    s.apply(&dag_with_spec(
        "stranded",
        &format!(
            "  podTemplate:\n    tolerations: [{{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}}, {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 5}}]\n  tasks:\n  - name: work\n    pool: one\n    container: {{image: '{TASK_IMAGE}', command: [sh, -c, 'sleep 600']}}\n"
        ),
    ));
    let op = s.operator(&[]);
    let pod = started(&s, "stranded").await;
    let restore = Restore;
    plane_cmd(&["stop", "kubelet"]);
    // the node controller marks the node unknown after its grace period (50 s), the taint
    // manager evicts 5 s later; the try fails with that reason and frees the Pool's slot
    let run = eventually(Duration::from_secs(180), "the run to end", || async {
        s.runs("stranded")
            .await
            .into_iter()
            .find(|r| r.state != RunState::Running)
    })
    .await;
    assert_eq!(run.state, RunState::Failed);
    let tries = s.tasks(&run).await;
    assert_eq!(tries.len(), 1, "{tries:?}");
    let message = tries[0].message.as_deref().unwrap_or_default();
    assert!(message.starts_with("DeletionByTaintManager"), "{message}");
    // the slot is free: the Pool shows none in use
    let used = eventually(Duration::from_secs(30), "the Pool's slot free", || {
        let out = s.ns.kubectl_ok(
            &["get", "pool", "one", "-o", "jsonpath={.status.usedSlots}"],
            None,
        );
        let used = out.trim().to_string();
        async move { (used == "0").then_some(used) }
    })
    .await;
    assert_eq!(used, "0");
    // the kubelet back: it stops the container and the Pod is gone from the node too
    plane_cmd(&["up"]);
    drop(restore);
    eventually(
        Duration::from_secs(120),
        "the evicted Pod gone from the node",
        || {
            let gone =
                s.pod_gone("stranded", &pod) && containers_of_pod(&s.ns.name, &pod).is_empty();
            async move { gone.then_some(()) }
        },
    )
    .await;
    drop(op);
}
