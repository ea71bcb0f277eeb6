//! The operator started in process (issue 14): `Operator::start` with the plane's client, a
//! store and the in-process gate — what `dag-operator run` does after parsing its flags. A DAG
//! gets its runs and its status, a Pool its status, and a requested shutdown ends it.

use std::time::Duration;

use dag_operator::engine::EngineConfig;
use dag_operator::executor::ExecutorConfig;
use dag_operator::gate::MemoryGate;
use dag_operator::operator::{Operator, OperatorConfig, Shutdown};
use dag_operator_e2e::scenario::{dag_yaml, setup};
use dag_operator_e2e::{eventually, plane};

#[tokio::test]
async fn the_operator_starts_in_process_and_stops_when_told() {
    let s = setup("in-process").await;
    let config = OperatorConfig {
        engine: EngineConfig {
            schedule_interval: Duration::from_secs(1),
            ..EngineConfig::default()
        },
        executor: ExecutorConfig::default(),
        namespace: Some(s.ns.name.clone()),
        metrics_addr: "127.0.0.1:0".to_string(),
        metrics_auth: false,
        leader: None,
        ui_addr: Some("127.0.0.1:0".to_string()),
        ui_security: Default::default(),
        log_tail_bytes: 65536,
        retention: Default::default(),
        tenancy: Default::default(),
        review_client: None,
        api: Default::default(),
    };
    let (trigger, shutdown) = Shutdown::new();
    let running = Operator::start(
        config,
        plane().client().await,
        s.store.clone(),
        MemoryGate::new(Duration::from_secs(30)),
        shutdown,
    )
    .await
    .expect("the operator starts");
    assert_ne!(running.metrics_addr.port(), 0);

    s.apply(&dag_yaml(
        "every-second",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 100",
    ));
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: db}\nspec: {slots: 3}\n",
    );
    s.runs_until("every-second", "two scheduled runs", |r| r.len() >= 2)
        .await;
    s.status_until("every-second", "Ready with a next run", |st| {
        st["nextScheduleTime"].is_string()
            && st["conditions"][0]["type"] == "Ready"
            && st["conditions"][0]["status"] == "True"
    })
    .await;
    eventually(Duration::from_secs(30), "the Pool's status", || async {
        let out = s.ns.kubectl_ok(&["get", "pool", "db", "-o", "json"], None);
        let pool: serde_json::Value = serde_json::from_str(&out).ok()?;
        (pool["status"]["openSlots"] == 3).then_some(())
    })
    .await;
    assert!(
        running.metrics.encode().lines().any(|l| l
            .starts_with("dagop_runs_created_total{type=\"scheduled\"}")
            && !l.ends_with(" 0")),
        "runs counted in the operator's metrics"
    );
    assert_eq!(running.health.ready(), Ok(()));

    trigger.shut_down();
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .expect("it stops within the grace period")
        .expect("and stops cleanly");
}
