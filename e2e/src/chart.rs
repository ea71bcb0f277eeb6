//! The Helm chart as the tests use it: helm against the plane, `helm template` renders parsed.

use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

use crate::plane;

pub const CHART: &str = "charts/dag-operator";

pub fn chart() -> String {
    plane().repo.join(CHART).to_string_lossy().into_owned()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// helm against the plane (the plane's helm binary, its admin kubeconfig), run in the repo.
pub fn helm(args: &[&str]) -> Output {
    Command::new("helm")
        .args(args)
        .env("KUBECONFIG", &plane().kubeconfig)
        .env("PATH", &plane().path)
        .current_dir(&plane().repo)
        .output()
        .expect("helm runs")
}

pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every document of a multi-document YAML stream, as JSON values (empty documents skipped).
pub fn yaml_docs(stream: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(stream)
        .filter_map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).expect("valid YAML");
            (!v.is_null()).then(|| serde_json::to_value(v).expect("YAML maps to JSON"))
        })
        .collect()
}

/// `helm template` of the chart (release dag-operator, namespace dag-operator) with `sets`.
pub fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "dag-operator",
        chart.as_str(),
        "--namespace",
        "dag-operator",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    yaml_docs(&helm_ok(&args))
}
