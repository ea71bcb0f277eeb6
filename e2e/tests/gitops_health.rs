//! The Argo CD health checks of docs/gitops/ (issue 15), run with Lua 5.4 against the objects
//! the operator wrote on the local plane.

use std::process::Command;

use dag_operator_e2e::scenario::{Setup, dag_yaml, dag_yaml_with_image, setup};
use dag_operator_e2e::{eventually, plane};
use serde_json::Value;

/// A JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(",")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}]={}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// (status, message) of the health script for `kind` run on `obj`.
fn health(kind: &str, obj: &Value) -> (String, String) {
    let script = std::fs::read_to_string(
        plane()
            .repo
            .join(format!("docs/gitops/argocd-health-{kind}.lua")),
    )
    .expect("the script exists");
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(obj)
    );
    let out = Command::new("lua5.4")
        .args(["-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(program.as_bytes())?;
            }
            child.wait_with_output()
        })
        .expect("lua5.4 runs (e2e/plane installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, message) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.to_string(), message.to_string())
}

fn get(s: &Setup, kind: &str, name: &str) -> Value {
    serde_json::from_str(&s.ns.kubectl_ok(&["get", kind, name, "-o", "json"], None))
        .expect("kubectl json")
}

/// Polls until the health script says `want` of the object.
async fn becomes(s: &Setup, kind: &str, name: &str, want: &str) -> String {
    let what = format!("{kind}/{name} {want}");
    eventually(std::time::Duration::from_secs(60), &what, || {
        let (status, message) = health(kind, &get(s, kind, name));
        async move { (status == want).then_some(message) }
    })
    .await
}

#[test]
fn json_becomes_a_lua_table() {
    let v: Value = serde_json::json!({"a": [1, "x\"y"], "b": null, "c": true});
    assert_eq!(lua(&v), r#"{["a"]={1,"x\"y"},["b"]=nil,["c"]=true}"#);
}

#[tokio::test]
async fn argo_cd_reads_the_health_of_every_kind() {
    let s = setup("gitops").await;
    s.apply(&dag_yaml("nightly", "  schedule: '30 2 * * *'"));
    s.apply(&dag_yaml("typo", "  schedule: '61 * * * *'"));
    s.apply(&dag_yaml(
        "paused",
        "  schedule: '30 2 * * *'\n  suspend: true",
    ));
    s.apply(&dag_yaml_with_image(
        "broken",
        "  maxActiveRuns: 5",
        "e2e.local/fail",
    ));
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: db}\nspec: {slots: 2}\n",
    );
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Backfill\nmetadata: {name: done}\nspec:\n  dagRef: {name: nightly}\n  start: 2024-01-01T00:00:00Z\n  end: 2024-01-03T00:00:00Z\n",
    );
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Backfill\nmetadata: {name: orphan}\nspec:\n  dagRef: {name: missing}\n  start: 2024-01-01T00:00:00Z\n  end: 2024-01-03T00:00:00Z\n",
    );
    let _op = s.operator(&[]);
    s.cli(&[
        "trigger",
        "broken",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-05-01T00:00:00Z",
    ]);

    let m = becomes(&s, "dag", "nightly", "Healthy").await;
    assert!(m.contains("next run at"), "{m}");
    let m = becomes(&s, "dag", "typo", "Degraded").await;
    assert!(m.starts_with("InvalidSchedule"), "{m}");
    becomes(&s, "dag", "paused", "Suspended").await;
    let m = becomes(&s, "dag", "broken", "Degraded").await;
    assert!(m.contains("failed"), "{m}");
    becomes(&s, "pool", "db", "Healthy").await;
    becomes(&s, "backfill", "done", "Healthy").await;
    becomes(&s, "backfill", "orphan", "Degraded").await;

    // a new generation not observed yet is Progressing
    let mut dag = get(&s, "dag", "nightly");
    dag["metadata"]["generation"] = serde_json::json!(99);
    assert_eq!(health("dag", &dag).0, "Progressing");
}
