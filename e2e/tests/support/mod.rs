//! What e2e/tests/install.rs and e2e/tests/crd_upgrade.rs share: a Helm release made by a
//! test, and the one rule every such release obeys (`helm uninstall` never deletes the plane's
//! CRDs, which every other test shares); comparing rendered and live objects.
#![allow(dead_code)] // each test target uses its own part of this module

use std::collections::BTreeSet;

use dag_operator_e2e::chart::{helm, text, yaml_docs};
use serde_json::Value;

/// The CustomResourceDefinitions in the release's manifest that `helm uninstall` would delete:
/// those without the annotation `helm.sh/resource-policy: keep`. Err when the manifest
/// cannot be read.
pub fn crds_uninstall_would_delete(name: &str, namespace: &str) -> Result<Vec<String>, String> {
    let out = helm(&["get", "manifest", name, "--namespace", namespace]);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(yaml_docs(&text(&out.stdout))
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .filter(|o| o["metadata"]["annotations"]["helm.sh/resource-policy"] != "keep")
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect())
}

/// A Helm release, uninstalled when dropped (its ClusterRoles and bindings are cluster-wide)
/// unless uninstalling would delete a CRD: then it is left to its namespace's deletion.
pub struct Release {
    pub name: String,
    pub namespace: String,
}

impl Release {
    /// `helm uninstall`, after checking that it keeps every CRD; returns helm's output.
    pub fn uninstall(&self) -> String {
        match crds_uninstall_would_delete(&self.name, &self.namespace) {
            Ok(crds) => assert!(
                crds.is_empty(),
                "helm uninstall {} would delete the shared CRDs {crds:?}",
                self.name
            ),
            Err(e) => panic!("helm get manifest {}: {e}", self.name),
        }
        let out = helm(&["uninstall", &self.name, "--namespace", &self.namespace]);
        assert!(
            out.status.success(),
            "helm uninstall {}: {}",
            self.name,
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        match crds_uninstall_would_delete(&self.name, &self.namespace) {
            Ok(crds) if crds.is_empty() => {
                let _ = helm(&[
                    "uninstall",
                    &self.name,
                    "--namespace",
                    &self.namespace,
                    "--wait=false",
                ]);
            }
            // gone already (uninstalled, or never installed), or it owns CRDs without `keep`:
            // leave it; its namespace goes with the test
            Ok(crds) => eprintln!(
                "not uninstalling {}: it would delete the CRDs {crds:?}",
                self.name
            ),
            Err(_) => {}
        }
    }
}

/// Numbers as f64, so `10000` and `10000.0` (one renderer's YAML and the other's) compare
/// equal.
pub fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or_else(|| v.clone()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// The first place where `a` and `b` differ, as a JSON pointer with both values.
pub fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                first_difference(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{at}/{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        _ => (a != b).then(|| format!("{at}: {a} != {b}")),
    }
}
