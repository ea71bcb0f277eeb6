//! Scale runs (SPEC §12), not part of the suite: run them by name with
//! `cargo test -p dag-operator-e2e --release --test scale -- --ignored --nocapture`
//! (after `eval "$(e2e/plane env)"`). They print their figures for docs/BENCHMARKS.md and
//! assert only that the work was done, never how fast.

use std::time::Duration;

use dag_operator::store::{RunFilter, RunStore};
use dag_operator_e2e::db::TestDb;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::{TestNamespace, eventually, plane};

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

fn rss_mib(pid_of_port: u16) -> Option<f64> {
    // the operator listening on the metrics port
    let out = std::process::Command::new("ss")
        .args(["-Htlnp", &format!("sport = :{pid_of_port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text.split("pid=").nth(1)?.split(',').next()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
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
    println!(
        "scale: operator watching {DAGS} DAGs (all Ready): RSS {:.1} MiB",
        rss_mib(op.metrics_port).unwrap_or(f64::NAN)
    );
}
