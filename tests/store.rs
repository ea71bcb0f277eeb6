//! The PostgreSQL store (SPEC §6) against a real PostgreSQL: every test creates its own
//! database on the DATABASE_URL server (see tests/common), so they run in parallel. Without
//! DATABASE_URL every test fails with the command that provides one.

mod common;

use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::TestDb;
use dag_operator::store::{
    AppliedMigration, DagKey, NewRun, NewTask, PgStore, RunFilter, RunRow, RunState, RunStore,
    RunType, TaskRow, TaskState,
};
use serde_json::json;
use sqlx::migrate::Migrate;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, d, 2, 0, 0).unwrap()
}

fn task(name: &str) -> NewTask {
    NewTask {
        task_name: name.into(),
        pool: None,
        pool_slots: 1,
    }
}

fn run(ns: &str, dag: &str, date: DateTime<Utc>, run_type: RunType, tasks: &[&str]) -> NewRun {
    NewRun {
        dag: DagKey::new(ns, dag),
        dag_uid: format!("uid-{dag}"),
        run_type,
        backfill_name: (run_type == RunType::Backfill).then(|| format!("{dag}-bf")),
        backfill_uid: None,
        trigger: None,
        logical_date: date,
        data_interval_start: date - chrono::Duration::days(1),
        data_interval_end: date,
        priority: 3,
        params: json!({"dag": dag, "n": 1}),
        spec_hash: None,
        tasks: tasks.iter().map(|t| task(t)).collect(),
    }
}

fn scheduled(dag: &str, date: DateTime<Utc>) -> NewRun {
    run("ns", dag, date, RunType::Scheduled, &["extract", "load"])
}

async fn count(store: &PgStore, table: &'static str) -> i64 {
    let sql = match table {
        "dag_runs" => "SELECT count(*) FROM dag_runs",
        "task_instances" => "SELECT count(*) FROM task_instances",
        _ => unreachable!(),
    };
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count")
}

async fn set_task_state(store: &PgStore, run_id: Uuid, task: &str, state: &str) {
    sqlx::query("UPDATE task_instances SET state = $3 WHERE run_id = $1 AND task_name = $2")
        .bind(run_id)
        .bind(task)
        .bind(state)
        .execute(store.pool())
        .await
        .expect("set task state");
}

/// Retries try `try_number` of a task (up_for_retry → failed, the next try queued); whether
/// it took effect.
async fn retry(store: &PgStore, run_id: Uuid, task: &str, try_number: i32) -> Vec<bool> {
    let changes = dag_operator::store::Changes {
        retries: vec![dag_operator::store::NextTry {
            key: dag_operator::store::TryKey {
                run_id,
                task_name: task.into(),
                try_number,
            },
            at: Utc::now(),
        }],
        ..Default::default()
    };
    store.write_changes(&changes).await.expect("retry").retries
}

async fn set_run_state(store: &PgStore, id: Uuid, state: &str) {
    sqlx::query("UPDATE dag_runs SET state = $2, ended_at = now() WHERE id = $1")
        .bind(id)
        .bind(state)
        .execute(store.pool())
        .await
        .expect("set run state");
}

fn all() -> RunFilter {
    RunFilter::default()
}

/// The migrations of `migrations/`, read from their file names (`0003_spec_versions.sql` →
/// version 3, "spec versions"), in order.
fn migration_files() -> Vec<AppliedMigration> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut found: Vec<AppliedMigration> = std::fs::read_dir(dir)
        .expect("migrations/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".sql")?;
            let (version, description) = stem.split_once('_')?;
            Some(AppliedMigration {
                version: version.parse().ok()?,
                description: description.replace('_', " "),
            })
        })
        .collect();
    found.sort_by_key(|m| m.version);
    found
}

// ---- migrations -------------------------------------------------------------------------

#[tokio::test]
async fn migrate_creates_the_schema_and_a_second_migrate_is_a_no_op() {
    let db = TestDb::create("migrate_twice").await;
    let store = db.store();
    let first = store.migrate_report().await.expect("first migrate");
    assert_eq!(first, migration_files());
    assert_eq!(
        first[..2],
        [
            AppliedMigration {
                version: 1,
                description: "init".into()
            },
            AppliedMigration {
                version: 2,
                description: "reprocess".into()
            }
        ]
    );
    let second = store.migrate_report().await.expect("second migrate");
    assert!(second.is_empty(), "{second:?}");
    store.migrate().await.expect("third migrate");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "backfill_dates",
            "backfills",
            "dag_positions",
            "dag_runs",
            "dag_specs",
            "dag_triggers",
            "namespace_epochs",
            "run_actions",
            "task_instances",
            "task_logs"
        ]
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(recorded, migration_files().len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_from_four_replicas_apply_once() {
    let db = TestDb::create("migrate_concurrent").await;
    // four pools, as four operator replicas starting together would have
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = db.store();
            tokio::spawn(async move { store.migrate_report().await })
        })
        .collect();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(h.await.expect("task").expect("every migrate succeeds"));
    }
    // under the lock exactly one replica applied the migrations; the others found them applied
    let applied: Vec<i64> = reports.iter().flatten().map(|m| m.version).collect();
    let versions: Vec<i64> = migration_files().iter().map(|m| m.version).collect();
    assert_eq!(applied, versions, "{reports:?}");
    let store = db.store();
    assert!(store.migrate_report().await.unwrap().is_empty());
    assert_eq!(count(&store, "dag_runs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_waits_for_the_sqlx_migration_lock() {
    let db = TestDb::create("migrate_lock").await;
    // hold the advisory lock sqlx's migrators use, as another replica in mid-migration would
    let mut holder = PgConnection::connect(&db.url).await.expect("connect");
    holder.lock().await.expect("take the migration lock");
    let store = db.store();
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.migrate_report().await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "migrate ran while the lock was held"
    );
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('dag_runs') IS NOT NULL")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(!exists, "tables created while the lock was held");
    holder.unlock().await.expect("unlock");
    let report = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("migrate proceeds once the lock is free")
        .expect("task")
        .expect("migrate");
    assert_eq!(report, migration_files());
    let _ = holder.close().await;
}

// ---- insert_runs ------------------------------------------------------------------------

#[tokio::test]
async fn insert_runs_persists_running_runs_and_is_idempotent() {
    let db = TestDb::create("insert_idem").await;
    let store = db.migrated().await;
    let batch = vec![
        scheduled("etl", day(1)),
        scheduled("etl", day(2)),
        run("other", "etl", day(1), RunType::Manual, &["only"]),
    ];
    let before = Utc::now() - chrono::Duration::seconds(5);
    let first = store.insert_runs(&batch).await.expect("insert");
    assert_eq!(first.len(), 3);
    for (row, new) in first.iter().zip(&batch) {
        assert_eq!(row.dag, new.dag, "returned in the order given");
        assert_eq!(row.logical_date, new.logical_date);
        assert_eq!(row.dag_uid, new.dag_uid);
        assert_eq!(row.run_type, new.run_type);
        assert_eq!(row.backfill_name, new.backfill_name);
        assert_eq!(row.data_interval_start, new.data_interval_start);
        assert_eq!(row.data_interval_end, new.data_interval_end);
        assert_eq!(row.priority, new.priority);
        assert_eq!(row.params, new.params);
        assert_eq!(row.state, RunState::Running);
        assert_eq!(row.attempt, 1);
        assert!(row.started_at.is_some_and(|t| t > before));
        assert!(row.created_at > before);
        assert_eq!(row.ended_at, None);
    }
    let ids: HashSet<Uuid> = first.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(count(&store, "dag_runs").await, 3);
    assert_eq!(count(&store, "task_instances").await, 5);

    let second = store.insert_runs(&batch).await.expect("insert again");
    assert!(second.is_empty(), "{second:?}");
    assert_eq!(count(&store, "dag_runs").await, 3);
    assert_eq!(count(&store, "task_instances").await, 5);
    // what the store returned is what it holds
    let mut listed = store.list_runs(&all()).await.unwrap();
    listed.sort_by_key(|r| r.id);
    let mut returned = first.clone();
    returned.sort_by_key(|r| r.id);
    assert_eq!(listed, returned);
    assert!(store.insert_runs(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_mixing_new_and_existing_dates_returns_only_the_new_ones() {
    let db = TestDb::create("insert_mixed").await;
    let store = db.migrated().await;
    let existing = store
        .insert_runs(&[scheduled("etl", day(2)), scheduled("etl", day(3))])
        .await
        .unwrap();
    // a manual run on an existing date is still the same run identity: skipped
    let mut manual_on_day2 = run("ns", "etl", day(2), RunType::Manual, &["x"]);
    manual_on_day2.priority = 99;
    let batch = vec![
        scheduled("etl", day(4)),
        manual_on_day2,
        scheduled("etl", day(1)),
        scheduled("etl", day(3)),
        scheduled("etl", day(4)), // a duplicate within the batch: the first one wins
    ];
    let new = store.insert_runs(&batch).await.unwrap();
    let dates: Vec<_> = new.iter().map(|r| r.logical_date).collect();
    assert_eq!(dates, [day(4), day(1)]);
    assert_eq!(count(&store, "dag_runs").await, 4);
    assert_eq!(count(&store, "task_instances").await, 8);
    // the existing runs were not touched
    let day2 = store
        .list_runs(&all())
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.logical_date == day(2))
        .unwrap();
    assert_eq!(day2, existing[0]);
    // task instances exist only for the runs inserted
    let ids: Vec<Uuid> = new.iter().map(|r| r.id).collect();
    let tasks = store.task_instances(&ids).await.unwrap();
    assert_eq!(tasks.len(), 4);
}

#[tokio::test]
async fn task_instances_are_created_pending_at_try_one() {
    let db = TestDb::create("insert_tasks").await;
    let store = db.migrated().await;
    let mut new = run("ns", "etl", day(1), RunType::Scheduled, &["extract"]);
    new.tasks.push(NewTask {
        task_name: "load".into(),
        pool: Some("warehouse".into()),
        pool_slots: 3,
    });
    let rows = store.insert_runs(&[new]).await.unwrap();
    let tasks = store.task_instances(&[rows[0].id]).await.unwrap();
    let expected = |name: &str, pool: Option<&str>, slots: i32| TaskRow {
        run_id: rows[0].id,
        task_name: name.into(),
        try_number: 1,
        state: TaskState::Pending,
        pool: pool.map(String::from),
        pool_slots: slots,
        pod_name: None,
        exit_code: None,
        message: None,
        queued_at: None,
        started_at: None,
        ended_at: None,
        attempt: 1,
    };
    assert_eq!(
        tasks,
        [
            expected("extract", None, 1),
            expected("load", Some("warehouse"), 3)
        ]
    );
}

#[tokio::test]
async fn a_failing_batch_leaves_nothing_behind() {
    let db = TestDb::create("insert_atomic").await;
    let store = db.migrated().await;
    let mut batch: Vec<NewRun> = (1..=20).map(|d| scheduled("etl", day(d))).collect();
    // the schema refuses pool_slots 0: the task insert fails after the runs were inserted
    batch[19].tasks[1].pool_slots = 0;
    assert!(store.insert_runs(&batch).await.is_err());
    assert_eq!(count(&store, "dag_runs").await, 0);
    assert_eq!(count(&store, "task_instances").await, 0);
}

#[tokio::test]
async fn batches_larger_than_a_chunk_are_inserted_whole() {
    let db = TestDb::create("insert_chunks").await;
    let store = db.migrated().await;
    let n = PgStore::RUN_CHUNK + 2_345;
    let t0 = day(1);
    let batch: Vec<NewRun> = (0..n)
        .map(|i| {
            run(
                "ns",
                "minutely",
                t0 + chrono::Duration::minutes(i as i64),
                RunType::Backfill,
                &["t"],
            )
        })
        .collect();
    let rows = store.insert_runs(&batch).await.unwrap();
    assert_eq!(rows.len(), n);
    assert_eq!(count(&store, "dag_runs").await, n as i64);
    assert_eq!(count(&store, "task_instances").await, n as i64);
    assert!(store.insert_runs(&batch).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_from_two_replicas_create_each_run_once() {
    let db = TestDb::create("insert_race").await;
    let store_a = db.migrated().await;
    let store_b = db.store();
    // a deadlock between opposite orders is likely, not certain, in one round: four rounds
    const ROUNDS: i64 = 4;
    for round in 0..ROUNDS {
        let t0 = day(1) + chrono::Duration::days(10 * round);
        let batch: Vec<NewRun> = (0..2_000)
            .map(|i| scheduled("etl", t0 + chrono::Duration::minutes(i)))
            .collect();
        let mut reversed = batch.clone();
        reversed.reverse();
        let (a, b) = tokio::join!(
            tokio::spawn({
                let store = store_a.clone();
                async move { store.insert_runs(&batch).await }
            }),
            tokio::spawn({
                let store = store_b.clone();
                async move { store.insert_runs(&reversed).await }
            }),
        );
        // opposite orders would deadlock without the store's identity-ordered inserts
        let a = a.unwrap().expect("replica a");
        let b = b.unwrap().expect("replica b");
        let dates_a: HashSet<_> = a.iter().map(|r| r.logical_date).collect();
        let dates_b: HashSet<_> = b.iter().map(|r| r.logical_date).collect();
        assert!(dates_a.is_disjoint(&dates_b));
        assert_eq!(dates_a.len() + dates_b.len(), 2_000);
    }
    assert_eq!(count(&store_a, "dag_runs").await, 2_000 * ROUNDS);
    assert_eq!(count(&store_a, "task_instances").await, 4_000 * ROUNDS);
}

// ---- queries ----------------------------------------------------------------------------

#[tokio::test]
async fn dag_records_give_the_last_scheduled_tick_ignoring_manual_and_backfill_runs() {
    let db = TestDb::create("last_ticks").await;
    let store = db.migrated().await;
    let keys = [
        DagKey::new("ns", "etl"),
        DagKey::new("team-b", "etl"),
        DagKey::new("ns", "manual-only"),
        DagKey::new("ns", "never"),
    ];
    let last = |records: Vec<dag_operator::store::DagRecord>| -> Vec<Option<DateTime<Utc>>> {
        keys.iter()
            .map(|k| {
                records
                    .iter()
                    .find(|r| &r.dag == k)
                    .and_then(|r| r.last_scheduled)
            })
            .collect()
    };
    assert_eq!(
        last(store.dag_records(&keys).await.unwrap()),
        [None, None, None, None]
    );
    store
        .insert_runs(&[
            scheduled("etl", day(1)),
            scheduled("etl", day(3)),
            scheduled("etl", day(2)),
            run("ns", "etl", day(9), RunType::Manual, &["a"]),
            run("ns", "etl", day(10), RunType::Backfill, &["a"]),
            run("ns", "manual-only", day(5), RunType::Manual, &["a"]),
            run("ns", "backfill-only", day(5), RunType::Backfill, &["a"]),
            run("team-b", "etl", day(7), RunType::Scheduled, &["a"]),
        ])
        .await
        .unwrap();
    // a finished or cancelled scheduled run still counts: it was created for its tick
    let cancelled = store.list_runs(&all()).await.unwrap();
    let team_b = cancelled
        .iter()
        .find(|r| r.dag.namespace == "team-b")
        .unwrap();
    store.cancel_runs(&[team_b.id]).await.unwrap();
    let records = store.dag_records(&keys).await.unwrap();
    assert_eq!(records.len(), 4, "one record per DAG asked for");
    assert_eq!(last(records), [Some(day(3)), Some(day(7)), None, None]);
}

#[tokio::test]
async fn running_runs_lists_only_running_runs() {
    let db = TestDb::create("running").await;
    let store = db.migrated().await;
    let rows = store
        .insert_runs(&[
            scheduled("a", day(1)),
            scheduled("a", day(2)),
            scheduled("b", day(1)),
            scheduled("c", day(1)),
        ])
        .await
        .unwrap();
    set_run_state(&store, rows[0].id, "success").await;
    set_run_state(&store, rows[2].id, "failed").await;
    store.cancel_runs(&[rows[3].id]).await.unwrap();
    let running = store.running_runs(None).await.unwrap();
    assert_eq!(running, [rows[1].clone()]);
}

/// Ends a run in `state` at `at`.
async fn end_run(store: &PgStore, id: Uuid, state: &str, at: DateTime<Utc>) {
    sqlx::query("UPDATE dag_runs SET state = $2, ended_at = $3 WHERE id = $1")
        .bind(id)
        .bind(state)
        .bind(at)
        .execute(store.pool())
        .await
        .expect("end run");
}

#[tokio::test]
async fn last_ends_give_each_dags_newest_success_and_failure_in_one_query() {
    let db = TestDb::create("last_ends").await;
    let store = db.migrated().await;
    assert!(store.last_ends(None).await.expect("empty").is_empty());
    let rows = store
        .insert_runs(&[
            scheduled("a", day(1)),
            scheduled("a", day(2)),
            scheduled("a", day(3)),
            scheduled("a", day(4)),
            scheduled("b", day(1)),
            scheduled("c", day(1)),
            scheduled("c", day(2)),
            run("other", "a", day(1), RunType::Manual, &["t"]),
        ])
        .await
        .expect("insert");
    let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2024, 2, d, h, 0, 0).unwrap();
    // a: two successes (the newest wins even if its logical date is older), one failure,
    // one still running
    end_run(&store, rows[0].id, "success", at(5, 10)).await;
    end_run(&store, rows[1].id, "success", at(3, 10)).await;
    end_run(&store, rows[2].id, "failed", at(4, 10)).await;
    // b: only failed
    end_run(&store, rows[4].id, "failed", at(1, 8)).await;
    // c: cancelled and running: neither counts, so c is left out
    end_run(&store, rows[5].id, "cancelled", at(2, 8)).await;
    end_run(&store, rows[7].id, "success", at(6, 1)).await;

    let ends = store.last_ends(None).await.expect("last ends");
    type Ends = (String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let got: Vec<Ends> = ends
        .iter()
        .map(|e| {
            (
                e.dag.namespace.clone(),
                e.dag.name.clone(),
                e.success,
                e.failure,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("ns".into(), "a".into(), Some(at(5, 10)), Some(at(4, 10))),
            ("ns".into(), "b".into(), None, Some(at(1, 8))),
            ("other".into(), "a".into(), Some(at(6, 1)), None),
        ]
    );
    let ns_only = store.last_ends(Some("ns")).await.expect("one namespace");
    assert_eq!(ns_only.len(), 2);
    assert!(ns_only.iter().all(|e| e.dag.namespace == "ns"));
}

/// Issue 27: `status.lastSuccessfulTime` is when the newest success happened (like CronJob's
/// field), not the logical date of the newest-dated success: a Backfill run for two years
/// ago that just succeeded makes it now, and an old success ending later than a newer-dated
/// one wins.
#[tokio::test]
async fn recent_runs_give_when_the_last_success_ended_not_its_logical_date() {
    let db = TestDb::create("last_success_end").await;
    let store = db.migrated().await;
    let rows = store
        .insert_runs(&[
            scheduled("a", day(20)),
            run("ns", "a", day(1), RunType::Backfill, &["t"]),
            scheduled("a", day(21)),
            scheduled("b", day(5)),
        ])
        .await
        .expect("insert");
    let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2024, 2, d, h, 0, 0).unwrap();
    end_run(&store, rows[0].id, "success", at(1, 10)).await;
    // the backfill run of an older day succeeded later
    end_run(&store, rows[1].id, "success", at(2, 10)).await;
    // the newest-dated run failed even later: not a success
    end_run(&store, rows[2].id, "failed", at(3, 10)).await;
    let keys = [DagKey::new("ns", "a"), DagKey::new("ns", "b")];
    let recent = store.recent_runs(&keys, 5).await.expect("recent runs");
    assert_eq!(recent[0].last_success, Some(at(2, 10)));
    // b has no finished run
    assert_eq!(recent[1].last_success, None);
}

#[tokio::test]
async fn cancel_runs_cancels_running_runs_and_only_their_unfinished_tasks() {
    let db = TestDb::create("cancel").await;
    let store = db.migrated().await;
    let states = [
        "pending",
        "queued",
        "running",
        "up_for_retry",
        "success",
        "failed",
        "upstream_failed",
        "skipped",
    ];
    let rows = store
        .insert_runs(&[
            run("ns", "etl", day(1), RunType::Scheduled, &states),
            run("ns", "etl", day(2), RunType::Scheduled, &["a", "b"]),
            run("ns", "etl", day(3), RunType::Scheduled, &["a"]),
        ])
        .await
        .unwrap();
    let (target, finished, bystander) = (&rows[0], &rows[1], &rows[2]);
    for s in states {
        set_task_state(&store, target.id, s, s).await;
    }
    // an already finished run is not cancelled, nor are its tasks
    set_run_state(&store, finished.id, "success").await;
    set_task_state(&store, finished.id, "a", "success").await;

    let changed = store
        .cancel_runs(&[target.id, finished.id, Uuid::new_v4()])
        .await
        .unwrap();
    assert_eq!(changed, 1);

    let runs = store.list_runs(&all()).await.unwrap();
    let get = |id: Uuid| runs.iter().find(|r| r.id == id).unwrap().clone();
    let t = get(target.id);
    assert_eq!(t.state, RunState::Cancelled);
    assert!(t.ended_at.is_some());
    assert_eq!(get(finished.id).state, RunState::Success);
    assert_eq!(get(bystander.id), *bystander);

    let tasks = store.task_instances(&[target.id]).await.unwrap();
    for t in &tasks {
        let was = t.task_name.as_str();
        let unfinished = ["pending", "queued", "running", "up_for_retry"].contains(&was);
        if unfinished {
            assert_eq!(t.state, "cancelled", "{was}");
            assert!(t.ended_at.is_some(), "{was}");
        } else {
            assert_eq!(t.state, was, "a finished task keeps its outcome");
            assert_eq!(t.ended_at, None);
        }
    }
    let finished_tasks = store.task_instances(&[finished.id]).await.unwrap();
    let states: Vec<_> = finished_tasks.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(states, ["success", "pending"]);
    let bystander_tasks = store.task_instances(&[bystander.id]).await.unwrap();
    assert_eq!(bystander_tasks[0].state, "pending");

    assert_eq!(store.cancel_runs(&[target.id]).await.unwrap(), 0);
    assert_eq!(store.cancel_runs(&[]).await.unwrap(), 0);
}

#[tokio::test]
async fn list_runs_filters_by_namespace_dag_and_state_newest_first_with_a_limit() {
    let db = TestDb::create("list").await;
    let store = db.migrated().await;
    let rows = store
        .insert_runs(&[
            run("a", "etl", day(1), RunType::Scheduled, &["t"]),
            run("a", "etl", day(3), RunType::Scheduled, &["t"]),
            run("a", "etl", day(2), RunType::Manual, &["t"]),
            run("a", "report", day(5), RunType::Scheduled, &["t"]),
            run("b", "etl", day(4), RunType::Scheduled, &["t"]),
        ])
        .await
        .unwrap();
    set_run_state(&store, rows[1].id, "failed").await;
    set_run_state(&store, rows[4].id, "failed").await;
    let dates = |runs: Vec<RunRow>| -> Vec<(String, String, u32)> {
        runs.into_iter()
            .map(|r| {
                (
                    r.dag.namespace.clone(),
                    r.dag.name.clone(),
                    chrono::Datelike::day(&r.logical_date),
                )
            })
            .collect()
    };
    let list = |namespace: Option<&str>, dag: Option<&str>, state, limit| {
        let store = store.clone();
        let filter = RunFilter {
            namespace: namespace.map(String::from),
            dag_name: dag.map(String::from),
            state,
            limit,
        };
        async move { dates(store.list_runs(&filter).await.unwrap()) }
    };
    let s = |ns: &str, dag: &str, d: u32| (ns.to_string(), dag.to_string(), d);
    assert_eq!(
        list(None, None, None, 0).await,
        [
            s("a", "report", 5),
            s("b", "etl", 4),
            s("a", "etl", 3),
            s("a", "etl", 2),
            s("a", "etl", 1)
        ]
    );
    assert_eq!(
        list(None, None, None, 2).await,
        [s("a", "report", 5), s("b", "etl", 4)]
    );
    assert_eq!(
        list(Some("a"), None, None, 0).await,
        [
            s("a", "report", 5),
            s("a", "etl", 3),
            s("a", "etl", 2),
            s("a", "etl", 1)
        ]
    );
    assert_eq!(
        list(None, Some("etl"), None, 0).await,
        [
            s("b", "etl", 4),
            s("a", "etl", 3),
            s("a", "etl", 2),
            s("a", "etl", 1)
        ]
    );
    assert_eq!(
        list(Some("a"), Some("etl"), Some(RunState::Running), 0).await,
        [s("a", "etl", 2), s("a", "etl", 1)]
    );
    assert_eq!(
        list(Some("a"), Some("etl"), Some(RunState::Running), 1).await,
        [s("a", "etl", 2)]
    );
    assert_eq!(
        list(None, None, Some(RunState::Failed), 0).await,
        [s("b", "etl", 4), s("a", "etl", 3)]
    );
    assert!(
        list(Some("c"), None, None, 0).await.is_empty(),
        "unknown namespace"
    );
    assert!(
        list(None, None, Some(RunState::Cancelled), 0)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn task_instances_returns_every_try_of_the_given_runs_only() {
    let db = TestDb::create("tasks").await;
    let store = db.migrated().await;
    let rows = store
        .insert_runs(&[
            run("ns", "etl", day(1), RunType::Scheduled, &["b", "a"]),
            run("ns", "etl", day(2), RunType::Scheduled, &["a"]),
        ])
        .await
        .unwrap();
    set_task_state(&store, rows[0].id, "a", "failed").await;
    sqlx::query(
        "INSERT INTO task_instances (run_id, task_name, try_number, state, pool_slots) \
         VALUES ($1, 'a', 2, 'running', 1)",
    )
    .bind(rows[0].id)
    .execute(store.pool())
    .await
    .unwrap();
    let tasks = store.task_instances(&[rows[0].id]).await.unwrap();
    let seen: Vec<_> = tasks
        .iter()
        .map(|t| (t.task_name.as_str(), t.try_number, t.state.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("a", 1, "failed"), ("a", 2, "running"), ("b", 1, "pending")]
    );
    assert!(tasks.iter().all(|t| t.run_id == rows[0].id));
    let both = store
        .task_instances(&[rows[0].id, rows[1].id, Uuid::new_v4()])
        .await
        .unwrap();
    assert_eq!(both.len(), 4);
    assert!(store.task_instances(&[]).await.unwrap().is_empty());
    assert!(
        store
            .task_instances(&[Uuid::new_v4()])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_schema_refuses_unknown_states_and_types() {
    let db = TestDb::create("checks").await;
    let store = db.migrated().await;
    let rows = store
        .insert_runs(&[scheduled("etl", day(1))])
        .await
        .unwrap();
    let bad_run = sqlx::query("UPDATE dag_runs SET state = 'paused' WHERE id = $1")
        .bind(rows[0].id)
        .execute(store.pool())
        .await;
    assert!(bad_run.is_err());
    let bad_type = sqlx::query("UPDATE dag_runs SET run_type = 'cron' WHERE id = $1")
        .bind(rows[0].id)
        .execute(store.pool())
        .await;
    assert!(bad_type.is_err());
    let bad_task = sqlx::query("UPDATE task_instances SET state = 'done' WHERE run_id = $1")
        .bind(rows[0].id)
        .execute(store.pool())
        .await;
    assert!(bad_task.is_err());
    // deleting a run deletes its task instances
    sqlx::query("DELETE FROM dag_runs WHERE id = $1")
        .bind(rows[0].id)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(count(&store, "task_instances").await, 0);
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_and_ping_reports_it() {
    // nothing listens on port 1; connect_lazy must not need the server
    let store = PgStore::connect_lazy("postgres://u:p@127.0.0.1:1/none").expect("lazy");
    let started = std::time::Instant::now();
    assert!(store.ping().await.is_err());
    assert!(store.probe().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(store.target(), "127.0.0.1:1/none");
    assert!(PgStore::connect_lazy("not a url").is_err());
    // and a reachable one answers
    let db = TestDb::create("ping").await;
    db.store().ping().await.expect("ping");
}

// ---- the CLI against a real database -----------------------------------------------------

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dag-operator"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn cli_migrate_then_runs_prints_the_runs() {
    let db = TestDb::create("cli").await;
    // before migrate: a clear hint, exit 1
    let o = cli(&db.url, &["runs"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("dag-operator migrate"),
        "{}",
        text(&o.stderr)
    );

    let o = cli(&db.url, &["migrate"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let applied: String = migration_files()
        .iter()
        .map(|m| format!("applied {} {}\n", m.version, m.description))
        .collect();
    assert!(applied.starts_with("applied 1 init\napplied 2 reprocess\n"));
    assert_eq!(text(&o.stdout), applied);
    let o = cli(&db.url, &["migrate"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "up to date\n");

    let o = cli(&db.url, &["runs", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        json!([])
    );

    let store = db.store();
    let rows = store
        .insert_runs(&[
            run(
                "ns",
                "etl",
                day(1),
                RunType::Scheduled,
                &["extract", "load"],
            ),
            run("ns", "etl", day(2), RunType::Backfill, &["extract", "load"]),
            run("other", "etl", day(3), RunType::Manual, &["x"]),
        ])
        .await
        .unwrap();
    set_task_state(&store, rows[0].id, "extract", "success").await;
    set_task_state(&store, rows[0].id, "load", "failed").await;
    sqlx::query(
        "INSERT INTO task_instances (run_id, task_name, try_number, state, pool_slots) \
         VALUES ($1, 'load', 2, 'running', 1)",
    )
    .bind(rows[0].id)
    .execute(store.pool())
    .await
    .unwrap();

    let o = cli(&db.url, &["runs", "etl", "-n", "ns", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let list = doc.as_array().expect("array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["logical_date"], "2024-01-02T02:00:00Z");
    assert_eq!(list[0]["run_type"], "backfill");
    assert_eq!(list[0]["backfill_name"], "etl-bf");
    let r = &list[1];
    assert_eq!(r["id"], rows[0].id.to_string());
    assert_eq!(r["namespace"], "ns");
    assert_eq!(r["dag_name"], "etl");
    assert_eq!(r["dag_uid"], "uid-etl");
    assert_eq!(r["run_type"], "scheduled");
    assert_eq!(r["state"], "running");
    assert_eq!(r["logical_date"], "2024-01-01T02:00:00Z");
    assert_eq!(r["data_interval_start"], "2023-12-31T02:00:00Z");
    assert_eq!(r["data_interval_end"], "2024-01-01T02:00:00Z");
    assert_eq!(r["priority"], 3);
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["params"], json!({"dag": "etl", "n": 1}));
    assert!(r["started_at"].is_string() && r["ended_at"].is_null());
    assert!(r["created_at"].is_string() && r["backfill_name"].is_null());
    let tasks = r["task_instances"].as_array().expect("task instances");
    let seen: Vec<_> = tasks
        .iter()
        .map(|t| {
            (
                t["task_name"].as_str().unwrap(),
                t["try_number"].as_i64().unwrap(),
                t["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("extract", 1, "success"),
            ("load", 1, "failed"),
            ("load", 2, "running")
        ]
    );
    assert_eq!(r["tasks_summary"], "running=1 success=1");

    let o = cli(&db.url, &["runs", "--state", "running", "--limit", "2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "DAG",
            "RUN-ID",
            "TYPE",
            "LOGICAL-DATE",
            "STATE",
            "STARTED",
            "ENDED",
            "TASKS"
        ]
    );
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        first[..6],
        [
            "other",
            "etl",
            &rows[2].id.to_string(),
            "manual",
            "2024-01-03T02:00:00Z",
            "running"
        ]
    );
    assert_eq!(first[7..], ["-", "pending=1"]);
    assert!(
        lines[2].contains("backfill") && lines[2].ends_with("pending=2"),
        "{table}"
    );

    let o = cli(&db.url, &["runs", "--state", "cancelled"]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    assert!(text(&o.stderr).contains("No runs found"));
}

// ---- backfill reprocess ----------------------------------------------------------------

/// A retry is one transaction (issue 12, defect 2): when the database refuses the next try's
/// row, the try that failed is not marked failed either, so no retry is ever used up unseen.
#[tokio::test]
async fn a_retry_refused_halfway_by_the_database_changes_nothing() {
    let db = TestDb::create("retry_atomic").await;
    let store = db.migrated().await;
    let id = store
        .insert_runs(&[run("ns", "etl", day(1), RunType::Scheduled, &["a"])])
        .await
        .expect("insert")[0]
        .id;
    set_task_state(&store, id, "a", "up_for_retry").await;
    // the second half fails: PostgreSQL refuses every new try row
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_try() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'no new tries'; END $$; \
         CREATE TRIGGER refuse_try BEFORE INSERT ON task_instances \
             FOR EACH ROW WHEN (NEW.try_number > 1) EXECUTE FUNCTION refuse_try();",
    )
    .execute(store.pool())
    .await
    .expect("trigger");
    let changes = dag_operator::store::Changes {
        retries: vec![dag_operator::store::NextTry {
            key: dag_operator::store::TryKey {
                run_id: id,
                task_name: "a".into(),
                try_number: 1,
            },
            at: Utc::now(),
        }],
        ..Default::default()
    };
    let err = store.write_changes(&changes).await;
    assert!(err.is_err(), "the insert of try 2 was refused");
    let tries = store.task_instances(&[id]).await.expect("tries");
    assert_eq!(
        common::try_states(&tries),
        [(1, TaskState::UpForRetry)],
        "try 1 is not failed without its successor"
    );
    // the database accepts again: the same retry takes effect whole, once
    sqlx::raw_sql("DROP TRIGGER refuse_try ON task_instances")
        .execute(store.pool())
        .await
        .expect("drop trigger");
    assert_eq!(retry(&store, id, "a", 1).await, vec![true]);
    assert_eq!(retry(&store, id, "a", 1).await, vec![false], "only once");
    let tries = store.task_instances(&[id]).await.expect("tries");
    assert_eq!(
        common::try_states(&tries),
        [(1, TaskState::Failed), (2, TaskState::Queued)]
    );
}

#[tokio::test]
async fn a_rerun_restarts_a_finished_run_in_place_with_new_tries_of_the_next_attempt() {
    let db = TestDb::create("rerun").await;
    let store = db.migrated().await;
    let dag = DagKey::new("ns", "etl");
    let inserted = store
        .insert_runs(&[
            run("ns", "etl", day(1), RunType::Scheduled, &["a", "b"]),
            run("ns", "etl", day(2), RunType::Scheduled, &["a", "b"]),
            run("ns", "etl", day(3), RunType::Scheduled, &["a"]),
        ])
        .await
        .expect("insert");
    let (failed, running) = (inserted[0].id, inserted[2].id);
    set_task_state(&store, failed, "a", "failed").await;
    set_task_state(&store, failed, "b", "up_for_retry").await;
    set_run_state(&store, failed, "failed").await;
    // a retry of a task already took try 2 of "b"
    assert_eq!(retry(&store, failed, "b", 1).await, vec![true]);

    let between = store.runs_between(&dag, day(1), day(3)).await.unwrap();
    assert_eq!(
        between.iter().map(|r| r.logical_date).collect::<Vec<_>>(),
        [day(1), day(2)],
        "half-open range"
    );
    assert_eq!(between[0].state, RunState::Failed);

    let rerun = |id| dag_operator::store::Rerun {
        id,
        backfill_name: "bf".into(),
        backfill_uid: "bf-uid".into(),
        params: json!({"x": 1}),
        spec_hash: None,
        tasks: vec![task("a"), task("b")],
    };
    let restarted = store
        .admit(&dag_operator::store::Admission {
            reruns: vec![rerun(failed), rerun(running)],
            ..Default::default()
        })
        .await
        .expect("rerun")
        .runs;
    // the running run is left alone
    assert_eq!(restarted.len(), 1);
    let r = &restarted[0];
    assert_eq!((r.id, r.state, r.attempt), (failed, RunState::Running, 2));
    assert_eq!(r.backfill_name.as_deref(), Some("bf"));
    assert_eq!(r.params, json!({"x": 1}));
    assert!(r.ended_at.is_none());
    let tries = store.task_instances(&[failed]).await.unwrap();
    let summary: Vec<(String, i32, i32, String)> = tries
        .iter()
        .map(|t| {
            (
                t.task_name.clone(),
                t.try_number,
                t.attempt,
                t.state.to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a".to_string(), 1, 1, "failed".to_string()),
            ("a".to_string(), 2, 2, "pending".to_string()),
            ("b".to_string(), 1, 1, "failed".to_string()),
            ("b".to_string(), 2, 1, "queued".to_string()),
            ("b".to_string(), 3, 2, "pending".to_string()),
        ]
    );
    // a retry within the new attempt belongs to it
    sqlx::query("UPDATE task_instances SET state = 'up_for_retry' WHERE run_id = $1 AND task_name = 'a' AND try_number = 2")
        .bind(failed)
        .execute(store.pool())
        .await
        .expect("set state");
    assert_eq!(retry(&store, failed, "a", 2).await, vec![true]);
    let a3 = store.task_instances(&[failed]).await.unwrap();
    assert!(
        a3.iter()
            .any(|t| t.task_name == "a" && t.try_number == 3 && t.attempt == 2)
    );

    let bf = dag_operator::store::BackfillRef {
        namespace: "ns".into(),
        name: "bf".into(),
        uid: "bf-uid".into(),
    };
    let counts = store.backfill_counts(&bf).await.unwrap();
    assert_eq!((counts.running, counts.total()), (1, 1));
    let end = dag_operator::store::Changes {
        run_ends: vec![dag_operator::store::RunEnd {
            id: failed,
            state: RunState::Success,
            at: Utc::now(),
        }],
        ..Default::default()
    };
    assert_eq!(
        store.write_changes(&end).await.unwrap().run_ends,
        vec![true]
    );
    let counts = store.backfill_counts(&bf).await.unwrap();
    assert_eq!((counts.success, counts.running), (1, 0));
    let other = dag_operator::store::BackfillRef {
        name: "other".into(),
        ..bf.clone()
    };
    assert_eq!(store.backfill_counts(&other).await.unwrap().total(), 0);
    // the re-run date is done for the Backfill that re-ran it, and only for it
    assert_eq!(
        store.backfill_done(&bf, day(1), day(3)).await.unwrap(),
        [day(1)]
    );
    assert!(
        store
            .backfill_done(&other, day(1), day(3))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Ends run `id` `state`, `days` days ago.
async fn ended_days_ago(store: &PgStore, id: Uuid, state: &str, days: i64) {
    sqlx::query(
        "UPDATE dag_runs SET state = $2, ended_at = now() - make_interval(days => $3::int) \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(days as i32)
    .execute(store.pool())
    .await
    .expect("end the run");
}

#[tokio::test]
async fn retention_deletes_old_and_surplus_finished_runs_with_their_tries_logs_and_actions() {
    use dag_operator::operator::retention::{RetentionPolicy, prune};
    use dag_operator::store::{ActionKind, NewAction, TryKey};
    let db = TestDb::create("retention").await;
    let store = db.migrated().await;
    // DAG old: 4 runs ended 10..13 days ago, one of them still running (it stays)
    let old: Vec<RunRow> = store
        .insert_runs(
            &(1..=4)
                .map(|d| scheduled("old", day(d)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    for (i, r) in old.iter().enumerate().skip(1) {
        ended_days_ago(&store, r.id, "success", 10 + i as i64).await;
    }
    // its tries keep a log, and an action was asked of it
    let doomed = &old[1];
    store
        .save_log(
            &TryKey {
                run_id: doomed.id,
                task_name: "extract".into(),
                try_number: 1,
            },
            "pod",
            "bye",
            true,
        )
        .await
        .unwrap();
    store
        .record_action(&NewAction {
            dag: doomed.dag.clone(),
            run_id: Some(doomed.id),
            kind: ActionKind::MarkFailed,
            detail: json!({}),
            task: None,
            requested_by: "alice".into(),
            done: Some("marked failed by alice".into()),
        })
        .await
        .unwrap();
    // DAG busy: 6 runs ended yesterday
    let busy: Vec<RunRow> = store
        .insert_runs(
            &(1..=6)
                .map(|d| scheduled("busy", day(d)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    for r in &busy {
        ended_days_ago(&store, r.id, "failed", 1).await;
    }

    // by age: older than a week goes, the running one stays, the recent ones stay
    let week = RetentionPolicy {
        max_age: Some(Duration::from_secs(7 * 86_400)),
        keep_per_dag: None,
    };
    assert_eq!(prune(&store, &week, Duration::ZERO).await.unwrap(), 3);
    let left = store.list_runs(&all()).await.unwrap();
    assert_eq!(left.len(), 7);
    assert!(
        left.iter().any(|r| r.id == old[0].id),
        "the running run stays"
    );
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM task_logs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let actions: i64 = sqlx::query_scalar("SELECT count(*) FROM run_actions")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        (logs, actions),
        (0, 0),
        "logs and actions go with their run"
    );
    assert_eq!(count(&store, "task_instances").await, 7 * 2);

    // by count: of busy's 6, the newest 2 stay
    let two = RetentionPolicy {
        max_age: None,
        keep_per_dag: Some(2),
    };
    assert_eq!(prune(&store, &two, Duration::ZERO).await.unwrap(), 4);
    let busy_left: Vec<DateTime<Utc>> = store
        .list_runs(&all())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.dag.name == "busy")
        .map(|r| r.logical_date)
        .collect();
    assert_eq!(busy_left, [day(6), day(5)]);
    // a second pass finds nothing
    assert_eq!(prune(&store, &two, Duration::ZERO).await.unwrap(), 0);
}
