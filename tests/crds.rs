//! The checked-in crds/ must equal what `dag-operator crds` generates, and the schemas must
//! carry the validation SPEC §2 asks of them.

use std::path::PathBuf;

use dag_operator::api;
use serde_json::Value;

fn crd_json(plural: &str) -> Value {
    let crd = api::crds()
        .into_iter()
        .find(|c| c.spec.names.plural == plural)
        .expect("crd exists");
    serde_json::to_value(crd).expect("crd serializes")
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn schema(plural: &str) -> Value {
    crd_json(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn checked_in_crds_do_not_drift() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_names = Vec::new();
    for (name, yaml) in api::crd_files().expect("renders") {
        let path = dir.join(&name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "{} is out of date: run `cargo run -- crds --out-dir crds`",
            path.display()
        );
        expected_names.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected_names.sort();
    assert_eq!(
        present, expected_names,
        "crds/ holds exactly one file per CRD"
    );
}

#[test]
fn names_categories_and_subresources() {
    for (plural, kind, short) in [
        ("dags", "DAG", "dag"),
        ("pools", "Pool", "dagpool"),
        ("backfills", "Backfill", "bf"),
    ] {
        let crd = crd_json(plural);
        let spec = &crd["spec"];
        assert_eq!(spec["group"], "dagoperator.io");
        assert_eq!(spec["scope"], "Namespaced");
        assert_eq!(spec["names"]["kind"], kind);
        assert_eq!(spec["names"]["shortNames"], serde_json::json!([short]));
        assert_eq!(
            spec["names"]["categories"],
            serde_json::json!(["dagoperator"])
        );
        let version = &spec["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(
            version["subresources"]["status"].is_object(),
            "{plural} has a status subresource"
        );
    }
}

#[test]
fn printer_columns() {
    let names = |plural: &str| -> Vec<String> {
        crd_json(plural)["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        names("dags"),
        [
            "Schedule",
            "Timezone",
            "Suspend",
            "Active",
            "Queued",
            "Last",
            "Next",
            "LastSuccess",
            "Ready",
            "Age",
            "Message"
        ]
    );
    assert_eq!(names("pools"), ["Slots", "Used", "Open", "Queued", "Age"]);
    assert_eq!(
        names("backfills"),
        ["DAG", "Phase", "Progress", "Active", "Age"]
    );
    // the Ready message only with -o wide
    let message = crd_json("dags")["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .and_then(|cols| cols.iter().find(|c| c["name"] == "Message").cloned())
        .unwrap_or_default();
    assert_eq!(message["priority"], 1);
}

/// kstatus and server-side apply read `conditions` as a map keyed by `type`.
#[test]
fn conditions_are_a_map_keyed_by_type() {
    for plural in ["dags", "pools", "backfills"] {
        let conditions = &schema(plural)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{plural}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{plural}"
        );
    }
}

#[test]
fn dag_schema_validates_what_it_can() {
    let spec = &schema("dags")["properties"]["spec"];
    let tasks = &spec["properties"]["tasks"];
    assert_eq!(tasks["x-kubernetes-list-type"], "map");
    assert_eq!(
        tasks["x-kubernetes-list-map-keys"],
        serde_json::json!(["name"])
    );
    assert_eq!(num(&tasks["minItems"]), 1.0);
    assert_eq!(num(&tasks["maxItems"]), 500.0);
    let task = &tasks["items"];
    assert_eq!(
        task["properties"]["triggerRule"]["enum"],
        serde_json::json!([
            "AllSuccess",
            "AllFailed",
            "AllDone",
            "OneSuccess",
            "OneFailed",
            "NoneFailed",
            "NoneFailedMinOneSuccess",
            "NoneSkipped",
            "Always"
        ])
    );
    // kubectl explain shows the field's description: it names every rule
    let explained = task["properties"]["triggerRule"]["description"]
        .as_str()
        .expect("described");
    for rule in dag_operator::graph::TriggerRule::ALL {
        assert!(
            explained.contains(&format!("`{rule:?}`")),
            "{rule:?}: {explained}"
        );
    }
    assert_eq!(num(&task["properties"]["poolSlots"]["minimum"]), 1.0);
    assert_eq!(num(&task["properties"]["retries"]["minimum"]), 0.0);
    assert!(task["properties"]["name"]["pattern"].is_string());
    let required: Vec<&str> = task["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["container", "name"]);
    let container_required = &task["properties"]["container"]["required"];
    assert!(
        !container_required
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "name")),
        "container.name may be omitted"
    );
    assert_eq!(
        spec["properties"]["concurrencyPolicy"]["enum"],
        serde_json::json!(["Allow", "Forbid", "Replace", "BufferOne"])
    );
    assert_eq!(num(&spec["properties"]["maxActiveRuns"]["minimum"]), 1.0);
    assert_eq!(
        spec["properties"]["params"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
}

#[test]
fn pool_and_backfill_schemas() {
    let pool = &schema("pools")["properties"]["spec"];
    assert_eq!(num(&pool["properties"]["slots"]["minimum"]), 0.0);

    let bf = &schema("backfills")["properties"]["spec"];
    let rules: Vec<(String, String)> = bf["x-kubernetes-validations"]
        .as_array()
        .expect("spec rules")
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap_or_default().into(),
                r["message"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert!(rules.contains(&(
        "self.end > self.start".into(),
        "end must be after start".into()
    )));
    for field in ["dagRef", "start", "end", "dryRun", "reprocess", "order"] {
        let field_rules = &bf["properties"][field]["x-kubernetes-validations"];
        assert_eq!(
            field_rules[0]["rule"], "self == oldSelf",
            "{field} is immutable"
        );
        assert_eq!(field_rules[0]["message"], format!("{field} is immutable"));
    }
    assert_eq!(num(&bf["properties"]["concurrency"]["minimum"]), 1.0);
    assert_eq!(num(&bf["properties"]["concurrency"]["default"]), 5.0);
    assert_eq!(
        bf["properties"]["reprocess"]["enum"],
        serde_json::json!(["None", "Failed", "All"])
    );
}

/// Every property below `schema` without a description, as JSON paths.
fn undescribed(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            let described = prop["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                out.push(here.clone());
            }
            undescribed(prop, &here, out);
        }
    }
    if schema["items"].is_object() {
        undescribed(&schema["items"], &format!("{path}[]"), out);
    }
    if schema["additionalProperties"].is_object() {
        undescribed(&schema["additionalProperties"], &format!("{path}{{}}"), out);
    }
}

/// Issue 15: `kubectl explain` explains every kind and every field of our own types.
#[test]
fn every_kind_and_field_has_a_description() {
    let mut missing = Vec::new();
    for plural in ["dags", "pools", "backfills"] {
        let s = schema(plural);
        let top = s["description"].as_str().unwrap_or_default();
        if top.is_empty() || top.contains("Auto-generated") {
            missing.push(format!("{plural}: the kind's description is {top:?}"));
        }
        for part in ["spec", "status"] {
            let described = s["properties"][part]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty());
            if !described {
                missing.push(format!("{plural}.{part}"));
            }
            undescribed(
                &s["properties"][part],
                &format!("{plural}.{part}"),
                &mut missing,
            );
        }
    }
    assert!(
        missing.is_empty(),
        "{} fields without a description:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// Client-side `kubectl apply` (as the e2e harness and docs/INSTALL.md use it) keeps the
/// whole object in the `last-applied-configuration` annotation, at most 256 KiB. The core/v1
/// types of the Pod-level fields carry first-sentence descriptions to stay well within it.
#[test]
fn the_dag_crd_fits_the_last_applied_annotation() {
    let bytes = serde_json::to_vec(&crd_json("dags"))
        .expect("serializes")
        .len();
    let limit = 256 * 1024;
    assert!(
        bytes < limit * 7 / 8,
        "the DAG CRD is {bytes} bytes as JSON: keep it under 7/8 of {limit} (client-side apply)"
    );
}

/// Issue 18: `podTemplate` and `taskDefaults`, with the rules CEL checks at apply time.
#[test]
fn pod_template_and_task_defaults() {
    let spec = &schema("dags")["properties"]["spec"];
    let template = &spec["properties"]["podTemplate"]["properties"];
    for field in [
        "labels",
        "annotations",
        "serviceAccountName",
        "securityContext",
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "imagePullSecrets",
        "volumes",
    ] {
        assert!(template[field].is_object(), "podTemplate.{field}");
    }
    // full core/v1 schemas, so mistakes are refused at apply time
    assert!(template["volumes"]["items"]["properties"]["configMap"].is_object());
    assert!(template["securityContext"]["properties"]["runAsUser"].is_object());
    for field in ["labels", "annotations"] {
        let rule = &template[field]["x-kubernetes-validations"][0];
        assert_eq!(
            rule["rule"], "self.all(k, !k.startsWith('dagoperator.io/'))",
            "{field}"
        );
    }
    let defaults = &spec["properties"]["taskDefaults"]["properties"];
    for field in ["image", "env", "envFrom", "resources", "volumeMounts"] {
        assert!(defaults[field].is_object(), "taskDefaults.{field}");
    }
    // a task's image may be left to taskDefaults: one rule over the whole spec says so
    let container = &spec["properties"]["tasks"]["items"]["properties"]["container"];
    assert!(
        !container["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "image"))
    );
    let rules = spec["x-kubernetes-validations"].as_array().expect("rules");
    assert!(rules.iter().any(|r| {
        r["rule"].as_str().is_some_and(|t| {
            t.contains("self.taskDefaults.image") && t.contains("t.container.image")
        })
    }));
}

/// Issue 27: resource quantities and environment variable names are checked at apply, in
/// `taskDefaults` and in every task's container (a bad one used to surface only when the
/// first Pod was refused). e2e/tests/input.rs applies them to the real API server.
#[test]
fn quantities_and_env_names_are_checked_at_apply() {
    let spec = &schema("dags")["properties"]["spec"];
    let defaults = &spec["properties"]["taskDefaults"];
    let container = &spec["properties"]["tasks"]["items"]["properties"]["container"];
    for (what, owner) in [("taskDefaults", defaults), ("container", container)] {
        let resources = &owner["properties"]["resources"]["properties"];
        for field in ["requests", "limits"] {
            let map = &resources[field];
            // bounded, so the rule's estimated cost fits the API server's budget
            assert!(num(&map["maxProperties"]) > 0.0, "{what}.{field}");
            let value = &map["additionalProperties"];
            assert!(num(&value["maxLength"]) > 0.0, "{what}.{field}");
            let rule = &value["x-kubernetes-validations"][0];
            assert!(
                rule["rule"]
                    .as_str()
                    .is_some_and(|r| r.contains("isQuantity(")),
                "{what}.{field}: {rule}"
            );
            assert!(rule["message"].is_string(), "{what}.{field}");
        }
        let name = &owner["properties"]["env"]["items"]["properties"]["name"];
        assert_eq!(name["pattern"], "^[ -<>-~]+$", "{what}.env[].name");
    }
}
