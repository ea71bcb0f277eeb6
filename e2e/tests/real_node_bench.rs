//! A benchmark on the plane's real node (issue 26; docs/BENCHMARKS.md, "Real node"): from a
//! tick to the task's container started (the kubelet's `startedAt`), for 20 DAGs every 10 s,
//! beside 20 CronJobs (every minute, their finest schedule) on the same node in the same run.
//! Ignored in the suite (a figure, not a pass/fail):
//!
//! ```sh
//! eval "$(e2e/plane env)" && cargo test -p dag-operator-e2e --test real_node_bench -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dag_operator_e2e::node::{TASK_IMAGE, real_namespace, task_image};
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::{TestNamespace, db::TestDb, plane, quantile};
use serde_json::Value;

fn at(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

/// Adds (tick, container started) of every Pod of `ns` whose tick `tick_of` reads and whose
/// container has started to `seen`, by Pod name (Pods go after their retention, so this is
/// polled through the run).
fn collect(
    ns: &TestNamespace,
    tick_of: impl Fn(&Value) -> Option<DateTime<Utc>>,
    seen: &mut BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)>,
) {
    let out = ns.kubectl_ok(&["get", "pods", "-o", "json"], None);
    let list: Value = serde_json::from_str(&out).expect("json");
    for p in list["items"].as_array().cloned().unwrap_or_default() {
        let state = &p["status"]["containerStatuses"][0]["state"];
        let started =
            at(&state["terminated"]["startedAt"]).or_else(|| at(&state["running"]["startedAt"]));
        if let (Some(started), Some(tick), Some(name)) =
            (started, tick_of(&p), p["metadata"]["name"].as_str())
        {
            seen.insert(name.to_string(), (tick, started));
        }
    }
}

#[tokio::test]
#[ignore = "benchmark on the real node: see the module docs"]
async fn tick_to_container_started_for_20_dags_every_10s_beside_20_cronjobs() {
    const N: usize = 20;
    const MINUTES: i64 = 3;
    plane().install_crds();
    task_image();
    let ns = real_namespace("bench-real");
    let cron = real_namespace("bench-real-cron");
    let db = TestDb::create("e2e_bench_real").await;
    let mut dags = String::new();
    let mut jobs = String::new();
    for i in 0..N {
        dags.push_str(&format!(
            "---\napiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: d{i:02}}}\nspec:\n  schedule: '*/10 * * * * *'\n  tasks:\n  - {{name: work, container: {{image: '{TASK_IMAGE}', command: [sh, -c, 'echo $LOGICAL_DATE']}}}}\n"
        ));
        jobs.push_str(&format!(
            "---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: c{i:02}}}\nspec:\n  schedule: '* * * * *'\n  successfulJobsHistoryLimit: 1\n  jobTemplate:\n    spec:\n      ttlSecondsAfterFinished: 60\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: work, image: '{TASK_IMAGE}', command: [sh, -c, 'echo tick']}}]\n"
        ));
    }
    ns.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&dags));
    cron.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&jobs));
    let _op = Operator::start(&ns.name, &db.url, &["--pod-retention", "30s"]);
    let now = Utc::now().timestamp();
    let first = DateTime::from_timestamp(now - now % 60 + 60, 0).expect("a minute");
    let until = first + chrono::Duration::minutes(MINUTES);
    let measured = |t: DateTime<Utc>| t >= first && t < until;
    let ours_tick = |p: &Value| {
        p["spec"]["containers"][0]["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == "LOGICAL_DATE")
            .and_then(|e| at(&e["value"]))
    };
    // a CronJob names its Jobs <cronjob>-<scheduled time in minutes since the epoch>
    let cron_tick = |p: &Value| {
        let job = p["metadata"]["labels"]["job-name"].as_str()?;
        let minutes: i64 = job.rsplit('-').next()?.parse().ok()?;
        DateTime::from_timestamp(minutes * 60, 0)
    };
    let mut ours = BTreeMap::new();
    let mut theirs = BTreeMap::new();
    while Utc::now() < until + chrono::Duration::seconds(20) {
        collect(&ns, ours_tick, &mut ours);
        collect(&cron, cron_tick, &mut theirs);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let ours: Vec<_> = ours.into_values().collect();
    let theirs: Vec<_> = theirs.into_values().collect();
    let delays = |rows: &[(DateTime<Utc>, DateTime<Utc>)]| -> Vec<f64> {
        rows.iter()
            .filter(|(tick, _)| measured(*tick))
            .map(|(tick, started)| (*started - *tick).num_milliseconds() as f64 / 1000.0)
            .collect()
    };
    let mut ours_d = delays(&ours);
    let mut theirs_d = delays(&theirs);
    println!(
        "real node: {N} DAGs every 10 s, {MINUTES} minutes, tick → container started ({} containers): p50 {:.0} s, p99 {:.0} s, max {:.0} s; \
         {N} CronJobs every minute on the same node ({} containers): p50 {:.0} s, p99 {:.0} s, max {:.0} s (startedAt has 1 s resolution)",
        ours_d.len(),
        quantile(&mut ours_d, 0.5),
        quantile(&mut ours_d, 0.99),
        quantile(&mut ours_d, 1.0),
        theirs_d.len(),
        quantile(&mut theirs_d, 0.5),
        quantile(&mut theirs_d, 0.99),
        quantile(&mut theirs_d, 1.0),
    );
    assert_eq!(
        ours_d.len(),
        N * MINUTES as usize * 6,
        "every tick's container started"
    );
    cron.kubectl(&["delete", "cronjobs", "--all", "--wait=false"], None);
    ns.kubectl(&["delete", "dags", "--all", "--wait=false"], None);
}
