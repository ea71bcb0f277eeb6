//! Criterion benchmark of the gate (SPEC §12: ≥ 20,000 acquire+release pairs/s against one
//! local Redis). One element = one `acquire` (admitted) followed by its `release`.
//!
//! - `gate/redis/sequential`: one task, one connection, each call awaited before the next
//!   (2 round trips per pair).
//! - `gate/redis/8-tasks-1-connection`: 8 tasks sharing one multiplexed connection, so their
//!   calls are pipelined on the socket.
//! - `gate/redis/8-tasks-8-connections`: 8 tasks, each with its own connection.
//! - `gate/memory/sequential`: the in-process gate, for scale.
//!
//! Every task uses its own semaphore key (limit 1), so every acquire is admitted and the
//! figure is the cost of the gate, not of contention (tests/gate.rs covers contention).
//! Run: e2e/plane up && eval "$(e2e/plane env)" && cargo bench --bench gate

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dag_operator::gate::{Claim, Gate, Grant, MemoryGate, RedisGate, Slot};

const TASKS: u64 = 8;
const TTL: Duration = Duration::from_secs(30);

fn redis_url() -> String {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "REDIS_URL is not set: the gate benchmark needs a real Redis. Start the local plane \
             and export its URL: `e2e/plane up && eval \"$(e2e/plane env)\"`"
        ),
    }
}

fn prefix() -> String {
    format!("dagopbench-{}", uuid::Uuid::new_v4().simple())
}

async fn pairs<G: Gate>(gate: &G, key: &str, n: u64) {
    for _ in 0..n {
        let admitted = gate.acquire(key, "holder", 1, 1).await.expect("acquire");
        assert!(admitted, "{key}: every acquire is admitted");
        gate.release(key, "holder").await.expect("release");
    }
}

const BATCH: usize = 1000;

/// 1,000 runs of 100 DAGs claim a global and a DAG slot in one pipeline; returns how long
/// that took (the releases afterwards, as runs end, are not timed).
async fn claim_batch<G: Gate>(gate: &G) -> Duration {
    let claims: Vec<Claim> = (0..BATCH)
        .map(|i| Claim {
            holder: format!("run-{i}"),
            slots: vec![
                Slot::new("bench:global", 1, u32::MAX),
                Slot::new(format!("bench:dag:{}", i % 100), 1, 1_000),
            ],
        })
        .collect();
    // as a holder does every renew interval: other benchmarks ran meanwhile
    gate.keep_alive().await.expect("keep_alive");
    let start = Instant::now();
    let grants = gate.acquire_all(&claims).await.expect("acquire_all");
    let took = start.elapsed();
    assert!(grants.iter().all(|g| *g == Grant::Granted));
    let leases: Vec<(String, String)> = claims
        .iter()
        .flat_map(|c| c.slots.iter().map(|s| (s.key.clone(), c.holder.clone())))
        .collect();
    for (key, holder) in &leases {
        gate.release(key, holder).await.expect("release");
    }
    took
}

/// `iters` pairs on each of 8 spawned tasks; task `i` uses `gates[i]`.
async fn concurrent_pairs<G: Gate + Clone>(gates: &[G], iters: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let g = g.clone();
            tokio::spawn(async move { pairs(&g, &format!("bench:{i}"), iters).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("bench task");
    }
    start.elapsed()
}

fn gate(c: &mut Criterion) {
    // Sequential calls run on a current-thread runtime (no cross-thread wake-ups), concurrent
    // tasks on 2 worker threads (the machine's cores). A connection is driven by the runtime
    // it was made on, so each runtime has its own.
    let rt1 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = redis_url();
    let prefix = prefix();
    let single = rt1
        .block_on(RedisGate::connect(&url, &prefix, TTL))
        .expect("connect to REDIS_URL");
    let shared = rt
        .block_on(RedisGate::connect(&url, &prefix, TTL))
        .expect("connect to REDIS_URL");
    let own: Vec<RedisGate> = (0..TASKS)
        .map(|_| {
            rt.block_on(RedisGate::connect(&url, &prefix, TTL))
                .expect("connect")
        })
        .collect();

    let mut group = c.benchmark_group("gate/redis");
    group.measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            rt1.block_on(async {
                let start = Instant::now();
                pairs(&single, "bench:seq", iters).await;
                start.elapsed()
            })
        })
    });

    group.throughput(Throughput::Elements(TASKS));
    let one_connection: Vec<RedisGate> = (0..TASKS).map(|_| shared.clone()).collect();
    group.bench_function("8-tasks-1-connection", |b| {
        b.iter_custom(|iters| rt.block_on(concurrent_pairs(&one_connection, iters)))
    });
    group.bench_function("8-tasks-8-connections", |b| {
        b.iter_custom(|iters| rt.block_on(concurrent_pairs(&own, iters)))
    });
    // how the engine admits: one pipeline of atomic claims (global + DAG slot per run), then
    // the releases; one element = one run's claim plus its two releases
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("batch-1000-claims", |b| {
        b.iter_custom(|iters| {
            rt1.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += claim_batch(&single).await;
                }
                total
            })
        })
    });
    group.finish();

    // nothing left behind
    for key in (0..TASKS)
        .map(|i| format!("bench:{i}"))
        .chain(["bench:seq".to_string()])
    {
        assert_eq!(rt.block_on(shared.usage(&key)).expect("usage"), 0, "{key}");
    }

    let memory = MemoryGate::new(TTL);
    let mut group = c.benchmark_group("gate/memory");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            rt1.block_on(async {
                let start = Instant::now();
                pairs(&memory, "bench:seq", iters).await;
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, gate);
criterion_main!(benches);
