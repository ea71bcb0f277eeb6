//! Task Pods in real containers on the plane's real node (containerd, runc, a kubelet; issue
//! 26): what a user sees in the runs and tries, the events, `kubectl get pods`, the API and
//! `dag-operator logs` when a task prints, fails, runs out of memory, overruns its timeout,
//! names an image or a command that does not exist, and when a Pool of one slot or
//! `--max-running-tasks` hold. Nothing here is completed by kwok: every outcome is the
//! kubelet's.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dag_operator::graph::TaskState;
use dag_operator::store::{RunRow, RunState, TaskRow, TryKey};
use dag_operator_e2e::eventually;
use dag_operator_e2e::node::{TASK_IMAGE, containers_of_pod};
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup_on_real_node};
use serde_json::Value;

/// A ServiceAccount of the namespace that may read DAGs and Pod logs; its token.
fn reader(s: &Setup) -> String {
    s.ns.kubectl_ok(&["create", "serviceaccount", "reader"], None);
    s.ns.kubectl_ok(
        &[
            "create",
            "role",
            "reader",
            "--verb=get,list,watch",
            "--resource=dags.dagoperator.io,pods,pods/log",
        ],
        None,
    );
    let subject = format!("--serviceaccount={}:reader", s.ns.name);
    s.ns.kubectl_ok(
        &["create", "rolebinding", "reader", "--role=reader", &subject],
        None,
    );
    s.ns.kubectl_ok(&["create", "token", "reader"], None)
        .trim()
        .to_string()
}

/// Triggers `dag` now, with `params` if given.
fn trigger(s: &Setup, dag: &str, params: Option<&str>) {
    let mut args = vec!["trigger", dag, "-n", s.ns.name.as_str()];
    if let Some(p) = params {
        args.extend(["--params", p]);
    }
    s.cli(&args);
}

/// Waits until the (one) run of `dag` has ended; returns it.
async fn ended(s: &Setup, dag: &str, within: Duration) -> RunRow {
    eventually(within, &format!("the run of {dag} to end"), || async {
        s.runs(dag)
            .await
            .into_iter()
            .find(|r| r.state != RunState::Running)
    })
    .await
}

/// The tries of `task` in `run`, by try number.
async fn tries(s: &Setup, run: &RunRow, task: &str) -> Vec<TaskRow> {
    let mut all: Vec<TaskRow> = s
        .tasks(run)
        .await
        .into_iter()
        .filter(|t| t.task_name == task)
        .collect();
    all.sort_by_key(|t| t.try_number);
    all
}

fn pod(s: &Setup, name: &str) -> Value {
    serde_json::from_str(&s.ns.kubectl_ok(&["get", "pod", name, "-o", "json"], None))
        .expect("kubectl json")
}

/// The task container's state as the kubelet reported it (`terminated`, `running`, ...).
fn container_state(pod: &Value) -> Value {
    pod["status"]["containerStatuses"][0]["state"].clone()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a time: {v}"))
}

fn task(name: &str, extra: &str, script: &str) -> String {
    format!(
        "  - name: {name}\n{extra}    container:\n      image: {TASK_IMAGE}\n      command: [sh, -c, {}]\n",
        serde_json::to_string(script).expect("a JSON string")
    )
}

#[tokio::test]
async fn a_tasks_real_output_reaches_the_api_the_cli_and_the_kept_log() {
    let s = setup_on_real_node("real-output").await;
    let token = reader(&s);
    // $(DS) is expanded by Kubernetes, $DAG_RUN_PARAMS by the container's shell
    let spec = format!(
        "  tasks:\n{}{}",
        task("show", "", r#"echo "ds=$(DS) params=$DAG_RUN_PARAMS""#),
        task(
            "count",
            "    dependsOn: [show]\n",
            "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done"
        )
    );
    s.apply(&dag_with_spec("echo", &spec));
    let op = s.operator(&["--pod-retention", "20s"]);
    let started = Utc::now();
    trigger(&s, "echo", Some(r#"{"who":"real"}"#));

    // `dag-operator logs -f` follows `count` while it prints, and ends with its Pod
    let run = eventually(Duration::from_secs(60), "the run", || async {
        s.runs("echo").await.into_iter().next()
    })
    .await;
    let count = s.pod_of("echo", "count", 1).await;
    // show ran first, in a real container, by the kubelet's record (its Pod is kept for
    // --pod-retention)
    let show = s.pod_of("echo", "show", 1).await;
    let p = pod(&s, &show);
    assert_eq!(p["spec"]["nodeName"], "real-0");
    let status = &p["status"]["containerStatuses"][0];
    assert!(
        status["containerID"]
            .as_str()
            .is_some_and(|c| c.starts_with("containerd://")),
        "{status}"
    );
    assert_eq!(container_state(&p)["terminated"]["exitCode"], 0);
    let server = format!("http://127.0.0.1:{}", op.ui_port);
    let id = run.id.to_string();
    let cli_logs = |task: &str, follow: bool| {
        let mut args = vec![
            "logs",
            id.as_str(),
            task,
            "-n",
            s.ns.name.as_str(),
            "--server",
            server.as_str(),
            "--token",
            token.as_str(),
        ];
        if follow {
            args.push("-f");
        }
        s.cli_output(&args)
    };
    eventually(
        Duration::from_secs(60),
        "count's container to start",
        || {
            let running = container_state(&pod(&s, &count))["running"].is_object();
            async move { running.then_some(()) }
        },
    )
    .await;
    let t0 = Instant::now();
    let out = cli_logs("count", true);
    let followed = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ticks: Vec<&str> = text.lines().filter(|l| l.starts_with("tick ")).collect();
    assert_eq!(
        ticks,
        ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "tick 6"],
        "{text}"
    );
    assert!(
        followed >= Duration::from_secs(2),
        "logs -f returned after {followed:?}: it did not follow"
    );

    let run = ended(&s, "echo", Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Success);
    let ds = run.logical_date.format("%Y-%m-%d").to_string();
    assert!(run.logical_date >= started - chrono::Duration::seconds(5));
    let expected = format!("ds={ds} params={{\"who\":\"real\"}}\n");

    // the API: the log as the kubelet serves it, exactly what the container printed
    let path = format!(
        "/api/v1/namespaces/{}/runs/{id}/tasks/show/tries/1/log",
        s.ns.name
    );
    let (code, body) = op.api(&path, Some(&token)).await.expect("an answer");
    assert_eq!((code, body.as_str()), (200, expected.as_str()));
    // the CLI, through the API
    let out = cli_logs("show", false);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    // the Pods go after --pod-retention; the kept end of the log is the real output
    let key = TryKey {
        run_id: run.id,
        task_name: "show".into(),
        try_number: 1,
    };
    let kept = eventually(Duration::from_secs(30), "show's log kept", || {
        let (s, key) = (&s, key.clone());
        async move { s.store.log(&key).await.ok().flatten() }
    })
    .await;
    assert_eq!(kept.text, expected);
    eventually(Duration::from_secs(60), "the Pods deleted", || async {
        s.pods("echo").is_empty().then_some(())
    })
    .await;
    let (code, body) = op.api(&path, Some(&token)).await.expect("an answer");
    assert_eq!((code, body.as_str()), (200, expected.as_str()));
    let out = cli_logs("count", false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("tick 1\n") && text.ends_with("tick 6\n"),
        "{text}"
    );
    drop(op);
}

#[tokio::test]
async fn a_failing_container_fails_its_try_with_its_exit_code_and_words_then_is_retried() {
    let s = setup_on_real_node("real-exit").await;
    let spec = format!(
        "  tasks:\n{}",
        task(
            "fail",
            "    retries: 1\n    retryDelaySeconds: 1\n",
            "echo working; echo cannot reach the warehouse >&2; exit 3"
        )
    );
    s.apply(&dag_with_spec("failing", &spec));
    let _op = s.operator(&[]);
    trigger(&s, "failing", None);
    let run = ended(&s, "failing", Duration::from_secs(90)).await;
    assert_eq!(run.state, RunState::Failed);
    let tries = tries(&s, &run, "fail").await;
    assert_eq!(tries.len(), 2, "{tries:?}");
    for t in &tries {
        assert_eq!(t.state, TaskState::Failed, "{t:?}");
        assert_eq!(t.exit_code, Some(3), "{t:?}");
        // the container's reason and the end of its log (FallbackToLogsOnError)
        let message = t.message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("Error: ") && message.contains("cannot reach the warehouse"),
            "{message}"
        );
        let p = pod(&s, t.pod_name.as_deref().expect("a Pod"));
        assert_eq!(p["status"]["phase"], "Failed");
        assert_eq!(container_state(&p)["terminated"]["exitCode"], 3);
    }
    assert!(!s.events("TaskRetrying").is_empty(), "a TaskRetrying event");
    assert!(!s.events("RunFailed").is_empty(), "a RunFailed event");
}

#[tokio::test]
async fn a_task_over_its_memory_limit_is_oom_killed() {
    let s = setup_on_real_node("real-oom").await;
    // busybox tail keeps every byte of a line: /dev/zero is one endless line
    let spec = format!(
        "  tasks:\n  - name: greedy\n    container:\n      image: {TASK_IMAGE}\n      command: [sh, -c, 'tail /dev/zero']\n      resources:\n        limits: {{memory: 24Mi}}\n"
    );
    s.apply(&dag_with_spec("greedy", &spec));
    let _op = s.operator(&[]);
    trigger(&s, "greedy", None);
    let run = ended(&s, "greedy", Duration::from_secs(90)).await;
    assert_eq!(run.state, RunState::Failed);
    let t = &tries(&s, &run, "greedy").await[0];
    assert_eq!(t.message.as_deref(), Some("OOMKilled"), "{t:?}");
    assert_eq!(t.exit_code, Some(137), "{t:?}");
}

#[tokio::test]
async fn a_timed_out_task_gets_sigterm_and_a_timed_out_run_loses_its_real_pods() {
    let s = setup_on_real_node("real-timeout").await;
    // the container says on the node's disk that it got SIGTERM
    let signals = std::env::temp_dir().join(format!("dagop-e2e-signals-{}", s.ns.name));
    std::fs::create_dir_all(&signals).expect("a directory");
    let spec = format!(
        "  tasks:\n  - name: slow\n    timeoutSeconds: 4\n    container:\n      image: {TASK_IMAGE}\n      command: [sh, -c, 'trap \"echo got SIGTERM > /signals/slow; exit 143\" TERM; echo started; sleep 300 & wait']\n      volumeMounts: [{{name: signals, mountPath: /signals}}]\n  podTemplate:\n    volumes: [{{name: signals, hostPath: {{path: {}, type: Directory}}}}]\n",
        signals.display()
    );
    s.apply(&dag_with_spec("slow", &spec));
    let whole = format!(
        "  runTimeoutSeconds: 5\n  tasks:\n{}",
        task("long", "", "sleep 300")
    );
    s.apply(&dag_with_spec("overrun", &whole));
    let _op = s.operator(&[]);
    trigger(&s, "slow", None);
    trigger(&s, "overrun", None);

    let run = ended(&s, "slow", Duration::from_secs(90)).await;
    assert_eq!(run.state, RunState::Failed);
    let t = &tries(&s, &run, "slow").await[0];
    assert_eq!(t.message.as_deref(), Some("timed out after 4s"), "{t:?}");
    let said = eventually(
        Duration::from_secs(60),
        "SIGTERM seen by the container",
        || {
            let said = std::fs::read_to_string(signals.join("slow")).ok();
            async move { said }
        },
    )
    .await;
    assert_eq!(said, "got SIGTERM\n");

    // the run's deadline: its Pod is deleted and its containers leave the node
    let pod = s.pod_of("overrun", "long", 1).await;
    let run = ended(&s, "overrun", Duration::from_secs(90)).await;
    assert_eq!(run.state, RunState::Failed);
    assert!(!s.events("RunTimedOut").is_empty(), "a RunTimedOut event");
    eventually(
        Duration::from_secs(90),
        "the overrun Pod gone from the node",
        || {
            let gone =
                s.pod_gone("overrun", &pod) && containers_of_pod(&s.ns.name, &pod).is_empty();
            async move { gone.then_some(()) }
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&signals);
}

#[tokio::test]
async fn a_missing_image_or_command_fails_the_try_with_the_runtimes_reason() {
    let s = setup_on_real_node("real-missing").await;
    // registry.invalid answers from a closed loopback port on the plane's node (no traffic
    // leaves the machine): the pull fails at once and keeps failing
    s.apply(&dag_with_spec(
        "no-image",
        "  tasks:\n  - name: pull\n    container: {image: 'registry.invalid/e2e/missing:1'}\n",
    ));
    s.apply(&dag_with_spec(
        "no-command",
        &format!(
            "  tasks:\n  - name: exec\n    container: {{image: '{TASK_IMAGE}', command: [/no/such/program]}}\n"
        ),
    ));
    let _op = s.operator(&["--pod-pending-timeout", "15s"]);
    let t0 = Instant::now();
    trigger(&s, "no-image", None);
    trigger(&s, "no-command", None);

    let run = ended(&s, "no-command", Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Failed);
    let t = &tries(&s, &run, "exec").await[0];
    let message = t.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("StartError: ") && message.contains("/no/such/program"),
        "{t:?}"
    );

    let run = ended(&s, "no-image", Duration::from_secs(90)).await;
    let waited = t0.elapsed();
    assert_eq!(run.state, RunState::Failed);
    let t = &tries(&s, &run, "pull").await[0];
    let message = t.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("pod stuck pending: ErrImagePull: ")
            || message.starts_with("pod stuck pending: ImagePullBackOff: "),
        "{t:?}"
    );
    assert!(
        waited >= Duration::from_secs(15),
        "failed after {waited:?}, before --pod-pending-timeout"
    );
    // the stuck Pod is deleted
    let pod = t.pod_name.clone().expect("a Pod");
    eventually(Duration::from_secs(30), "the stuck Pod deleted", || {
        let gone = s.pod_gone("no-image", &pod);
        async move { gone.then_some(()) }
    })
    .await;
}

/// The containers' running intervals (the kubelet's startedAt..finishedAt) of a run's Pods.
fn intervals(s: &Setup, dag: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>, String)> {
    let mut all: Vec<_> = s
        .pods(dag)
        .iter()
        .map(|p| {
            let t = &container_state(p)["terminated"];
            (
                time(&t["startedAt"]),
                time(&t["finishedAt"]),
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

fn assert_one_at_a_time(all: &[(DateTime<Utc>, DateTime<Utc>, String)]) {
    for pair in all.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two containers ran at once: {} until {}, {} from {}",
            pair[0].2,
            pair[0].1,
            pair[1].2,
            pair[1].0
        );
    }
}

#[tokio::test]
async fn a_pool_of_one_and_max_running_tasks_hold_with_real_containers() {
    let s = setup_on_real_node("real-slots").await;
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: one}\nspec: {slots: 1}\n",
    );
    let three = |extra: &str| {
        format!(
            "  tasks:\n{}{}{}",
            task("a", extra, "sleep 2"),
            task("b", extra, "sleep 2"),
            task("c", extra, "sleep 2")
        )
    };
    s.apply(&dag_with_spec("pooled", &three("    pool: one\n")));
    let op = s.operator(&[]);
    trigger(&s, "pooled", None);
    let run = ended(&s, "pooled", Duration::from_secs(120)).await;
    assert_eq!(run.state, RunState::Success);
    let pooled = intervals(&s, "pooled");
    assert_eq!(pooled.len(), 3);
    assert_one_at_a_time(&pooled);
    drop(op);

    // the same without a Pool, under --max-running-tasks 1
    s.apply(&dag_with_spec("capped", &three("")));
    let _op: Operator = s.operator(&["--max-running-tasks", "1"]);
    trigger(&s, "capped", None);
    let run = ended(&s, "capped", Duration::from_secs(120)).await;
    assert_eq!(run.state, RunState::Success);
    let capped = intervals(&s, "capped");
    assert_eq!(capped.len(), 3);
    assert_one_at_a_time(&capped);
}

/// Params are data (issue 28, finding 4): a trigger's `$(DB_PASSWORD)` reaches a real
/// container as those very characters, though the task takes `DB_PASSWORD` from a Secret
/// (`envFrom`) and the kubelet expands `$(VAR)` in the values it is given.
#[tokio::test]
async fn params_reach_a_real_container_as_written_never_expanded_from_a_secret() {
    let s = setup_on_real_node("real-params").await;
    let token = reader(&s);
    s.ns.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=DB_PASSWORD=hunter2-from-the-secret",
        ],
        None,
    );
    let spec = format!(
        "  tasks:\n  - name: show\n    container:\n      image: {TASK_IMAGE}\n      envFrom: [{{secretRef: {{name: db}}}}]\n      command: [sh, -c, {}]\n",
        serde_json::to_string(r#"echo "params=$DAG_RUN_PARAMS""#).expect("a JSON string")
    );
    s.apply(&dag_with_spec("leak", &spec));
    let op = s.operator(&[]);
    trigger(&s, "leak", Some(r#"{"x":"$(DB_PASSWORD)"}"#));
    let run = ended(&s, "leak", Duration::from_secs(90)).await;
    assert_eq!(run.state, RunState::Success);
    let path = format!(
        "/api/v1/namespaces/{}/runs/{}/tasks/show/tries/1/log",
        s.ns.name, run.id
    );
    let (code, body) = op.api(&path, Some(&token)).await.expect("an answer");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "params={\"x\":\"$(DB_PASSWORD)\"}\n");
    assert!(
        !body.contains("hunter2"),
        "the Secret's value leaked: {body}"
    );
}
