//! Task-level actions on the plane (issue 29, item 3): with a real operator, the API server's
//! own reviews and kwok's Pods, a runner clears a failed task with its downstream (previewed
//! first by a dry run that records nothing), the task runs again and the run succeeds; then
//! marks the last task failed and the run ends failed. A viewer may do neither.

use std::time::Duration;

use dag_operator::store::RunState;
use dag_operator_e2e::eventually;
use dag_operator_e2e::rights::{ACT, READ};
use dag_operator_e2e::scenario::{dag_with_spec, setup};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn a_runner_clears_and_marks_tasks_and_a_viewer_may_not() {
    let s = setup("task-act").await;
    let ns = s.ns.name.clone();
    let viewer = s.ns.account("viewer", &[READ]);
    let runner = s.ns.account("runner", &[READ, ACT]);
    s.apply(&dag_with_spec(
        "chain",
        "  tasks:\n  - {name: a, container: {image: busybox}}\n  - {name: b, dependsOn: [a], container: {image: e2e.local/hold}}\n  - {name: c, dependsOn: [b], container: {image: busybox}}\n",
    ));
    let op = s.operator(&[]);

    // a run whose b fails: c is upstream_failed, the run failed
    let trigger = format!("/api/v1/namespaces/{ns}/dags/chain/runs");
    eventually(Duration::from_secs(30), "the DAG in the API", || {
        let (op, path, token) = (&op, trigger.clone(), runner.clone());
        async move {
            let (code, _) = op.api_post(&path, Some(&token), "{}").await?;
            (code == 201).then_some(())
        }
    })
    .await;
    let run = s
        .runs_until("chain", "the run", |r| !r.is_empty())
        .await
        .remove(0);
    let b1 = s.pod_of("chain", "b", 1).await;
    s.pod_outcome(&b1, "fail");
    eventually(Duration::from_secs(60), "the run failed", || async {
        (s.runs("chain").await[0].state == RunState::Failed).then_some(())
    })
    .await;

    let actions = format!("/api/v1/namespaces/{ns}/runs/{}/actions", run.id);
    let clear = r#"{"action": "clear_task", "task": "b", "downstream": true}"#;
    // the viewer may not, not even preview
    let (code, answer) = op
        .api_post(&format!("{actions}?dryRun=true"), Some(&viewer), clear)
        .await
        .expect("an answer");
    assert_eq!(code, 403, "{answer}");
    // the preview lists b and c, and records nothing
    let (code, answer) = op
        .api_post(&format!("{actions}?dryRun=true"), Some(&runner), clear)
        .await
        .expect("an answer");
    assert_eq!(code, 200, "{answer}");
    let preview = json(&answer);
    let mut changed: Vec<&str> = preview["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["task"].as_str())
        .collect();
    changed.sort_unstable();
    assert_eq!(changed, ["b", "c"], "{answer}");
    let (_, listed) = op.api(&actions, Some(&runner)).await.expect("the actions");
    assert_eq!(
        json(&listed)["items"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );

    // the same preview through the CLI
    let server = format!("http://127.0.0.1:{}", op.ui_port);
    let id = run.id.to_string();
    let as_runner = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", &ns, "--server", &server, "--token", &runner]);
        s.cli(&all)
    };
    let said = as_runner(&["clear", &id, "--task", "b", "--downstream", "--dry-run"]);
    assert!(
        said.contains("b (try 1): failed → pending")
            && said.contains("c (try 1): upstream_failed → pending"),
        "{said}"
    );

    // the clear: b runs again (try 2), succeeds, c runs, the run succeeds
    let (code, answer) = op
        .api_post(&actions, Some(&runner), clear)
        .await
        .expect("an answer");
    assert_eq!(code, 202, "{answer}");
    let b2 = s.pod_of("chain", "b", 2).await;
    s.pod_outcome(&b2, "succeed");
    eventually(Duration::from_secs(60), "the run succeeded", || async {
        (s.runs("chain").await[0].state == RunState::Success).then_some(())
    })
    .await;
    let tries = s.tasks(&run).await;
    let c_ok = tries
        .iter()
        .any(|t| t.task_name == "c" && t.state == dag_operator::graph::TaskState::Success);
    assert!(c_ok, "c ran after the clear: {tries:?}");

    // mark c failed: the viewer may not; the runner's mark ends the run failed
    let mark = r#"{"action": "mark_task_failed", "task": "c"}"#;
    let (code, answer) = op
        .api_post(&actions, Some(&viewer), mark)
        .await
        .expect("an answer");
    assert_eq!(code, 403, "{answer}");
    // the runner marks through the CLI, which waits for the outcome
    as_runner(&["mark", &id, "--task", "c", "--state", "failed"]);
    eventually(Duration::from_secs(60), "the run marked failed", || async {
        (s.runs("chain").await[0].state == RunState::Failed).then_some(())
    })
    .await;
}
