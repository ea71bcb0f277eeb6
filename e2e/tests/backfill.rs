//! Backfills end to end (issue 7, SPEC §2.3, §4, §8): the Backfill resource, its controller in
//! the operator, and `dag-operator backfill`, against the local plane, PostgreSQL and Redis.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dag_operator::store::{RunRow, RunState, RunType};
use dag_operator_e2e::operator::operator_binary;
use dag_operator_e2e::scenario::{Setup, dag_with_spec, env_of, setup};
use dag_operator_e2e::{eventually, plane};
use serde_json::Value;

fn backfill_yaml(name: &str, dag: &str, start: &str, end: &str, extra: &str) -> String {
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Backfill\nmetadata: {{name: {name}}}\nspec:\n  dagRef: {{name: {dag}}}\n  start: {start}\n  end: {end}\n{extra}"
    )
}

fn backfill_status(s: &Setup, name: &str) -> Value {
    let out =
        s.ns.kubectl_ok(&["get", "backfill", name, "-o", "json"], None);
    let obj: Value = serde_json::from_str(&out).expect("kubectl json");
    obj["status"].clone()
}

async fn backfill_until(s: &Setup, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(120), what, || {
        let st = backfill_status(s, name);
        let ok = f(&st);
        async move { ok.then_some(st) }
    })
    .await
}

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, d, 0, 0, 0)
        .single()
        .expect("date")
}

#[tokio::test]
async fn a_month_of_a_daily_dag_backfills_31_runs_within_concurrency_via_the_cli() {
    let s = setup("bf-month").await;
    s.apply(&dag_with_spec(
        "daily",
        "  schedule: '0 0 * * *'\n  tasks:\n  - {name: extract, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    // the CLI creates the Backfill and follows it to the end
    let mut cli = Command::new(operator_binary())
        .args([
            "backfill",
            "daily",
            "-n",
            &s.ns.name,
            "--start",
            "2024-01-01T00:00:00Z",
            "--end",
            "2024-02-01T00:00:00Z",
            "--concurrency",
            "3",
            "--wait",
        ])
        .env("KUBECONFIG", &plane().kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dag-operator backfill");
    // sampled from PostgreSQL while it runs: never more than `concurrency` running
    let mut max_running = 0;
    let status = loop {
        let runs = s.runs("daily").await;
        let running = runs.iter().filter(|r| r.state == RunState::Running).count();
        max_running = max_running.max(running);
        assert!(
            running <= 3,
            "{running} backfill runs running with concurrency 3"
        );
        if let Some(status) = cli.try_wait().expect("wait") {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = cli.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.success(),
        "backfill --wait failed: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(stderr.contains("31/31 100%"), "the progress bar: {stderr}");
    assert!(
        max_running >= 2,
        "concurrency was not used: at most {max_running} at once"
    );

    let runs = s.runs("daily").await;
    assert_eq!(runs.len(), 31);
    let dates: Vec<_> = runs.iter().map(|r| r.logical_date).collect();
    assert_eq!(dates, (1..=31).map(day).collect::<Vec<_>>());
    assert!(runs.iter().all(|r| {
        r.run_type == RunType::Backfill
            && r.state == RunState::Success
            && r.backfill_name
                .as_deref()
                .is_some_and(|n| n.starts_with("daily-"))
    }));
    // what each task saw
    let by_run: BTreeMap<String, &RunRow> = runs.iter().map(|r| (r.id.to_string(), r)).collect();
    let pods = s.pods("daily");
    assert_eq!(pods.len(), 31);
    for pod in &pods {
        let id = env_of(pod).get("DAG_RUN_ID").cloned().unwrap_or_default();
        let run = by_run.get(&id).expect("pod of a run");
        assert_eq!(
            env_of(pod).get("LOGICAL_DATE").map(String::as_str),
            Some(
                run.logical_date
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    .as_str()
            )
        );
        assert_eq!(
            env_of(pod).get("DAG_RUN_TYPE").map(String::as_str),
            Some("backfill")
        );
    }
    let name = runs[0].backfill_name.clone().unwrap_or_default();
    let st = backfill_status(&s, &name);
    assert_eq!(st["phase"], "Succeeded");
    assert_eq!(st["totalRuns"], 31);
    assert_eq!(st["succeededRuns"], 31);
    assert_eq!(st["progress"], "31/31");
    assert_eq!(st["plannedDates"].as_array().map(Vec::len), Some(31));
    assert!(st["completedAt"].is_string());
}

#[tokio::test]
async fn newest_first_admits_in_reverse_order() {
    let s = setup("bf-newest").await;
    s.apply(&dag_with_spec(
        "daily",
        "  schedule: '0 0 * * *'\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    s.apply(&backfill_yaml(
        "recent-first",
        "daily",
        "2024-01-01T00:00:00Z",
        "2024-01-06T00:00:00Z",
        "  concurrency: 1\n  order: NewestFirst\n",
    ));
    backfill_until(&s, "recent-first", "Succeeded", |st| {
        st["phase"] == "Succeeded"
    })
    .await;
    let mut runs = s.runs("daily").await;
    runs.sort_by_key(|r| r.created_at);
    let order: Vec<_> = runs.iter().map(|r| r.logical_date).collect();
    assert_eq!(order, vec![day(5), day(4), day(3), day(2), day(1)]);
}

#[tokio::test]
async fn scheduled_runs_stay_on_time_while_a_large_backfill_is_queued() {
    let s = setup("bf-fair").await;
    s.apply(&dag_with_spec(
        "busy",
        "  schedule: '*/2 * * * * *'\n  maxActiveRuns: 3\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    // ten thousand every-other-second ticks of the past, as many at once as the DAG allows
    s.apply(&backfill_yaml(
        "big",
        "busy",
        "2024-01-01T00:00:00Z",
        "2024-01-01T05:33:20Z",
        "  concurrency: 10\n",
    ));
    let st = backfill_until(&s, "big", "running", |st| st["phase"] == "Running").await;
    assert_eq!(st["totalRuns"], 10_000);
    let watch_from = Utc::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let runs = s.runs("busy").await;
    let scheduled: Vec<&RunRow> = runs
        .iter()
        .filter(|r| r.run_type == RunType::Scheduled && r.logical_date > watch_from)
        .collect();
    let backfilled = runs
        .iter()
        .filter(|r| r.run_type == RunType::Backfill && r.created_at > watch_from)
        .count();
    // every tick of the window has its run, admitted soon after the tick
    assert!(
        scheduled.len() >= 8,
        "only {} scheduled runs in 20 s",
        scheduled.len()
    );
    for pair in scheduled.windows(2) {
        assert_eq!(
            (pair[1].logical_date - pair[0].logical_date).num_seconds(),
            2
        );
    }
    for r in &scheduled {
        let delay = (r.created_at - r.logical_date).num_milliseconds();
        assert!(
            delay < 6_000,
            "tick {} admitted {delay} ms late",
            r.logical_date
        );
    }
    // and the backfill progressed too
    assert!(
        backfilled >= 3,
        "the backfill starved: {backfilled} runs in 20 s"
    );
}

#[tokio::test]
async fn reprocess_failed_reruns_exactly_the_failed_dates_and_none_skips_them_all() {
    let s = setup("bf-reprocess").await;
    s.apply(&dag_with_spec(
        "flaky",
        "  schedule: '0 0 * * *'\n  tasks:\n  - {name: a, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    s.apply(&backfill_yaml(
        "first",
        "flaky",
        "2024-01-01T00:00:00Z",
        "2024-01-05T00:00:00Z",
        "  concurrency: 4\n",
    ));
    // days 2 and 4 fail, days 1 and 3 succeed
    let runs = s.runs_until("flaky", "four runs", |r| r.len() == 4).await;
    for run in &runs {
        let pod = s.pod_of_run(run).await;
        let outcome = if [day(2), day(4)].contains(&run.logical_date) {
            "fail"
        } else {
            "succeed"
        };
        s.pod_outcome(&pod, outcome);
    }
    let st = backfill_until(&s, "first", "Failed", |st| st["phase"] == "Failed").await;
    assert_eq!(
        (st["succeededRuns"].as_i64(), st["failedRuns"].as_i64()),
        (Some(2), Some(2))
    );

    s.apply(&backfill_yaml(
        "again",
        "flaky",
        "2024-01-01T00:00:00Z",
        "2024-01-05T00:00:00Z",
        "  concurrency: 4\n  reprocess: Failed\n",
    ));
    let rerun = s
        .runs_until("flaky", "two re-runs", |r| {
            r.iter().filter(|r| r.attempt == 2).count() == 2
        })
        .await;
    let again: Vec<_> = rerun
        .iter()
        .filter(|r| r.attempt == 2)
        .map(|r| r.logical_date)
        .collect();
    assert_eq!(again, vec![day(2), day(4)]);
    for run in rerun.iter().filter(|r| r.attempt == 2) {
        // in place: the same run, a new try; the failed try stays
        let tries = eventually(Duration::from_secs(30), "the new try", || async {
            let tries = s.tasks(run).await;
            (tries.len() == 2).then_some(tries)
        })
        .await;
        assert_eq!(tries[0].state, "failed");
        assert_eq!((tries[1].try_number, tries[1].attempt), (2, 2));
    }
    // the re-runs' Pods (try 2) succeed; the failed tries' Pods have ended already
    let runs = s.succeed_all("flaky").await;
    assert!(
        runs.iter().all(|r| r.state == RunState::Success),
        "{runs:?}"
    );
    let st = backfill_until(&s, "again", "Succeeded", |st| st["phase"] == "Succeeded").await;
    assert_eq!(st["skippedRuns"], 2);
    assert_eq!(st["createdRuns"], 2);
    assert_eq!(st["succeededRuns"], 2);
    let runs = s.runs("flaky").await;
    assert!(
        runs.iter().all(|r| r.state == RunState::Success),
        "{runs:?}"
    );

    // None: every date has a run now; all are skipped and nothing is created
    s.apply(&backfill_yaml(
        "none",
        "flaky",
        "2024-01-01T00:00:00Z",
        "2024-01-05T00:00:00Z",
        "",
    ));
    let st = backfill_until(&s, "none", "Succeeded", |st| st["phase"] == "Succeeded").await;
    assert_eq!(st["skippedRuns"], 4);
    assert_eq!(st["createdRuns"], 0);
    assert_eq!(st["progress"], "4/4");
    assert_eq!(s.runs("flaky").await.len(), 4);
}

#[tokio::test]
async fn a_dry_run_over_a_year_of_minutes_plans_525600_and_creates_nothing() {
    let s = setup("bf-dry").await;
    s.apply(&dag_with_spec(
        "minutely",
        "  schedule: '* * * * *'\n  suspend: true\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&[]);
    s.apply(&backfill_yaml(
        "year",
        "minutely",
        "2023-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z",
        "  dryRun: true\n",
    ));
    let st = backfill_until(&s, "year", "planned", |st| st["phase"] == "Succeeded").await;
    assert_eq!(st["totalRuns"], 525_600);
    let dates = st["plannedDates"].as_array().cloned().unwrap_or_default();
    assert_eq!(dates.len(), 100);
    assert_eq!(dates[0], "2023-01-01T00:00:00Z");
    assert_eq!(dates[99], "2023-01-01T01:39:00Z");
    assert_eq!(st["createdRuns"], 0);
    assert!(
        st["conditions"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("dry run")
    );
    assert!(s.runs("minutely").await.is_empty());
}

#[tokio::test]
async fn invalid_backfills_say_why_and_create_nothing() {
    let s = setup("bf-invalid").await;
    s.apply(&dag_with_spec(
        "unscheduled",
        "  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    s.apply(&dag_with_spec(
        "minutely",
        "  schedule: '* * * * *'\n  suspend: true\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let _op = s.operator(&["--max-backfill-runs", "1000"]);
    let range = ("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z");
    s.apply(&backfill_yaml("no-dag", "later", range.0, range.1, ""));
    s.apply(&backfill_yaml(
        "no-schedule",
        "unscheduled",
        range.0,
        range.1,
        "",
    ));
    s.apply(&backfill_yaml("too-many", "minutely", range.0, range.1, ""));
    let reason = |st: &Value| {
        st["conditions"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let message = |st: &Value| {
        st["conditions"][0]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let st = backfill_until(&s, "no-dag", "Invalid", |st| st["phase"] == "Invalid").await;
    assert_eq!(reason(&st), "DAGNotFound");
    assert!(message(&st).contains("\"later\""), "{}", message(&st));
    // until the DAG is taken up the Backfill waits for it (DAGNotFound); then it says why
    let st = backfill_until(&s, "no-schedule", "Invalid: DAGUnscheduled", |st| {
        st["phase"] == "Invalid" && reason(st) == "DAGUnscheduled"
    })
    .await;
    assert_eq!(reason(&st), "DAGUnscheduled");
    let st = backfill_until(&s, "too-many", "Invalid: TooManyRuns", |st| {
        st["phase"] == "Invalid" && reason(st) == "TooManyRuns"
    })
    .await;
    assert_eq!(reason(&st), "TooManyRuns");
    assert!(
        message(&st).contains("1440") && message(&st).contains("1000"),
        "{}",
        message(&st)
    );
    assert!(
        s.runs("minutely").await.is_empty(),
        "a too-large backfill created runs"
    );

    // the missing DAG appears: the waiting Backfill goes ahead
    s.apply(&dag_with_spec(
        "later",
        "  schedule: '0 12 * * *'\n  tasks:\n  - {name: a, container: {image: busybox}}\n",
    ));
    let st = backfill_until(&s, "no-dag", "Succeeded", |st| st["phase"] == "Succeeded").await;
    assert_eq!(st["totalRuns"], 1);
    let runs = s.runs("later").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].logical_date,
        Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap()
    );
}

/// Lets every run of `dag` succeed, then checks for two seconds that no run is added: there
/// are `n`, and `why` says what a new one would mean.
async fn finish_and_stay(s: &Setup, dag: &str, n: usize, why: &str) {
    let runs = s.succeed_all(dag).await;
    assert!(
        runs.iter().all(|r| r.state == RunState::Success),
        "{runs:?}"
    );
    for _ in 0..8 {
        assert_eq!(s.runs(dag).await.len(), n, "{why}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn suspend_pauses_a_backfill_and_deleting_it_stops_admissions_while_running_runs_finish() {
    let s = setup("bf-stop").await;
    s.apply(&dag_with_spec(
        "held",
        "  schedule: '0 0 * * *'\n  maxActiveRuns: 10\n  tasks:\n  - {name: a, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    let ten_days = ("2024-01-01T00:00:00Z", "2024-01-11T00:00:00Z");
    s.apply(&backfill_yaml(
        "pausable",
        "held",
        ten_days.0,
        ten_days.1,
        "  concurrency: 2\n",
    ));
    s.runs_until("held", "two runs", |r| r.len() == 2).await;

    // suspend: the two running runs go on, nothing new is admitted when they finish
    s.apply(&backfill_yaml(
        "pausable",
        "held",
        ten_days.0,
        ten_days.1,
        "  concurrency: 2\n  suspend: true\n",
    ));
    backfill_until(&s, "pausable", "Suspended", |st| st["phase"] == "Suspended").await;
    // (the Pods may not exist yet: keep telling kwok until both runs have ended)
    finish_and_stay(&s, "held", 2, "a suspended Backfill admitted a run").await;

    // resume, then delete while two runs hold: they finish, nothing more is created
    s.apply(&backfill_yaml(
        "pausable",
        "held",
        ten_days.0,
        ten_days.1,
        "  concurrency: 2\n",
    ));
    s.runs_until("held", "two more runs", |r| r.len() == 4)
        .await;
    s.ns.kubectl_ok(&["delete", "backfill", "pausable"], None);
    finish_and_stay(&s, "held", 4, "a deleted Backfill admitted a run").await;
}

#[tokio::test]
async fn a_backfill_suspended_with_dates_queued_and_resumed_runs_every_date() {
    let s = setup("bf-resume").await;
    // the DAG runs 2 at a time, the Backfill asks for 5: 3 dates wait in the queue
    s.apply(&dag_with_spec(
        "narrow",
        "  schedule: '0 0 * * *'\n  startDate: 2024-01-01T00:00:00Z\n  endDate: 2024-01-20T00:00:00Z\n  maxActiveRuns: 2\n  tasks:\n  - {name: a, container: {image: e2e.local/hold}}\n",
    ));
    let _op = s.operator(&[]);
    let range = ("2024-01-01T00:00:00Z", "2024-01-11T00:00:00Z");
    s.apply(&backfill_yaml(
        "ten",
        "narrow",
        range.0,
        range.1,
        "  concurrency: 5\n",
    ));
    s.runs_until("narrow", "two runs", |r| r.len() == 2).await;
    s.apply(&backfill_yaml(
        "ten",
        "narrow",
        range.0,
        range.1,
        "  concurrency: 5\n  suspend: true\n",
    ));
    backfill_until(&s, "ten", "Suspended", |st| st["phase"] == "Suspended").await;
    finish_and_stay(&s, "narrow", 2, "a suspended Backfill admitted a run").await;
    s.apply(&backfill_yaml(
        "ten",
        "narrow",
        range.0,
        range.1,
        "  concurrency: 5\n",
    ));
    let st = eventually(Duration::from_secs(120), "the Backfill to end", || {
        s.all_pods_outcome("succeed");
        let st = backfill_status(&s, "ten");
        let ended = st["phase"] == "Succeeded" || st["phase"] == "Failed";
        async move { ended.then_some(st) }
    })
    .await;
    assert_eq!(st["phase"], "Succeeded", "{st}");
    assert_eq!(st["progress"], "10/10", "{st}");
    assert_eq!(st["succeededRuns"], 10);
    let dates: Vec<_> = s
        .runs("narrow")
        .await
        .iter()
        .map(|r| r.logical_date)
        .collect();
    assert_eq!(
        dates,
        (1..=10).map(day).collect::<Vec<_>>(),
        "every date, once"
    );
}
