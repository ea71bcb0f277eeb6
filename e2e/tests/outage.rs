//! PostgreSQL down for 30 s under a running operator (SPEC §11): the operator stays up, is not
//! ready, and afterwards every due tick of the outage has exactly one run. A test binary of
//! its own, because it stops the plane's shared PostgreSQL (cargo runs test binaries one at a
//! time).

use std::time::Duration;

use dag_operator::store::{RunFilter, RunStore};
use dag_operator_e2e::db::TestDb;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::{TestNamespace, assert_one_run_per_tick, eventually, plane, plane_cmd};

#[tokio::test]
async fn postgres_down_for_30s_pauses_admission_and_loses_nothing() {
    plane().install_crds();
    let ns = TestNamespace::new("pg-outage");
    let db = TestDb::create("e2e_pg_outage").await;
    let store = db.migrated().await;
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {name: steady}\nspec:\n  schedule: '* * * * * *'\n  maxActiveRuns: 10000\n  maxCatchupRuns: 1000\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
        ),
    );
    let mut op = Operator::start(&ns.name, &db.url, &[]);
    let filter = RunFilter {
        namespace: Some(ns.name.clone()),
        dag_name: Some("steady".into()),
        state: None,
        limit: 1_000_000,
    };
    eventually(Duration::from_secs(60), "ready and scheduling", || async {
        let ready = op.get("/readyz").await.is_some_and(|(code, _)| code == 200);
        let runs = store.list_runs(&filter).await.map(|r| r.len()).unwrap_or(0);
        (ready && runs >= 3).then_some(())
    })
    .await;

    plane_cmd(&["stop", "postgres"]);
    let down_at = chrono::Utc::now();
    let (code, body) = eventually(Duration::from_secs(30), "/readyz to fail", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 503)
    })
    .await;
    assert_eq!(code, 503);
    assert!(body.contains("store"), "{body}");
    // the outage lasts 30 s; the operator must survive all of it
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        op.alive(),
        "the operator died while PostgreSQL was down:\n{}",
        op.log_tail()
    );
    assert_eq!(
        op.get("/healthz").await.map(|(c, _)| c),
        Some(200),
        "still live"
    );
    plane_cmd(&["up"]);
    let up_at = chrono::Utc::now();

    eventually(Duration::from_secs(60), "ready again", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 200)
    })
    .await;
    let runs = eventually(
        Duration::from_secs(60),
        "the outage's ticks to be created",
        || async {
            let runs = store.list_runs(&filter).await.ok()?;
            runs.iter()
                .any(|r| r.logical_date > up_at + chrono::Duration::seconds(1))
                .then_some(runs)
        },
    )
    .await;
    let dates = assert_one_run_per_tick(&runs, 1);
    assert!(
        dates.first().is_some_and(|d| *d < down_at) && dates.last().is_some_and(|d| *d > up_at)
    );
}
