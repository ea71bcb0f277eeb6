//! Criterion benchmark of the HTTP API and UI with a long history (issue 16: with 100,000 runs
//! of one DAG in PostgreSQL, the grid's first page and a run page answer in < 100 ms): a fresh
//! database on the DATABASE_URL server, 100,000 runs of one 3-task DAG (1,000 when run as a
//! test), the real router on a local port; reviews answered by a table (what the 10-second
//! review cache gives in production after the first request).
//! Run: eval "$(e2e/plane env)" && cargo bench --bench api

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/api.rs"]
mod support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use dag_operator::store::{DagKey, NewRun, NewTask, RunStore, RunType};

const TASKS: [&str; 3] = ["extract", "transform", "load"];

/// The history: one run a minute, oldest first.
fn history(n: usize) -> Vec<NewRun> {
    let t0 = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("date");
    (0..n)
        .map(|i| {
            let at = t0 + chrono::Duration::minutes(i as i64);
            NewRun {
                dag: DagKey::new("bench", "etl"),
                dag_uid: "uid-etl".into(),
                run_type: RunType::Scheduled,
                backfill_name: None,
                backfill_uid: None,
                trigger: None,
                logical_date: at,
                data_interval_start: at - chrono::Duration::minutes(1),
                data_interval_end: at,
                priority: 0,
                params: serde_json::json!({"i": i}),
                spec_hash: None,
                tasks: TASKS
                    .iter()
                    .map(|t| NewTask {
                        task_name: t.to_string(),
                        pool: None,
                        pool_slots: 1,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn pages(c: &mut Criterion) {
    let full = std::env::args().any(|a| a == "--bench");
    let runs = if full { 100_000 } else { 1_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(common::fresh_store("bench_api"));
    for chunk in history(runs).chunks(10_000) {
        rt.block_on(store.insert_runs(chunk)).expect("insert_runs");
    }
    let oldest = rt
        .block_on(store.list_runs(&dag_operator::store::RunFilter {
            namespace: Some("bench".into()),
            dag_name: Some("etl".into()),
            state: None,
            limit: 0,
        }))
        .expect("runs")
        .into_iter()
        .min_by_key(|r| r.logical_date)
        .expect("a run");
    let (port, _stop) = rt.block_on(support::start(
        store,
        vec![support::dag("bench", "etl", &TASKS)],
    ));
    let mut group = c.benchmark_group(format!("api/{runs}_runs"));
    group.measurement_time(Duration::from_secs(5));
    for (name, path) in [
        (
            "grid_first_page",
            "/ui/namespaces/bench/dags/etl".to_string(),
        ),
        (
            "api_runs_first_page",
            "/api/v1/namespaces/bench/dags/etl/runs?limit=50".to_string(),
        ),
        (
            "run_page_oldest",
            format!("/ui/namespaces/bench/runs/{}", oldest.id),
        ),
        ("dag_list", "/".to_string()),
    ] {
        let (code, body) = rt.block_on(support::get(port, &path, Some("alice")));
        assert_eq!(code, 200, "{path}: {body}");
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(support::get(port, &path, Some("alice"))))
        });
    }
    group.finish();
}

criterion_group!(benches, pages);
criterion_main!(benches);
