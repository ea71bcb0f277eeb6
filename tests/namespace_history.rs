//! History does not outlive its namespace (issue 28, finding 8; docs/SEMANTICS.md, "History
//! and namespaces"), against a real PostgreSQL (DATABASE_URL, see tests/common): what was
//! recorded of a namespace's name before its current incarnation is neither read (by the API's
//! and the scheduler's queries) nor kept (the history keeper deletes it), also when the
//! operator was down while the namespace was deleted and created again.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestDb;
use dag_operator::operator::Shutdown;
use dag_operator::operator::history::{self, Sighting};
use dag_operator::store::{
    ActionKind, DagKey, NamespaceIncarnation, NewAction, NewRun, NewTask, PgStore, RunQuery,
    RunStore, RunType, TryKey,
};
use serde_json::json;

fn run(ns: &str, dag: &str, date: DateTime<Utc>) -> NewRun {
    NewRun {
        dag: DagKey::new(ns, dag),
        dag_uid: format!("uid-{ns}-{dag}"),
        run_type: RunType::Scheduled,
        backfill_name: None,
        backfill_uid: None,
        trigger: None,
        logical_date: date,
        data_interval_start: date - chrono::Duration::hours(1),
        data_interval_end: date,
        priority: 0,
        params: json!({}),
        spec_hash: None,
        tasks: vec![NewTask {
            task_name: "t".into(),
            pool: None,
            pool_slots: 1,
        }],
    }
}

fn hour(h: u32) -> DateTime<Utc> {
    chrono::TimeZone::with_ymd_and_hms(&Utc, 2024, 3, 1, h, 0, 0).unwrap()
}

/// PostgreSQL's clock now (the rows' stamps come from it).
async fn pg_now(store: &PgStore) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(store.pool())
        .await
        .expect("clock")
}

/// What the old tenant of `ns` leaves: a finished run with a kept log and an action, a
/// handled trigger value, a schedule position.
async fn old_tenant(store: &PgStore, ns: &str) -> uuid::Uuid {
    let rows = store
        .insert_runs(&[run(ns, "etl", hour(1))])
        .await
        .expect("insert");
    let old = rows[0].id;
    sqlx::query("UPDATE dag_runs SET state = 'success', ended_at = now() WHERE id = $1")
        .bind(old)
        .execute(store.pool())
        .await
        .expect("end");
    store
        .save_log(
            &TryKey {
                run_id: old,
                task_name: "t".into(),
                try_number: 1,
            },
            "pod",
            "the old tenant's secret",
            true,
        )
        .await
        .expect("log");
    store
        .record_action(&NewAction {
            dag: DagKey::new(ns, "etl"),
            run_id: Some(old),
            kind: ActionKind::MarkFailed,
            detail: json!({}),
            task: None,
            requested_by: "old".into(),
            done: Some("done".into()),
        })
        .await
        .expect("action");
    sqlx::query(
        "INSERT INTO dag_triggers (namespace, dag_name, value, outcome) \
         VALUES ($1, 'etl', 'go', 'created')",
    )
    .bind(ns)
    .execute(store.pool())
    .await
    .expect("trigger");
    sqlx::query(
        "INSERT INTO dag_positions (namespace, dag_name, dag_uid, schedule, schedule_since, \
             last_tick) VALUES ($1, 'etl', 'old-uid', '@hourly', now(), now())",
    )
    .bind(ns)
    .execute(store.pool())
    .await
    .expect("position");
    old
}

async fn count(store: &PgStore, sql: &'static str, ns: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(ns)
        .fetch_one(store.pool())
        .await
        .expect("count")
}

/// Rows of `ns` left in every table the keeper purges.
async fn left(store: &PgStore, ns: &str) -> i64 {
    count(
        store,
        "SELECT count(*) FROM dag_runs WHERE namespace = $1",
        ns,
    )
    .await
        + count(
            store,
            "SELECT count(*) FROM run_actions WHERE namespace = $1",
            ns,
        )
        .await
        + count(
            store,
            "SELECT count(*) FROM dag_triggers WHERE namespace = $1",
            ns,
        )
        .await
        + count(
            store,
            "SELECT count(*) FROM dag_positions WHERE namespace = $1",
            ns,
        )
        .await
}

#[tokio::test]
async fn rows_from_before_a_namespaces_incarnation_are_not_read() {
    let db = TestDb::create("ns_history_reads").await;
    let store = db.migrated().await;
    let old = old_tenant(&store, "team").await;
    let dag = DagKey::new("team", "etl");
    // the namespace is created again; its DAG of the same name runs
    let recreated = pg_now(&store).await;
    let new = store
        .insert_runs(&[run("team", "etl", hour(5))])
        .await
        .expect("insert")[0]
        .id;
    store
        .record_namespaces(&[NamespaceIncarnation {
            name: "team".into(),
            uid: "new-uid".into(),
            created: recreated,
        }])
        .await
        .expect("record");

    let q = RunQuery {
        limit: 50,
        ..RunQuery::default()
    };
    let listed: Vec<_> = store.query_runs(&dag, &q).await.expect("query");
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![new]);
    assert!(
        store.run(old).await.expect("run").is_none(),
        "old run by id"
    );
    assert!(store.run(new).await.expect("run").is_some());
    let recent = store
        .recent_runs(std::slice::from_ref(&dag), 25)
        .await
        .expect("recent");
    assert_eq!(recent[0].runs.len(), 1);
    assert_eq!(recent[0].last_success, None, "the old tenant's success");
    // the scheduler: the old trigger value is not handled, the old position not its own
    let triggers = store
        .recorded_triggers(&[(dag.clone(), "go".to_string())])
        .await
        .expect("triggers");
    assert!(triggers.is_empty(), "old trigger value: {triggers:?}");
    let record = &store
        .dag_records(std::slice::from_ref(&dag))
        .await
        .expect("records")[0];
    assert_eq!(record.position, None);
    assert_eq!(record.last_trigger, None);
    // another namespace is untouched
    old_tenant(&store, "other").await;
    let other = store
        .query_runs(&DagKey::new("other", "etl"), &q)
        .await
        .expect("query");
    assert_eq!(other.len(), 1);
}

#[tokio::test]
async fn the_keeper_purges_what_a_namespace_deleted_while_the_operator_was_down_left() {
    let db = TestDb::create("ns_history_down").await;
    let store = db.migrated().await;
    // the operator saw "team" (uid 1), then went down
    store
        .record_namespaces(&[NamespaceIncarnation {
            name: "team".into(),
            uid: "uid-1".into(),
            created: pg_now(&store).await - chrono::Duration::days(1),
        }])
        .await
        .expect("record");
    old_tenant(&store, "team").await;
    old_tenant(&store, "gone").await;
    old_tenant(&store, "kept").await;
    let kept_created = pg_now(&store).await - chrono::Duration::days(2);
    // meanwhile "team" was deleted and created again, "gone" deleted; the new "team" has a run
    let recreated = pg_now(&store).await;
    let new = store
        .insert_runs(&[run("team", "etl", hour(5))])
        .await
        .expect("insert")[0]
        .id;

    // the leader comes back: its Namespace watch lists what exists now
    let (sightings, keeper, recorded) = history::channel();
    let (_stop, shutdown) = Shutdown::new();
    tokio::spawn(keeper.run(store.clone(), None, Duration::ZERO, shutdown));
    sightings.tell(Sighting::Listed(vec![
        NamespaceIncarnation {
            name: "team".into(),
            uid: "uid-2".into(),
            created: recreated,
        },
        NamespaceIncarnation {
            name: "kept".into(),
            uid: "uid-kept".into(),
            created: kept_created,
        },
    ]));
    let mut recorded = recorded;
    tokio::time::timeout(Duration::from_secs(10), recorded.wait_for(|r| *r))
        .await
        .expect("first list recorded in time")
        .expect("keeper alive");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // the new run stays: 1 row
        let (team, gone) = (left(&store, "team").await, left(&store, "gone").await);
        if team == 1 && gone == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still there: team {team}, gone {gone}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.run(new).await.expect("run").is_some(), "the new run");
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM task_logs")
        .fetch_one(store.pool())
        .await
        .expect("logs");
    assert_eq!(logs, 1, "only the log of the namespace that still exists");
    assert_eq!(
        left(&store, "kept").await,
        4,
        "a namespace that still exists keeps all"
    );
    assert!(store.purges_due().await.expect("due").is_empty());
}

#[tokio::test]
async fn a_purge_goes_in_batches_and_leaves_running_runs_for_later() {
    let db = TestDb::create("ns_history_batches").await;
    let store = db.migrated().await;
    let runs: Vec<NewRun> = (0..2500)
        .map(|i| run("big", "etl", hour(0) + chrono::Duration::minutes(i)))
        .collect();
    let rows = store.insert_runs(&runs).await.expect("insert");
    sqlx::query(
        "UPDATE dag_runs SET state = 'success', ended_at = now() \
         WHERE namespace = 'big' AND id <> $1",
    )
    .bind(rows[0].id)
    .execute(store.pool())
    .await
    .expect("end");
    store.namespace_gone("big").await.expect("gone");
    let due = store.purges_due().await.expect("due");
    assert_eq!(due.len(), 1);
    let batch = |n| store.purge_namespace_step(history_step(), "big", due[0].before, n);
    assert_eq!(batch(1000).await.expect("batch"), 1000);
    assert_eq!(batch(1000).await.expect("batch"), 1000);
    assert_eq!(
        batch(1000).await.expect("batch"),
        499,
        "the running run waits"
    );
    assert!(
        !store
            .namespace_purged("big", due[0].before)
            .await
            .expect("purged"),
        "not done while a run from before is left"
    );
    store.cancel_runs(&[rows[0].id]).await.expect("cancel");
    assert_eq!(batch(1000).await.expect("batch"), 1);
    assert!(
        store
            .namespace_purged("big", due[0].before)
            .await
            .expect("purged")
    );
    assert!(store.purges_due().await.expect("due").is_empty());
}

fn history_step() -> dag_operator::store::PurgeStep {
    dag_operator::store::PurgeStep::Runs
}
