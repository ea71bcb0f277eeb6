//! The chart's alerts and dashboard (issue 15): the rules pass `promtool test rules`
//! (promtool built from github.com/prometheus/prometheus by `e2e/promtool/run`), and every
//! metric the rules and the dashboard name is exported by a running operator's `/metrics`, so
//! the two can never drift apart.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use dag_operator_e2e::chart::{render, text};
use dag_operator_e2e::scenario::{dag_yaml, setup};
use dag_operator_e2e::{eventually, plane};
use serde_json::Value;

const ENABLED: [&str; 2] = [
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
];

/// The PrometheusRule's rule groups and the dashboard JSON, as the chart renders them.
fn rendered() -> (Value, Value) {
    let objects = render(&ENABLED);
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule is rendered");
    let config_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["dag-operator.json"].is_string())
        .expect("the dashboard ConfigMap is rendered");
    assert_eq!(
        config_map["metadata"]["labels"]["grafana_dashboard"], "1",
        "Grafana's sidecar finds it by its label"
    );
    let dashboard: Value = serde_json::from_str(
        config_map["data"]["dag-operator.json"]
            .as_str()
            .unwrap_or_default(),
    )
    .expect("the dashboard is JSON");
    (rule["spec"].clone(), dashboard)
}

fn promtool(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(plane().repo.join("e2e/promtool/run"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("e2e/promtool/run runs");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{all}");
    all
}

#[test]
fn the_rules_pass_their_promtool_unit_tests() {
    let (spec, _) = rendered();
    let dir = std::env::temp_dir().join(format!("dagop-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rules = serde_yaml::to_string(&spec).expect("rules as YAML");
    std::fs::write(dir.join("alerts.rules.yaml"), rules).expect("write rules");
    std::fs::copy(
        plane().repo.join("e2e/promtool/alerts_test.yaml"),
        dir.join("alerts_test.yaml"),
    )
    .expect("copy the tests");
    let checked = promtool(&dir, &["check", "rules", "alerts.rules.yaml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // every alert has a test
    let names: BTreeSet<String> = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yaml")).expect("read tests");
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no promtool test for {name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `dagop_*` names in a text (PromQL expressions, the dashboard's JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("dagop_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every sample name the exposition can hold: each `# TYPE` family with its suffixes.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if let Some(name) = line.split(['{', ' ']).next()
            && name.starts_with("dagop_")
        {
            out.insert(name.to_string());
        }
    }
    out
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let (spec, dashboard) = rendered();
    let mut used = metric_names(&serde_json::to_string(&spec).unwrap_or_default());
    used.extend(metric_names(&dashboard.to_string()));
    assert!(used.len() >= 10, "names found: {used:?}");

    let s = setup("alert-names").await;
    s.apply(&dag_yaml(
        "tick",
        "  schedule: '* * * * * *'\n  maxActiveRuns: 10",
    ));
    let op = s.operator(&[]);
    s.runs_until("tick", "a run", |r| !r.is_empty()).await;
    let body = eventually(Duration::from_secs(30), "/metrics", || {
        let op = &op;
        async move { op.get("/metrics").await.map(|(_, body)| body) }
    })
    .await;
    let have = exported(&body);
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by the rules or the dashboard but not exported: {missing:?}"
    );
}
