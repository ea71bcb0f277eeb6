//! Criterion benchmarks of the pure core (SPEC §12): next tick in a DST zone, backfill
//! planning of a year of minutely ticks, and queue admission.
//! Run: cargo bench --bench schedule

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use dag_operator::queue::{AdmissionQueue, Entry, RunClass};
use dag_operator::schedule::{BackfillOrder, BackfillPlan, Schedule, parse_timezone};

const ORDINARY: &[&str] = &[
    "*/15 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0 9-17 * * 1-5",
    "0 0 1 * *",
    "5 4 * * sun",
    "0 0 L * *",
    "*/10 * * * * *",
];

fn next_tick(c: &mut Criterion) {
    let tz = parse_timezone("America/New_York").expect("zone");
    let mut group = c.benchmark_group("next_tick_new_york");
    for expr in ORDINARY {
        let schedule = Schedule::parse(expr, tz, None).expect("valid");
        // start near the spring-forward day so DST handling is on the path
        let start: DateTime<Utc> = "2024-03-09T12:00:00Z".parse().expect("time");
        group.bench_function(*expr, |b| {
            let mut t = start;
            b.iter(|| {
                t = schedule.next_after(black_box(t)).unwrap_or(start);
                if t.timestamp() > 1_900_000_000 {
                    t = start;
                }
                t
            })
        });
    }
    group.finish();
}

fn backfill_year_of_minutes(c: &mut Criterion) {
    let schedule = Schedule::parse(
        "* * * * *",
        parse_timezone("Europe/Berlin").expect("zone"),
        None,
    )
    .expect("valid");
    let start: DateTime<Utc> = "2023-01-01T00:00:00Z".parse().expect("time");
    let end: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("time");
    let mut group = c.benchmark_group("backfill_plan_525600");
    group.sample_size(10);
    group.bench_function("count", |b| {
        b.iter(|| {
            let n = BackfillPlan::new(&schedule, start, end, BackfillOrder::OldestFirst).count();
            assert_eq!(n, 525_600);
            n
        })
    });
    group.bench_function("iterate_newest_first", |b| {
        b.iter(|| {
            BackfillPlan::new(&schedule, start, end, BackfillOrder::NewestFirst)
                .iter()
                .count()
        })
    });
    group.finish();
}

fn queue_10k_dags(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    group.sample_size(20);
    group.bench_function("push_and_admit_10000_runs_of_10000_dags", |b| {
        b.iter_batched(
            || (0..10_000u32).collect::<Vec<_>>(),
            |dags| {
                let mut q = AdmissionQueue::new(300_000);
                for d in dags {
                    q.push(
                        Entry {
                            payload: d,
                            class: RunClass::Scheduled,
                            priority: (d % 3) as i32,
                            logical_date: 1_700_000_000,
                            keys: vec![d],
                        },
                        0,
                    );
                }
                q.begin_pass();
                let mut admitted = 0;
                while q.pop(1, |_| false).is_some() {
                    admitted += 1;
                }
                assert_eq!(admitted, 10_000);
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, next_tick, backfill_year_of_minutes, queue_10k_dags);
criterion_main!(benches);
