//! `/metrics` during an end-to-end run (issue 8, SPEC §9): the families users alert on carry
//! live, non-zero values.

use std::time::Duration;

use dag_operator_e2e::eventually;
use dag_operator_e2e::scenario::{dag_with_spec, setup};

/// The value of one series, e.g. `dagop_queue_depth{class="scheduled"}`.
fn series(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_show_runs_created_schedule_delay_queue_depth_and_task_instances() {
    let s = setup("metrics").await;
    // one run at a time whose task holds: ticks queue up behind it
    s.apply(&dag_with_spec(
        "busy",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 1\n  tasks:\n  - {name: a, container: {image: e2e.local/hold}}\n",
    ));
    let op = s.operator(&[]);
    let wanted = [
        "dagop_runs_created_total{type=\"scheduled\"}",
        "dagop_schedule_delay_seconds_count",
        "dagop_queue_depth{class=\"scheduled\"}",
        "dagop_task_instances{state=\"running\"}",
        "dagop_active_runs",
        "dagop_reconcile_duration_seconds_count{controller=\"dag\"}",
        "dagop_task_transitions_total{state=\"running\"}",
        "dagop_leader",
    ];
    let body = eventually(Duration::from_secs(60), "non-zero metrics", || async {
        let (code, body) = op.get("/metrics").await?;
        (code == 200
            && wanted
                .iter()
                .all(|name| series(&body, name).is_some_and(|v| v > 0.0)))
        .then_some(body)
    })
    .await;
    for name in wanted {
        assert!(series(&body, name).is_some_and(|v| v > 0.0), "{name}");
    }
    // queued runs wait behind the one running: the gate said no for the DAG's limit or the
    // queue held them back; either way none runs beside it
    assert_eq!(series(&body, "dagop_active_runs"), Some(1.0));
    // its expected interval between runs: every second
    let interval = format!(
        "dagop_dag_schedule_interval_seconds{{namespace=\"{}\",dag=\"busy\"}}",
        s.ns.name
    );
    assert_eq!(series(&body, &interval), Some(1.0), "{body}");
}
