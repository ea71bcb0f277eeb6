//! Triggers set while PostgreSQL is down (issue 13, SPEC §3.5, §11): none is lost, and each
//! yields exactly one run once PostgreSQL is back — also across an operator restart in
//! between (the restart used to clear `lastHandledTrigger` and fire the value again). Both
//! annotation forms: `dagoperator.io/trigger` set by hand, and what `dag-operator trigger`
//! adds. A test binary of its own: it stops the plane's shared PostgreSQL (cargo runs test
//! binaries one at a time).

use std::time::Duration;

use dag_operator::store::{RunState, RunType};
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup};
use dag_operator_e2e::{eventually, plane_cmd};

const TASK: &str = "  tasks:\n  - {name: a, container: {image: busybox}}\n";

/// Sets the single-form trigger annotation, as a user would with kubectl.
fn annotate(s: &Setup, dag: &str, value: &str) {
    s.ns.kubectl_ok(
        &[
            "annotate",
            "--overwrite",
            "dag",
            dag,
            &format!("dagoperator.io/trigger={value}"),
        ],
        None,
    );
}

/// `dag-operator trigger`; returns the value it printed.
fn trigger(s: &Setup, dag: &str) -> String {
    let printed = s.cli(&["trigger", dag, "-n", &s.ns.name]);
    printed
        .split("trigger.dagoperator.io/")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the trigger's value")
        .to_string()
}

async fn recorded(s: &Setup, dag: &str, value: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM dag_triggers WHERE namespace = $1 AND dag_name = $2 AND value = $3",
    )
    .bind(&s.ns.name)
    .bind(dag)
    .bind(value)
    .fetch_one(s.store.pool())
    .await
    .expect("the record")
}

#[tokio::test]
async fn triggers_set_during_a_postgres_outage_run_once_after_it_across_a_restart() {
    let s = setup("trigger-outage").await;
    s.apply(&dag_with_spec("single", TASK));
    s.apply(&dag_with_spec("many", TASK));
    let mut op = s.operator(&[]);
    eventually(Duration::from_secs(60), "the operator ready", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 200)
    })
    .await;
    plane_cmd(&["stop", "postgres"]);
    annotate(&s, "single", "during-outage");
    let value = trigger(&s, "many");
    eventually(Duration::from_secs(30), "/readyz to fail", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 503)
    })
    .await;
    // killed while PostgreSQL is down, started again before it returns
    op.restart();
    eventually(
        Duration::from_secs(30),
        "the new process up (not ready)",
        || async { op.get("/healthz").await.filter(|(code, _)| *code == 200) },
    )
    .await;
    plane_cmd(&["up"]);
    for (dag, v) in [("single", "during-outage"), ("many", value.as_str())] {
        let runs = s
            .runs_until(dag, "the trigger's run", |r| !r.is_empty())
            .await;
        assert_eq!(runs[0].run_type, RunType::Manual);
        s.status_until(dag, "the trigger recorded", |st| {
            st["lastHandledTrigger"] == v
        })
        .await;
    }
    // another restart with the single-form annotation still in place: nothing more
    op.restart();
    eventually(Duration::from_secs(60), "ready again", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 200)
    })
    .await;
    // a fresh trigger after the restart: once its run exists, the restarted operator has
    // taken up both DAGs (listed together at its start, before this trigger's watch event)
    // and checked their old values
    let after = trigger(&s, "many");
    let many = s
        .runs_until("many", "the fresh trigger's run, then both ended", |r| {
            r.len() >= 2 && r.iter().all(|r| r.state != RunState::Running)
        })
        .await;
    assert_eq!(many.len(), 2, "one run per trigger value: {many:?}");
    let single = s
        .runs_until("single", "its run ended", |r| {
            r.iter().all(|r| r.state != RunState::Running)
        })
        .await;
    assert_eq!(single.len(), 1, "one run for one trigger value: {single:?}");
    for (dag, v) in [
        ("single", "during-outage"),
        ("many", value.as_str()),
        ("many", after.as_str()),
    ] {
        assert_eq!(recorded(&s, dag, v).await, 1, "{dag} {v}");
    }
    // the handled many-form annotations are removed; the single form stays as the user set it
    eventually(
        Duration::from_secs(30),
        "handled annotations removed",
        || async {
            let annotations = s.ns.kubectl_ok(
                &[
                    "get",
                    "dag",
                    "many",
                    "-o",
                    "jsonpath={.metadata.annotations}",
                ],
                None,
            );
            (!annotations.contains(&value) && !annotations.contains(&after)).then_some(())
        },
    )
    .await;
}
