//! Criterion benchmark of the scheduler (SPEC §12: one tick due for 10,000 DAGs at once, all
//! admitted and in PostgreSQL within 2 s): the real engine and a real PostgreSQL (a fresh
//! database on the DATABASE_URL server); the timed part is the one pass that fires 10,000
//! timers, admits every run and persists them in batches.
//! Measured twice: with the in-process gate, and with the Redis gate (REDIS_URL), whose
//! difference is the admission overhead the gate adds per run.
//! Run: eval "$(e2e/plane env)" && cargo bench --bench engine

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use criterion::{Criterion, criterion_group, criterion_main};
use dag_operator::api::DagSpec;
use dag_operator::engine::{Command, DagInfo, Engine, EngineConfig};
use dag_operator::gate::{Gate, MemoryGate, RedisGate};
use dag_operator::store::{DagKey, PgStore};
use tokio::sync::mpsc;

const DAGS: usize = 10_000;

fn spec() -> Arc<DagSpec> {
    Arc::new(
        serde_yaml::from_str(
            "schedule: '0 * * * *'\ntasks:\n- {name: extract, container: {image: busybox}}\n- {name: load, dependsOn: [extract], container: {image: busybox}}\n",
        )
        .expect("valid spec"),
    )
}

/// One pass over 10,000 DAGs whose tick is due; returns its duration.
async fn one_tick<G: Gate>(store: PgStore, gate: G, hour: i64) -> Duration {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // drain outputs as the operator does, so the channel does not grow unread
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let cfg = EngineConfig {
        max_concurrent_runs: u32::MAX,
        ..EngineConfig::default()
    };
    // the previous iterations' runs have ended: this pass starts from a quiet operator
    sqlx::query("UPDATE dag_runs SET state = 'success', ended_at = now() WHERE state = 'running'")
        .execute(store.pool())
        .await
        .expect("end earlier runs");
    let mut engine = Engine::with_gate(cfg, store, gate, tx);
    engine.load().await.expect("load");
    let base: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().expect("time");
    let tick = base + chrono::Duration::hours(hour);
    let created = tick - chrono::Duration::minutes(30);
    let spec = spec();
    let schedule = spec.parse_schedule(Tz::UTC).expect("schedule");
    for i in 0..DAGS {
        let info = DagInfo::from_spec(
            DagKey::new("bench", format!("dag-{i:05}-{hour}")),
            &format!("uid-{i}"),
            created,
            (*spec).clone(),
            schedule.clone(),
        );
        engine.apply(Command::Upsert(Box::new(info)), created);
    }
    let started = Instant::now();
    let admitted = engine.tick(tick).await.expect("tick");
    let elapsed = started.elapsed();
    assert_eq!(admitted, DAGS, "every DAG's run admitted and persisted");
    elapsed
}

fn ten_thousand_dags_on_one_tick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(common::TestDb::create("bench_engine"));
    let store = rt.block_on(db.migrated());
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let mut hour = 0;
    group.bench_function("tick_due_for_10000_dags_admit_and_persist", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                hour += 1;
                let gate = MemoryGate::new(Duration::from_secs(30));
                total += rt.block_on(one_tick(store.clone(), gate, hour));
            }
            total
        })
    });
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let prefix = format!("bench-engine-{}", std::process::id());
            let gate = rt
                .block_on(RedisGate::connect(&url, &prefix, Duration::from_secs(30)))
                .expect("Redis at REDIS_URL");
            group.bench_function(
                "tick_due_for_10000_dags_admit_and_persist_redis_gate",
                |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            hour += 1;
                            total += rt.block_on(one_tick(store.clone(), gate.clone(), hour));
                        }
                        total
                    })
                },
            );
        }
        Err(_) => eprintln!("REDIS_URL not set: the Redis-gate variant is skipped"),
    }
    group.finish();
}

criterion_group!(benches, ten_thousand_dags_on_one_tick);
criterion_main!(benches);
