//! The CLI's credentials (issue 29, item 7): `runs`, `logs` and `cancel` through the operator's
//! API (`DAGOP_SERVER`, no database credentials), with whatever kubeconfig a data engineer
//! has: a user whose token comes from an exec plugin (as on EKS, GKE, AKS and with OIDC), a
//! context chosen with `--context`, and a colon-separated `KUBECONFIG` of two files.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use dag_operator::store::{RunRow, RunState};
use dag_operator_e2e::rights::{ACT, LOGS, READ};
use dag_operator_e2e::scenario::{Setup, dag_with_spec, setup};
use dag_operator_e2e::{eventually, plane};
use serde_json::json;

/// The plane's API server: its URL and CA (base64), from the plane's kubeconfig.
fn cluster() -> (String, String) {
    let text = std::fs::read_to_string(&plane().kubeconfig).expect("the plane's kubeconfig");
    let kc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    let c = &kc["clusters"][0]["cluster"];
    (
        c["server"].as_str().expect("server").to_string(),
        c["certificate-authority-data"]
            .as_str()
            .expect("CA data")
            .to_string(),
    )
}

/// Kubeconfigs (JSON is YAML) written under a directory of the test's own.
struct Files {
    dir: PathBuf,
    server: String,
    ca: String,
    plugin: PathBuf,
}

impl Files {
    /// With an exec plugin printing an ExecCredential of `token`.
    fn new(ns: &str, token: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dagop-{ns}"));
        std::fs::create_dir_all(&dir).expect("a directory");
        let plugin = dir.join("credential-plugin");
        let credential = json!({
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "status": {"token": token},
        });
        std::fs::write(
            &plugin,
            format!("#!/bin/sh\ncat <<'EOF'\n{credential}\nEOF\n"),
        )
        .expect("the plugin written");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))
            .expect("the plugin executable");
        let (server, ca) = cluster();
        Files {
            dir,
            server,
            ca,
            plugin,
        }
    }

    fn cluster(&self) -> serde_json::Value {
        json!({"name": "plane", "cluster": {"server": self.server, "certificate-authority-data": self.ca}})
    }

    /// The user whose token the exec plugin prints.
    fn exec_user(&self) -> serde_json::Value {
        json!({"name": "engineer", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": self.plugin,
            "interactiveMode": "Never",
        }}})
    }

    fn write(&self, name: &str, doc: serde_json::Value) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, doc.to_string()).expect("a kubeconfig written");
        path
    }
}

/// `dag-operator <args>` as a data engineer runs it: this KUBECONFIG, the API at `server`, and
/// no database credentials.
fn cli(kubeconfig: &str, server: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(dag_operator_e2e::operator::operator_binary());
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("DAGOP_SERVER", server);
    for var in [
        "DATABASE_URL",
        "DB_HOST",
        "DB_PORT",
        "DB_USER",
        "DB_PASSWORD",
        "DB_NAME",
        "DAGOP_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("dag-operator runs")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new run of `etl` at `day`, once its task `a` succeeded (its log is there) and `b` holds.
async fn started_run(s: &Setup, day: u32) -> RunRow {
    let date = format!("2024-03-{day:02}T00:00:00Z");
    s.cli(&["trigger", "etl", "-n", &s.ns.name, "--logical-date", &date]);
    let run = s
        .runs_until("etl", "the triggered run", |runs| {
            runs.iter()
                .any(|r| r.logical_date.to_rfc3339() == date_rfc(&date))
        })
        .await
        .into_iter()
        .find(|r| r.logical_date.to_rfc3339() == date_rfc(&date))
        .expect("the run");
    eventually(Duration::from_secs(60), "task a succeeded", || async {
        let tries = s.tasks(&run).await;
        tries
            .iter()
            .any(|t| t.task_name == "a" && t.state.as_str() == "success")
            .then_some(())
    })
    .await;
    run
}

fn date_rfc(text: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("a date")
        .with_timezone(&chrono::Utc)
        .to_rfc3339()
}

/// `runs`, `logs` and `cancel` of `run` with this kubeconfig and extra flags.
async fn runs_logs_cancel(s: &Setup, kubeconfig: &str, server: &str, extra: &[&str], run: &RunRow) {
    let id = run.id.to_string();
    let with = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(extra);
        cli(kubeconfig, server, &all)
    };
    // the namespace is the kubeconfig context's
    let listed = ok(&with(&["runs", "etl"]), "runs");
    assert!(listed.contains(&id), "{listed}");
    let log = ok(&with(&["logs", &id, "a"]), "logs");
    assert!(log.contains("task finished"), "{log}");
    let said = ok(&with(&["cancel", &id]), "cancel");
    assert!(said.contains(&id), "{said}");
    eventually(Duration::from_secs(60), "the run cancelled", || async {
        let runs = s.runs("etl").await;
        runs.iter()
            .any(|r| r.id == run.id && r.state == RunState::Cancelled)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_cli_takes_exec_plugins_contexts_and_merged_kubeconfigs() {
    let s = setup("cli-cred").await;
    let ns = s.ns.name.clone();
    let token = s.ns.account("engineer", &[READ, LOGS, ACT]);
    s.apply(&dag_with_spec(
        "etl",
        "  maxActiveRuns: 5\n  tasks:\n  - {name: a, container: {image: busybox}}\n  - {name: b, dependsOn: [a], container: {image: e2e.local/hold}}\n",
    ));
    let op = s.operator(&[]);
    let server = format!("http://127.0.0.1:{}", op.ui_port);
    let files = Files::new(&ns, &token);
    let path = |p: &Path| p.to_string_lossy().into_owned();

    // 1. a user whose token comes from an exec plugin
    let exec = files.write(
        "exec.json",
        json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [files.cluster()],
            "users": [files.exec_user()],
            "contexts": [{"name": "engineer", "context": {"cluster": "plane", "user": "engineer", "namespace": ns}}],
            "current-context": "engineer",
        }),
    );
    let run = started_run(&s, 1).await;
    eventually(Duration::from_secs(30), "the API knows the DAG", || async {
        cli(&path(&exec), &server, &["runs", "etl"])
            .status
            .success()
            .then_some(())
    })
    .await;
    runs_logs_cancel(&s, &path(&exec), &server, &[], &run).await;

    // 2. --context: the current context's user is refused, the named one is not
    let two = files.write(
        "two-contexts.json",
        json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [files.cluster()],
            "users": [files.exec_user(), {"name": "stale", "user": {"token": "not-a-valid-token"}}],
            "contexts": [
                {"name": "stale", "context": {"cluster": "plane", "user": "stale", "namespace": "default"}},
                {"name": "engineer", "context": {"cluster": "plane", "user": "engineer", "namespace": ns}},
            ],
            "current-context": "stale",
        }),
    );
    let run = started_run(&s, 2).await;
    let refused = cli(&path(&two), &server, &["runs", "etl", "-n", &ns]);
    assert!(
        !refused.status.success(),
        "the current context's user is not valid"
    );
    runs_logs_cancel(&s, &path(&two), &server, &["--context", "engineer"], &run).await;

    // 3. KUBECONFIG=a:b, the users and clusters in one file, the contexts in the other
    let users = files.write(
        "users.json",
        json!({"apiVersion": "v1", "kind": "Config",
               "clusters": [files.cluster()], "users": [files.exec_user()]}),
    );
    let contexts = files.write(
        "contexts.json",
        json!({"apiVersion": "v1", "kind": "Config",
               "contexts": [{"name": "engineer", "context": {"cluster": "plane", "user": "engineer", "namespace": ns}}],
               "current-context": "engineer"}),
    );
    let merged = format!("{}:{}", path(&users), path(&contexts));
    let run = started_run(&s, 3).await;
    runs_logs_cancel(&s, &merged, &server, &[], &run).await;

    // 4. `ui`: a one-time link on 127.0.0.1 logs the browser in with the exec plugin's token
    let mut ui = std::process::Command::new(dag_operator_e2e::operator::operator_binary())
        .args(["ui", "--no-browser", "--server", &server])
        .env("KUBECONFIG", path(&exec))
        .env_remove("DAGOP_SERVER")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("dag-operator ui runs");
    let mut said = String::new();
    {
        use std::io::BufRead;
        let stdout = ui.stdout.take().expect("its output");
        std::io::BufReader::new(stdout)
            .read_line(&mut said)
            .expect("the link printed");
    }
    let link = said
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no link in {said:?}"))
        .to_string();
    assert!(!link.contains(&token), "the token is not in the link");
    let answer = curl(&[&link]);
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(answer.contains(&format!("location: {server}/")), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie in {answer}"))
        .to_string();
    // the cookie is a session of the UI: its index answers, not its login page
    let index = curl(&["-H", &format!("cookie: {cookie}"), &format!("{server}/")]);
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    let status = ui.wait().expect("ui ends once its link was used");
    assert!(status.success());

    let _ = std::fs::remove_dir_all(&files.dir);
    drop(op);
}

/// `curl -sS -i <args>`: its output.
fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
