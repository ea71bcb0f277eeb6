//! Scale runs (SPEC §12), not part of the suite: run them by name with
//! `cargo test -p dag-operator-e2e --release --test scale -- --ignored --nocapture`
//! (after `eval "$(e2e/plane env)"`). They print their figures for docs/BENCHMARKS.md and
//! assert only that the work was done, never how fast.

use std::time::Duration;

use chrono::TimeZone;

use dag_operator::store::{RunFilter, RunStore};
use dag_operator_e2e::db::TestDb;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::{TestNamespace, eventually, plane, quantile};

/// `le` bucket bounds and cumulative counts of a histogram in OpenMetrics text.
fn histogram(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// The smallest bucket bound below which at least `q` of the observations fall.
fn quantile_bound(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

/// The operator listening on the metrics port `port`: its `/proc/<pid>/status`.
fn proc_status(port: u16) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args(["-Htlnp", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text.split("pid=").nth(1)?.split(',').next()?;
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// A `kB` field of a `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`), in MiB.
fn status_mib(status: &str, field: &str) -> Option<f64> {
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn rss_mib(pid_of_port: u16) -> Option<f64> {
    status_mib(&proc_status(pid_of_port)?, "VmRSS")
}

#[tokio::test]
#[ignore = "scale run: see the module docs"]
async fn scheduling_delay_p99_at_1000_dags_in_steady_state() {
    const DAGS: usize = 1000;
    plane().install_crds();
    let ns = TestNamespace::new("scale-delay");
    let db = TestDb::create("e2e_scale_delay").await;
    let store = db.migrated().await;
    let mut yaml = String::new();
    for i in 0..DAGS {
        yaml.push_str(&format!(
            "---\napiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: d{i:04}}}\nspec:\n  schedule: '*/5 * * * * *'\n  maxActiveRuns: 10000\n  tasks:\n  - {{name: a, container: {{image: busybox}}}}\n"
        ));
    }
    ns.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&yaml));
    // the global run limit would otherwise make admission wait for the executor
    let op = Operator::start(&ns.name, &db.url, &["--max-concurrent-runs", "1000000"]);
    let filter = RunFilter {
        namespace: Some(ns.name.clone()),
        dag_name: None,
        state: None,
        limit: 0,
    };
    // warm up until every DAG has had a run, then measure a minute of steady state
    eventually(
        Duration::from_secs(180),
        "every DAG scheduled once",
        || async {
            let n = store.list_runs(&filter).await.map(|r| r.len()).unwrap_or(0);
            (n >= DAGS).then_some(())
        },
    )
    .await;
    let before = op.get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
    let runs_before = store.list_runs(&filter).await.map(|r| r.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = op.get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
    let runs_after = store.list_runs(&filter).await.map(|r| r.len()).unwrap_or(0);
    let (b0, b1) = (
        histogram(&before, "dagop_schedule_delay_seconds"),
        histogram(&after, "dagop_schedule_delay_seconds"),
    );
    let window: Vec<(f64, f64)> = b1
        .iter()
        .zip(b0.iter().chain(std::iter::repeat(&(0.0, 0.0))))
        .map(|((le, c1), (_, c0))| (*le, c1 - c0))
        .collect();
    let p50 = quantile_bound(&window, 0.50);
    let p99 = quantile_bound(&window, 0.99);
    let observed = window.last().map(|(_, c)| *c).unwrap_or(0.0);
    println!(
        "scale: {DAGS} DAGs every 5 s for 60 s: {} runs created ({observed} delays observed); schedule delay p50 <= {:?} s, p99 <= {:?} s; operator RSS {:.1} MiB",
        runs_after - runs_before,
        p50,
        p99,
        rss_mib(op.metrics_port).unwrap_or(f64::NAN)
    );
    assert!(
        runs_after - runs_before >= DAGS * 10,
        "steady state kept scheduling"
    );
}

#[tokio::test]
#[ignore = "scale run: see the module docs"]
async fn rss_while_watching_10000_dags() {
    const DAGS: usize = 10_000;
    plane().install_crds();
    let ns = TestNamespace::new("scale-rss");
    let db = TestDb::create("e2e_scale_rss").await;
    let _store = db.migrated().await;
    // hourly DAGs of three tasks created now: watched and scheduled, no run due for a while
    for chunk in 0..DAGS / 1000 {
        let mut yaml = String::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            yaml.push_str(&format!(
                "---\napiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: d{i:05}}}\nspec:\n  schedule: '{} {} * * *'\n  timezone: Europe/Berlin\n  tasks:\n  - {{name: extract, container: {{image: busybox, command: [sh, -c, 'echo extract']}}}}\n  - {{name: transform, dependsOn: [extract], container: {{image: busybox}}}}\n  - {{name: load, dependsOn: [transform], container: {{image: busybox}}}}\n",
                i % 60,
                (i / 60) % 24
            ));
        }
        ns.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&yaml));
    }
    let op = Operator::start(&ns.name, &db.url, &[]);
    // every DAG reconciled and its status written (Ready), then let it settle
    eventually(Duration::from_secs(600), "every DAG Ready", || async {
        let out = ns.kubectl_ok(
            &[
                "get",
                "dags",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[0].status}{\"\\n\"}{end}",
            ],
            None,
        );
        (out.lines().filter(|l| *l == "True").count() == DAGS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let status = proc_status(op.metrics_port).unwrap_or_default();
    let mib = |field| status_mib(&status, field).unwrap_or(f64::NAN);
    println!(
        "scale: operator watching {DAGS} DAGs (all Ready): RSS {:.1} MiB (anonymous {:.1} MiB, \
         files {:.1} MiB)",
        mib("VmRSS"),
        mib("RssAnon"),
        mib("RssFile")
    );
}

/// Seconds between two instants.
fn secs(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// `n` Pods created by a client with `in_flight` requests at once; returns Pods per second.
async fn api_server_pod_rate(ns: &str, n: usize, in_flight: usize) -> f64 {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::namespaced(plane().client().await, ns);
    let started = std::time::Instant::now();
    let created: usize = futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("raw-{i}"), "labels": {"raw": "1"}},
                    "spec": {"restartPolicy": "Never",
                             "containers": [{"name": "c", "image": "busybox"}]}
                }))
                .expect("a pod");
                pods.create(&Default::default(), &pod).await.is_ok() as usize
            }
        })
        .buffer_unordered(in_flight)
        .fold(0, |a, b| async move { a + b })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(created, n, "every raw Pod created");
    n as f64 / elapsed
}

/// Waits until the plane is quiet: every Pod of `ns` has finished (kwok and the scheduler are
/// done with them) and no namespace is still being deleted (by an earlier run), so the next
/// measurement does not pay for the last one's tail.
async fn plane_quiet(ns: &str) {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    let client = plane().client().await;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let namespaces: kube::Api<Namespace> = kube::Api::all(client);
    eventually(Duration::from_secs(300), "a quiet plane", || async {
        let listed = pods.list(&Default::default()).await.ok()?;
        let settled = listed.items.iter().all(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            matches!(phase, Some("Succeeded" | "Failed"))
        });
        let deleting = namespaces
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|n| n.metadata.deletion_timestamp.is_some());
        (settled && !deleting).then_some(())
    })
    .await;
}

fn held_dag(name: &str, image: &str) -> String {
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: {name}}}\nspec:\n  schedule: '0 0 * * *'\n  maxActiveRuns: 10000\n  tasks:\n  - {{name: work, container: {{image: {image}}}}}\n"
    )
}

/// A Backfill of `n` daily dates from 1990-01-01, all admitted at once.
fn burst_backfill(dag: &str, n: i64) -> String {
    let start = chrono::Utc
        .with_ymd_and_hms(1990, 1, 1, 0, 0, 0)
        .single()
        .expect("date");
    let end = start + chrono::Duration::days(n);
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Backfill\nmetadata: {{name: burst}}\nspec:\n  dagRef: {{name: {dag}}}\n  start: {}\n  end: {}\n  concurrency: {n}\n",
        start.to_rfc3339(),
        end.to_rfc3339()
    )
}

/// Task tries of the namespace's runs: (run started, try started) for each started try.
async fn starts(
    store: &dag_operator::store::PgStore,
    ns: &str,
) -> Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as(
        "SELECT r.started_at, t.started_at FROM task_instances t JOIN dag_runs r ON r.id = t.run_id \
         WHERE r.namespace = $1 AND t.started_at IS NOT NULL",
    )
    .bind(ns)
    .fetch_all(store.pool())
    .await
    .unwrap_or_default()
}

const UNLIMITED: [&str; 4] = [
    "--max-concurrent-runs",
    "1000000",
    "--max-running-tasks",
    "1000000",
];

#[tokio::test]
#[ignore = "scale run: see the module docs"]
async fn task_pod_creation_rate_beside_the_api_servers_own() {
    const PODS: usize = 2000;
    plane().install_crds();
    // the API server's own rate from a concurrent client, in the same run; each measurement
    // starts on a quiet plane
    let raw = TestNamespace::new("scale-raw");
    plane_quiet(&raw.name).await;
    let raw_rate = api_server_pod_rate(&raw.name, PODS, 32).await;
    plane_quiet(&raw.name).await;
    let serial = TestNamespace::new("scale-raw1");
    let serial_rate = api_server_pod_rate(&serial.name, 200, 1).await;
    plane_quiet(&serial.name).await;
    let ns = TestNamespace::new("scale-burst");
    let db = TestDb::create("e2e_scale_burst").await;
    // the operator migrates (an earlier build may be measured: DAGOP_E2E_OPERATOR_BIN)
    let store = db.store();
    ns.kubectl_ok(&["apply", "-f", "-"], Some(&held_dag("burst", "busybox")));
    let op = Operator::start(&ns.name, &db.url, &UNLIMITED);
    eventually(Duration::from_secs(60), "the operator ready", || async {
        op.get("/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&burst_backfill("burst", PODS as i64)),
    );
    let tries = eventually(
        Duration::from_secs(600),
        "every task Pod created",
        || async {
            let s = starts(&store, &ns.name).await;
            (s.len() >= PODS).then_some(s)
        },
    )
    .await;
    let admitted = tries.iter().map(|(r, _)| *r).min().expect("runs");
    let first = tries.iter().map(|(_, t)| *t).min().expect("tries");
    let last = tries.iter().map(|(_, t)| *t).max().expect("tries");
    let rate = PODS as f64 / secs(admitted, last);
    // stretches with no create answered: the executor between batches, or the API server stalled
    let mut created: Vec<_> = tries.iter().map(|(_, t)| *t).collect();
    created.sort();
    // (the create it follows: its index, and when it was answered from the first)
    let pauses: Vec<(usize, f64, f64)> = created
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, secs(first, w[0]), secs(w[0], w[1])))
        .filter(|(_, _, gap)| *gap >= 0.05)
        .collect();
    if std::env::var_os("DAGOP_SCALE_PAUSES").is_some() {
        for (i, at, gap) in &pauses {
            println!("pause after create #{i} at {at:.3} s: {gap:.3} s");
        }
    }
    println!(
        "scale: pauses of 50 ms or more between two answered creates: {} totalling {:.2} s (longest {:.2} s)",
        pauses.len(),
        pauses.iter().map(|(_, _, gap)| gap).sum::<f64>(),
        pauses.iter().map(|(_, _, gap)| *gap).fold(0.0, f64::max)
    );
    println!(
        "scale: {PODS} one-task runs admitted at once: Pods created in {:.2} s from admission ({:.2} s from the first Pod) = {rate:.0} Pods/s; \
         the API server from a client with 32 requests in flight: {raw_rate:.0} Pods/s (sequential client: {serial_rate:.0} Pods/s); ratio {:.2}; operator RSS {:.1} MiB",
        secs(admitted, last),
        secs(first, last),
        rate / raw_rate,
        op.rss_mib().unwrap_or(f64::NAN)
    );
}

#[tokio::test]
#[ignore = "scale run: see the module docs"]
async fn tick_to_pod_for_500_dags_due_on_the_same_minute_beside_500_cronjobs() {
    const DAGS: usize = 500;
    const MINUTES: i64 = 3;
    plane().install_crds();
    let ns = TestNamespace::new("scale-minute");
    let cron = TestNamespace::new("scale-cron");
    let db = TestDb::create("e2e_scale_minute").await;
    // the operator migrates (an earlier build may be measured: DAGOP_E2E_OPERATOR_BIN)
    let store = db.store();
    let mut dags = String::new();
    let mut jobs = String::new();
    for i in 0..DAGS {
        dags.push_str(&format!(
            "---\napiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: d{i:03}}}\nspec:\n  schedule: '* * * * *'\n  tasks:\n  - {{name: work, container: {{image: busybox}}}}\n"
        ));
        jobs.push_str(&format!(
            "---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: c{i:03}}}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: work, image: busybox}}]\n"
        ));
    }
    ns.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&dags));
    cron.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&jobs));
    let op = Operator::start(&ns.name, &db.url, &UNLIMITED);
    // measure the minutes that begin after everything is in place
    let now = chrono::Utc::now().timestamp();
    let first = chrono::DateTime::from_timestamp(now - now % 60 + 60, 0).expect("a minute");
    let minutes: Vec<_> = (0..MINUTES)
        .map(|k| first + chrono::Duration::minutes(k))
        .collect();
    let until = *minutes.last().expect("minutes") + chrono::Duration::seconds(40);
    eventually(
        Duration::from_secs(300),
        "the measured minutes to pass",
        || async { (chrono::Utc::now() >= until).then_some(()) },
    )
    .await;
    // ours: the executor's own record of when each task Pod was created (µs), and the Pods'
    // creationTimestamp (whole seconds, as for the CronJobs' Pods)
    // and the run's start (the engine's admission: its insert transaction's start)
    type Row = (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.logical_date, r.started_at, t.started_at FROM task_instances t JOIN dag_runs r ON r.id = t.run_id \
         WHERE r.namespace = $1 AND t.started_at IS NOT NULL AND r.logical_date = ANY($2)",
    )
    .bind(&ns.name)
    .bind(&minutes)
    .fetch_all(store.pool())
    .await
    .expect("tries");
    let mut ours: Vec<f64> = rows
        .iter()
        .map(|(tick, _, pod)| secs(*tick, *pod))
        .collect();
    let mut admitted: Vec<f64> = rows
        .iter()
        .map(|(tick, run, _)| secs(*tick, *run))
        .collect();
    let mut launched: Vec<f64> = rows.iter().map(|(_, run, pod)| secs(*run, *pod)).collect();
    println!(
        "scale: tick → run admitted (the engine): p50 {:.2} s, p99 {:.2} s; run admitted → Pod created (the executor): p50 {:.2} s, p99 {:.2} s",
        quantile(&mut admitted, 0.5),
        quantile(&mut admitted, 0.99),
        quantile(&mut launched, 0.5),
        quantile(&mut launched, 0.99),
    );
    let created = |n: &TestNamespace| -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        let out = n.kubectl_ok(
            &[
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.metadata.creationTimestamp}{\"\\n\"}{end}",
            ],
            None,
        );
        out.lines()
            .filter_map(|l| l.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .map(|t| (String::new(), t))
            .collect()
    };
    let by_minute = |pods: Vec<(String, chrono::DateTime<chrono::Utc>)>| -> Vec<f64> {
        pods.into_iter()
            .filter_map(|(_, t)| {
                let m = t - chrono::Duration::seconds(t.timestamp() % 60);
                minutes.contains(&m).then(|| secs(m, t))
            })
            .collect()
    };
    let mut ours_s = by_minute(created(&ns));
    let mut cron_s = by_minute(created(&cron));
    println!(
        "scale: {DAGS} DAGs every minute, {MINUTES} minutes: tick → task Pod created (operator's record, {} Pods): p50 {:.2} s, p99 {:.2} s, max {:.2} s; \
         by creationTimestamp (1 s resolution, {} Pods): p50 {:.0} s, p99 {:.0} s; {DAGS} CronJobs on the same minutes ({} Pods): p50 {:.0} s, p99 {:.0} s; operator RSS {:.1} MiB",
        ours.len(),
        quantile(&mut ours, 0.5),
        quantile(&mut ours, 0.99),
        quantile(&mut ours, 1.0),
        ours_s.len(),
        quantile(&mut ours_s, 0.5),
        quantile(&mut ours_s, 0.99),
        cron_s.len(),
        quantile(&mut cron_s, 0.5),
        quantile(&mut cron_s, 0.99),
        op.rss_mib().unwrap_or(f64::NAN)
    );
    assert_eq!(
        ours.len(),
        DAGS * MINUTES as usize,
        "every tick's Pod created"
    );
    // the CronJobs go before the namespace does
    cron.kubectl(&["delete", "cronjobs", "--all", "--wait=false"], None);
}

#[tokio::test]
#[ignore = "scale run: see the module docs"]
async fn idle_cost_with_10000_runs_running() {
    // DAGOP_SCALE_RUNS measures another count (e.g. 1000, to see how the cost grows)
    let runs: usize = std::env::var("DAGOP_SCALE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    const WINDOW: u64 = 60;
    plane().install_crds();
    let ns = TestNamespace::new("scale-idle");
    let db = TestDb::create("e2e_scale_idle").await;
    // the operator migrates (an earlier build may be measured: DAGOP_E2E_OPERATOR_BIN)
    let store = db.store();
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&held_dag("held", "e2e.local/hold")),
    );
    let op = Operator::start(&ns.name, &db.url, &UNLIMITED);
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&burst_backfill("held", runs as i64)),
    );
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(1800), "every task running", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM task_instances WHERE state = 'running'")
                .fetch_one(store.pool())
                .await
                .unwrap_or(0);
        (n as usize >= runs).then_some(())
    })
    .await;
    let ramp = started.elapsed().as_secs_f64();
    // every Pod scheduled and started (kwok), so no Pod event is left in flight
    eventually(Duration::from_secs(1800), "every Pod Running", || {
        let out = ns.kubectl_ok(
            &[
                "get",
                "pods",
                "--field-selector",
                "status.phase=Running",
                "-o",
                "name",
            ],
            None,
        );
        let n = out.lines().count();
        async move { (n >= runs).then_some(()) }
    })
    .await;
    // let the last events settle, then measure an idle window
    tokio::time::sleep(Duration::from_secs(15)).await;
    let stats = || async {
        let row: (i64, i64) = sqlx::query_as(
            "SELECT (xact_commit + xact_rollback)::int8, tup_returned::int8 FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_database");
        row
    };
    let (cpu0, (x0, t0)) = (op.cpu_seconds().unwrap_or(f64::NAN), stats().await);
    tokio::time::sleep(Duration::from_secs(WINDOW)).await;
    let (cpu1, (x1, t1)) = (op.cpu_seconds().unwrap_or(f64::NAN), stats().await);
    let w = WINDOW as f64;
    println!(
        "scale: {runs} runs running (held Pods; all running after {ramp:.0} s), {WINDOW} s idle: operator CPU {:.1} ms per second, PostgreSQL {:.1} transactions/s and {:.0} rows read/s (this database); RSS {:.1} MiB",
        (cpu1 - cpu0) * 1000.0 / w,
        (x1 - x0) as f64 / w,
        (t1 - t0) as f64 / w,
        op.rss_mib().unwrap_or(f64::NAN)
    );
}

/// The schedule delay's histogram over a window of `secs` seconds, and the runs created then.
async fn delay_window(op: &Operator, secs: u64) -> Vec<(f64, f64)> {
    let before = op.get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = op.get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
    let (b0, b1) = (
        histogram(&before, "dagop_schedule_delay_seconds"),
        histogram(&after, "dagop_schedule_delay_seconds"),
    );
    b1.iter()
        .zip(b0.iter().chain(std::iter::repeat(&(0.0, 0.0))))
        .map(|((le, c1), (_, c0))| (*le, c1 - c0))
        .collect()
}

#[tokio::test]
#[ignore = "scale run: see the module docs"]
async fn retention_deletes_a_million_runs_beside_the_scheduler() {
    const DAGS: usize = 200;
    const OLD_RUNS: i64 = 1_000_000;
    plane().install_crds();
    let ns = TestNamespace::new("scale-retention");
    let db = TestDb::create("e2e_scale_retention").await;
    let store = db.migrated().await;
    // a million finished runs of a DAG deleted long ago, ended 60 days back, one try each
    let started = std::time::Instant::now();
    sqlx::query(
        "INSERT INTO dag_runs (id, namespace, dag_name, dag_uid, run_type, logical_date, \
             data_interval_start, data_interval_end, state, started_at, ended_at) \
         SELECT gen_random_uuid(), $1, 'history', 'gone', 'scheduled', \
             t, t, t, 'success', t, t \
         FROM (SELECT now() - interval '60 days' - make_interval(secs => g) AS t \
               FROM generate_series(1, $2::int) AS g) AS s",
    )
    .bind(&ns.name)
    .bind(OLD_RUNS as i32)
    .execute(store.pool())
    .await
    .expect("old runs");
    sqlx::query(
        "INSERT INTO task_instances (run_id, task_name, try_number, state, ended_at) \
         SELECT id, 'a', 1, 'success', ended_at FROM dag_runs WHERE dag_name = 'history'",
    )
    .execute(store.pool())
    .await
    .expect("old tries");
    sqlx::query("ANALYZE")
        .execute(store.pool())
        .await
        .expect("analyze");
    println!(
        "retention: {OLD_RUNS} old runs with their tries inserted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut yaml = String::new();
    for i in 0..DAGS {
        yaml.push_str(&format!(
            "---\napiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: d{i:03}}}\nspec:\n  schedule: '*/5 * * * * *'\n  maxActiveRuns: 10000\n  tasks:\n  - {{name: a, container: {{image: busybox}}}}\n"
        ));
    }
    ns.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&yaml));
    let count_old = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dag_runs WHERE dag_name = 'history'")
            .fetch_one(store.pool())
            .await
            .unwrap_or(-1)
    };
    let warm = |op: &Operator| {
        let port = op.metrics_port;
        async move {
            eventually(
                Duration::from_secs(120),
                "the DAGs scheduling",
                || async move {
                    let m = dag_operator_e2e::operator::http_metrics(port).await?;
                    (histogram(&m, "dagop_schedule_delay_seconds")
                        .last()
                        .map(|(_, c)| *c)
                        .unwrap_or(0.0)
                        >= 3.0 * DAGS as f64) // past the start-up burst: every DAG's third tick
                        .then_some(())
                },
            )
            .await
        }
    };

    // without retention: the scheduler alone
    // no catch-up: the windows hold only on-time ticks, whatever the time between operators
    let op = Operator::start(
        &ns.name,
        &db.url,
        &["--max-concurrent-runs", "1000000", "--enable-catchup=false"],
    );
    warm(&op).await;
    let quiet = delay_window(&op, 60).await;
    drop(op);
    assert_eq!(
        count_old().await,
        OLD_RUNS,
        "nothing deleted without retention"
    );

    // with --run-retention 30d: the leader deletes the million while scheduling
    let op = Operator::start(
        &ns.name,
        &db.url,
        &[
            "--max-concurrent-runs",
            "1000000",
            "--enable-catchup=false",
            "--run-retention",
            "30d",
        ],
    );
    let pruning = std::time::Instant::now();
    warm(&op).await;
    let busy = delay_window(&op, 60).await;
    let left_after_window = count_old().await;
    eventually(Duration::from_secs(900), "the million deleted", || async {
        (count_old().await == 0).then_some(())
    })
    .await;
    let took = pruning.elapsed().as_secs_f64();
    let tries_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_instances t LEFT JOIN dag_runs r ON r.id = t.run_id \
         WHERE r.id IS NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap_or(-1);
    let q = |w: &[(f64, f64)], p| quantile_bound(w, p);
    println!(
        "retention: {DAGS} DAGs every 5 s; 60 s windows: without retention schedule delay p50 <= {:?} s, p99 <= {:?} s ({} delays); \
         while deleting {OLD_RUNS} runs p50 <= {:?} s, p99 <= {:?} s ({} delays; {left_after_window} old runs left after the window); \
         all deleted {took:.0} s after the operator started; orphaned tries {tries_left}",
        q(&quiet, 0.5),
        q(&quiet, 0.99),
        quiet.last().map(|(_, c)| *c).unwrap_or(0.0),
        q(&busy, 0.5),
        q(&busy, 0.99),
        busy.last().map(|(_, c)| *c).unwrap_or(0.0),
    );
    assert_eq!(tries_left, 0, "tries go with their runs");
    drop(op);
}
