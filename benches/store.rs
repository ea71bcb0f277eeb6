//! Criterion benchmark of the PostgreSQL store (SPEC §12: persisting admitted runs at
//! ≥ 20,000 runs/s with batched writes): `insert_runs` of 10,000 runs with one task each,
//! against a fresh database on the DATABASE_URL server.
//! Run: eval "$(e2e/plane env)" && cargo bench --bench store

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use dag_operator::store::{DagKey, NewRun, NewTask, PgStore, RunStore, RunType};

const BATCH: usize = 10_000;

fn new_run(dag: String, logical_date: DateTime<Utc>, run_type: RunType) -> NewRun {
    NewRun {
        dag: DagKey::new("bench", dag),
        dag_uid: "00000000-0000-0000-0000-000000000000".into(),
        run_type,
        backfill_name: (run_type == RunType::Backfill).then(|| "bench-backfill".into()),
        backfill_uid: None,
        trigger: None,
        logical_date,
        data_interval_start: logical_date - chrono::Duration::minutes(1),
        data_interval_end: logical_date,
        priority: 0,
        params: serde_json::json!({"source": "bench"}),
        spec_hash: None,
        tasks: vec![NewTask {
            task_name: "main".into(),
            pool: None,
            pool_slots: 1,
        }],
    }
}

/// Times `iters` inserts of fresh 10,000-run batches; building a batch is not timed.
fn time_inserts(
    rt: &tokio::runtime::Runtime,
    store: &PgStore,
    iters: u64,
    next_batch: &mut impl FnMut() -> Vec<NewRun>,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let batch = next_batch();
        let started = Instant::now();
        let inserted = rt.block_on(store.insert_runs(&batch)).expect("insert_runs");
        total += started.elapsed();
        assert_eq!(inserted.len(), BATCH, "every run in the batch is new");
    }
    total
}

fn insert_runs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(common::TestDb::create("bench_store"));
    let store = rt.block_on(db.migrated());
    let t0 = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();

    let mut group = c.benchmark_group("insert_runs");
    // each insert takes a few hundred milliseconds: ten equal samples, no linear ramp
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(BATCH as u64));

    // a backfill: one DAG, consecutive minutely logical dates
    let mut minute = 0i64;
    group.bench_function("backfill_10k_runs_1_task", |b| {
        b.iter_custom(|iters| {
            time_inserts(&rt, &store, iters, &mut || {
                (0..BATCH)
                    .map(|_| {
                        minute += 1;
                        let date = t0 + chrono::Duration::minutes(minute);
                        new_run("backfilled".into(), date, RunType::Backfill)
                    })
                    .collect()
            })
        })
    });

    // one tick due for 10,000 DAGs at once
    let mut tick = 0i64;
    group.bench_function("tick_of_10k_dags_1_task", |b| {
        b.iter_custom(|iters| {
            time_inserts(&rt, &store, iters, &mut || {
                tick += 1;
                let date = t0 + chrono::Duration::hours(tick);
                (0..BATCH)
                    .map(|i| new_run(format!("dag-{i:05}"), date, RunType::Scheduled))
                    .collect()
            })
        })
    });
    group.finish();
    drop(store);
    drop(db);
}

criterion_group!(benches, insert_runs);
criterion_main!(benches);
