//! The HTTP API (issue 16), authenticated by TokenReview and authorized by
//! SubjectAccessReview on the local plane: a ServiceAccount allowed `get dags` in one namespace
//! reads that namespace's DAGs, runs and tries, and nothing else.

use std::time::Duration;

use dag_operator_e2e::rights::{ACT, LOGS, READ};
use dag_operator_e2e::scenario::{dag_with_spec, dag_yaml, setup};
use dag_operator_e2e::{TestNamespace, eventually};
use serde_json::{Value, json};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn a_viewer_reads_its_namespace_and_nothing_else() {
    let s = setup("api-a").await;
    let other = TestNamespace::new("api-b");
    let a = s.ns.name.clone();
    s.ns.kubectl_ok(&["create", "serviceaccount", "viewer"], None);
    s.ns.kubectl_ok(
        &[
            "create",
            "role",
            "dag-viewer",
            "--verb=get,list,watch",
            "--resource=dags.dagoperator.io",
        ],
        None,
    );
    s.ns.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "viewer",
            "--role=dag-viewer",
            &format!("--serviceaccount={a}:viewer"),
        ],
        None,
    );
    let token = s.ns.kubectl_ok(&["create", "token", "viewer"], None);
    let token = token.trim();
    s.apply(&dag_yaml("etl", "  maxActiveRuns: 5"));
    other.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&dag_yaml("secret-etl", "  maxActiveRuns: 5")),
    );
    let op = s.operator(&[]);
    s.cli(&[
        "trigger",
        "etl",
        "-n",
        &a,
        "--logical-date",
        "2024-03-01T00:00:00Z",
    ]);
    let run = s
        .runs_until("etl", "the triggered run", |r| !r.is_empty())
        .await
        .remove(0);

    // no token, a bad token: 401
    let listing = format!("/api/v1/namespaces/{a}/dags");
    let (code, _) = eventually(Duration::from_secs(30), "the API answers", || {
        let (op, path) = (&op, listing.clone());
        async move { op.api(&path, None).await }
    })
    .await;
    assert_eq!(code, 401);
    assert_eq!(
        op.api(&listing, Some("not-a-token")).await.map(|r| r.0),
        Some(401)
    );

    // its namespace: the DAG with its runs, the runs with their tasks, a run with its tries
    let dags = eventually(Duration::from_secs(30), "the DAG listed", || {
        let (op, path) = (&op, listing.clone());
        async move {
            let (code, body) = op.api(&path, Some(token)).await?;
            assert_eq!(code, 200, "{body}");
            let v = json(&body);
            (v["items"].as_array()?.iter().any(|d| d["name"] == "etl")).then_some(v)
        }
    })
    .await;
    assert_eq!(dags["items"][0]["namespace"], a.as_str());
    let (code, body) = op
        .api(
            &format!("/api/v1/namespaces/{a}/dags/etl/runs?limit=10"),
            Some(token),
        )
        .await
        .expect("runs");
    assert_eq!(code, 200, "{body}");
    let runs = json(&body);
    assert_eq!(runs["items"][0]["id"], run.id.to_string());
    assert_eq!(runs["items"][0]["tasks"][0]["task"], "a", "{runs}");
    let (code, body) = op
        .api(
            &format!("/api/v1/namespaces/{a}/runs/{}", run.id),
            Some(token),
        )
        .await
        .expect("run");
    assert_eq!(code, 200, "{body}");
    let one = json(&body);
    assert_eq!(one["logicalDate"], "2024-03-01T00:00:00+00:00");
    assert!(
        one["tries"].as_array().is_some_and(|t| !t.is_empty()),
        "{one}"
    );

    // the UI's pages, on the same token
    let (code, page) = op.api("/", Some(token)).await.expect("index");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains(&format!("/ui/namespaces/{a}/dags/etl")),
        "{page}"
    );
    assert!(!page.contains("secret-etl"), "{page}");
    let (code, page) = op
        .api(&format!("/ui/namespaces/{a}/dags/etl"), Some(token))
        .await
        .expect("grid");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("data-state="), "the grid has cells: {page}");
    assert!(page.contains(&run.id.to_string()), "{page}");
    let (code, page) = op
        .api(&format!("/ui/namespaces/{a}/runs/{}", run.id), Some(token))
        .await
        .expect("run page");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("id=\"task-a\""), "the try is listed: {page}");

    // another namespace: 403; the cluster-wide listing holds only its own namespace
    let (code, body) = op
        .api(
            &format!("/api/v1/namespaces/{}/dags", other.name),
            Some(token),
        )
        .await
        .expect("answer");
    assert_eq!(code, 403, "{body}");
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot get dags")
    );
    let (code, body) = op.api("/api/v1/dags", Some(token)).await.expect("answer");
    assert_eq!(code, 200, "{body}");
    let all = json(&body);
    let namespaces: Vec<&str> = all["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|d| d["namespace"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(namespaces.iter().all(|ns| *ns == a), "{namespaces:?}");
    assert!(!body.contains("secret-etl"));
    // a run of its namespace asked for under another: not found
    let (code, _) = op
        .api(
            &format!("/api/v1/namespaces/{}/runs/{}", other.name, run.id),
            Some(token),
        )
        .await
        .expect("answer");
    assert_eq!(code, 403);
}

#[tokio::test]
async fn a_runner_triggers_cancels_and_reruns_and_a_viewer_may_not() {
    let s = setup("api-act").await;
    let a = s.ns.name.clone();
    let viewer = s.ns.account("viewer", &[READ, LOGS]);
    let runner = s.ns.account("runner", &[READ, ACT]);
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: one}\nspec:\n  slots: 1\n",
    );
    s.apply(&dag_with_spec(
        "held",
        "  tasks:\n  - {name: a, pool: one, container: {image: e2e.local/hold}}\n",
    ));
    s.apply(&dag_with_spec(
        "partial",
        "  tasks:\n  - {name: a, container: {image: busybox}}\n  - {name: b, container: {image: e2e.local/hold}}\n  - {name: c, dependsOn: [b], container: {image: busybox}}\n",
    ));
    let op = s.operator(&[]);

    // trigger: the runner may, the viewer may not, nobody without a token
    let trigger = format!("/api/v1/namespaces/{a}/dags/held/runs");
    let body = r#"{"params": {"note": "by the API"}}"#;
    let (code, _) = eventually(Duration::from_secs(30), "the API answers", || {
        let (op, path) = (&op, trigger.clone());
        async move { op.api_post(&path, None, body).await }
    })
    .await;
    assert_eq!(code, 401);
    let (code, answer) = op
        .api_post(&trigger, Some(&viewer), body)
        .await
        .expect("answer");
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = eventually(
        Duration::from_secs(30),
        "the DAG in the API's cache",
        || {
            let (op, path, token) = (&op, trigger.clone(), runner.clone());
            async move {
                let (code, answer) = op.api_post(&path, Some(&token), body).await?;
                (code != 404).then_some((code, answer))
            }
        },
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(json(&answer)["state"], "done");
    let run = s
        .runs_until("held", "the triggered run", |r| !r.is_empty())
        .await
        .remove(0);
    assert_eq!(run.params["note"], "by the API");
    let pod = s.pod_of_run(&run).await;
    let pool_used =
        |used: i64| {
            let s = &s;
            async move {
                eventually(Duration::from_secs(30), &format!("pool one used {used}"), || {
                let v = s.ns.kubectl_ok(&["get", "pool", "one", "-o", "json"], None);
                let v = json(&v);
                async move { (v["status"]["usedSlots"].as_i64() == Some(used)).then_some(()) }
            })
            .await
            }
        };
    pool_used(1).await;

    // cancel: the viewer is refused; the runner's cancel deletes the Pod and frees the slot
    let actions = format!("/api/v1/namespaces/{a}/runs/{}/actions", run.id);
    let cancel = r#"{"action": "cancel"}"#;
    let (code, answer) = op
        .api_post(&actions, Some(&viewer), cancel)
        .await
        .expect("answer");
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = op
        .api_post(&actions, Some(&runner), cancel)
        .await
        .expect("answer");
    assert_eq!(code, 202, "{answer}");
    let asked = json(&answer)["id"].as_i64().expect("an action id");
    eventually(Duration::from_secs(30), "the run cancelled", || async {
        let runs = s.runs("held").await;
        (runs[0].state == dag_operator::store::RunState::Cancelled).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the Pod deleted", || {
        let gone = s.pod_gone("held", &pod);
        async move { gone.then_some(()) }
    })
    .await;
    pool_used(0).await;
    let (code, answer) = op
        .api(
            &format!("/api/v1/namespaces/{a}/actions/{asked}"),
            Some(&viewer),
        )
        .await
        .expect("answer");
    assert_eq!(code, 200, "{answer}");
    let done = json(&answer);
    assert_eq!(done["state"], "done", "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap_or_default()
            .contains("system:serviceaccount:"),
        "who did it is recorded: {done}"
    );
    assert!(!s.events("RunCancelled").is_empty(), "an event says so");

    // re-run: b fails, c is upstream-failed; the re-run starts b again, not a
    let (code, answer) = op
        .api_post(
            &format!("/api/v1/namespaces/{a}/dags/partial/runs"),
            Some(&runner),
            "{}",
        )
        .await
        .expect("answer");
    assert_eq!(code, 201, "{answer}");
    let run = s
        .runs_until("partial", "the triggered run", |r| !r.is_empty())
        .await
        .remove(0);
    let b1 = s.pod_of("partial", "b", 1).await;
    s.pod_outcome(&b1, "fail");
    eventually(Duration::from_secs(60), "the run failed", || async {
        let runs = s.runs("partial").await;
        (runs[0].state == dag_operator::store::RunState::Failed).then_some(())
    })
    .await;
    let actions = format!("/api/v1/namespaces/{a}/runs/{}/actions", run.id);
    let (code, answer) = op
        .api_post(&actions, Some(&runner), r#"{"action": "rerun"}"#)
        .await
        .expect("answer");
    assert_eq!(code, 202, "{answer}");
    let b2 = s.pod_of("partial", "b", 2).await;
    s.pod_outcome(&b2, "succeed");
    eventually(Duration::from_secs(60), "the re-run succeeded", || async {
        let runs = s.runs("partial").await;
        (runs[0].state == dag_operator::store::RunState::Success).then_some(())
    })
    .await;
    let tries = s.tasks(&run).await;
    let of = |task: &str| tries.iter().filter(|t| t.task_name == task).count();
    assert_eq!((of("a"), of("b"), of("c")), (1, 2, 2), "{tries:?}");

    // the CLI, through the API with a token and no database credentials
    let server = format!("http://127.0.0.1:{}", op.ui_port);
    let id = run.id.to_string();
    let as_user = |token: &str, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-n", &a, "--server", &server, "--token", token]);
        s.cli_output(&all)
    };
    let out = as_user(&viewer, &["mark", &id, "--state", "failed"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("cannot update dags/runs"),
        "{err}"
    );
    let out = as_user(&runner, &["mark", &id, "--state", "failed"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("marked failed by system:serviceaccount:"),
        "{said}"
    );
    assert_eq!(
        s.runs("partial").await[0].state,
        dag_operator::store::RunState::Failed
    );
    let out = as_user(&runner, &["cancel", &id]);
    assert!(!out.status.success(), "a finished run cannot be cancelled");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("not running"),
        "{err}"
    );
    // logs: kwok serves every Pod's log (e2e/plane); the CLI reads the latest try's
    let out = as_user(&viewer, &["logs", &id, "b"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("task finished"), "{log}");
    // the end of each ended try's log is kept; once the Pod is gone, that is what is served
    let b1_try = dag_operator::store::TryKey {
        run_id: run.id,
        task_name: "b".into(),
        try_number: 1,
    };
    let kept = eventually(Duration::from_secs(30), "b's first log kept", || {
        let (s, key) = (&s, b1_try.clone());
        async move { s.store.log(&key).await.ok().flatten() }
    })
    .await;
    assert!(
        kept.text.contains("task finished") && kept.complete,
        "{kept:?}"
    );
    s.ns.kubectl_ok(&["delete", "pod", &b1], None);
    let path = format!("/api/v1/namespaces/{a}/runs/{id}/tasks/b/tries/1/log");
    let (code, body) = eventually(Duration::from_secs(30), "the kept log served", || {
        let (op, path, token) = (&op, path.clone(), viewer.clone());
        async move {
            let (code, body) = op.api(&path, Some(&token)).await?;
            (code != 200 || body.contains("task finished")).then_some((code, body))
        }
    })
    .await;
    assert_eq!(code, 200, "{body}");
    let out = as_user(&viewer, &["logs", &id, "b", "--try", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the end of the log the operator kept"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(op);
}

#[tokio::test]
async fn backfills_and_pools_show_progress_and_slots_to_who_may_list_them() {
    let s = setup("api-bf").await;
    let a = s.ns.name.clone();
    let dags_only = s.ns.account("dags-only", &[READ]);
    let viewer = s.ns.account(
        "viewer",
        &[&[
            "--verb=get,list,watch",
            "--resource=dags.dagoperator.io,backfills.dagoperator.io,pools.dagoperator.io",
        ]],
    );
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: db}\nspec:\n  slots: 3\n",
    );
    s.apply(&dag_with_spec(
        "daily",
        "  schedule: '0 3 * * *'\n  tasks:\n  - {name: load, pool: db, container: {image: e2e.local/hold}}\n",
    ));
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Backfill\nmetadata: {name: november}\nspec:\n  dagRef: {name: daily}\n  start: 2026-11-01T00:00:00Z\n  end: 2026-11-06T00:00:00Z\n  concurrency: 2\n",
    );
    let op = s.operator(&[]);
    let backfills = format!("/api/v1/namespaces/{a}/backfills");
    let listed = eventually(Duration::from_secs(60), "two backfill runs active", || {
        let (op, path, token) = (&op, backfills.clone(), viewer.clone());
        async move {
            let (code, body) = op.api(&path, Some(&token)).await?;
            assert_eq!(code, 200, "{body}");
            let v = json(&body);
            (v["items"][0]["activeRuns"] == 2).then_some(v)
        }
    })
    .await;
    let item = &listed["items"][0];
    assert_eq!(
        (
            &item["name"],
            &item["dag"],
            &item["phase"],
            &item["totalRuns"]
        ),
        (
            &json!("november"),
            &json!("daily"),
            &json!("Running"),
            &json!(5)
        ),
        "{listed}"
    );
    let pools = format!("/api/v1/namespaces/{a}/pools");
    let pool = eventually(Duration::from_secs(30), "the pool's usage", || {
        let (op, path, token) = (&op, pools.clone(), viewer.clone());
        async move {
            let (_, body) = op.api(&path, Some(&token)).await?;
            let v = json(&body);
            (v["items"][0]["usedSlots"] == 2).then_some(v)
        }
    })
    .await;
    assert_eq!(pool["items"][0]["openSlots"], 1, "{pool}");
    assert_eq!(pool["items"][0]["queuedTasks"], 0, "{pool}");
    // the pages: a progress bar that refreshes while the Backfill runs; the Pool's slots
    let (code, page) = op
        .api(&format!("/ui/namespaces/{a}/backfills"), Some(&viewer))
        .await
        .expect("page");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("<progress") && page.contains("http-equiv=\"refresh\""),
        "{page}"
    );
    let (code, page) = op
        .api(&format!("/ui/namespaces/{a}/pools"), Some(&viewer))
        .await
        .expect("page");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("id=\"pools\"") && page.contains(">db<"),
        "{page}"
    );
    // who may read DAGs but not list Backfills or Pools gets 403
    for path in [&backfills, &pools] {
        let (code, body) = op.api(path, Some(&dags_only)).await.expect("answer");
        assert_eq!(code, 403, "{body}");
    }
    drop(op);
}

/// `--ui-token-audience` (issue 28, finding 6): the TokenReview asks for the audience, and a
/// token minted for the API server — valid, but not for that audience — is refused.
#[tokio::test]
async fn a_required_audience_refuses_tokens_minted_for_the_api_server() {
    let s = setup("api-aud").await;
    s.ns.kubectl_ok(&["create", "serviceaccount", "viewer"], None);
    let plain = s.ns.kubectl_ok(&["create", "token", "viewer"], None);
    let minted = s.ns.kubectl_ok(
        &["create", "token", "viewer", "--audience", "dag-operator-ui"],
        None,
    );
    let op = s.operator(&["--ui-token-audience", "dag-operator-ui"]);
    let (code, body) = eventually(Duration::from_secs(30), "the API answers", || {
        let op = &op;
        let minted = minted.trim().to_string();
        async move { op.api("/api/v1/dags", Some(&minted)).await }
    })
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = op
        .api("/api/v1/dags", Some(plain.trim()))
        .await
        .expect("an answer");
    assert_eq!(code, 401, "{body}");
    assert_eq!(json(&body)["kind"], "Status", "{body}");
    // the login page says how to mint a token this UI takes
    let (code, page) = op.api("/login", None).await.expect("an answer");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("kubectl create token &lt;service-account&gt; --audience dag-operator-ui"),
        "{page}"
    );
}

/// `curl -sS -i --cacert <plane CA> <args>`: its output, or `None` when it failed.
fn curl(args: &[&str]) -> Option<String> {
    let ca = dag_operator_e2e::plane().ca.to_string_lossy().into_owned();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert", &ca])
        .args(args)
        .output()
        .expect("curl runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `--ui-tls-cert-file`/`--ui-tls-key-file` (issue 28, finding 6): the UI and API speak HTTPS
/// only, with every session cookie `Secure`.
#[tokio::test]
async fn the_ui_speaks_https_when_given_a_certificate() {
    let s = setup("api-tls").await;
    s.ns.kubectl_ok(&["create", "serviceaccount", "viewer"], None);
    let token = s.ns.kubectl_ok(&["create", "token", "viewer"], None);
    // the plane's certificate for 127.0.0.1 and localhost, from the plane's CA
    let dir = dag_operator_e2e::plane()
        .ca
        .parent()
        .expect("the CA's directory")
        .to_path_buf();
    let cert = dir.join("postgres.crt").to_string_lossy().into_owned();
    let key = dir.join("postgres.key").to_string_lossy().into_owned();
    let op = s.operator(&["--ui-tls-cert-file", &cert, "--ui-tls-key-file", &key]);
    let https = format!("https://127.0.0.1:{}/login", op.ui_port);
    let page = eventually(Duration::from_secs(30), "the UI answers over HTTPS", || {
        let https = https.clone();
        async move { curl(&[&https]) }
    })
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("content-security-policy: "), "{page}");
    let login = curl(&[
        "--data-urlencode",
        &format!("token={}", token.trim()),
        &https,
    ])
    .expect("a login");
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {login}"));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // plain HTTP to the same port gets no page
    let plain = curl(&[&format!("http://127.0.0.1:{}/login", op.ui_port)]);
    assert!(
        plain
            .as_deref()
            .is_none_or(|p| !p.starts_with("HTTP/1.1 200")),
        "{plain:?}"
    );
}
