//! Bad input on the wave-2 fields (issue 27), against the real API server: what the schema
//! and CEL can check is refused at `kubectl apply`; what they cannot (a jitter longer than
//! the schedule's interval, an upstream DAG that does not exist) is a `Ready=False` condition
//! with a reason and a Warning event — never a silent `Ready=True`.

use std::time::Duration;

use dag_operator_e2e::scenario::{Setup, dag_with_spec, dag_yaml, setup};
use dag_operator_e2e::{TestNamespace, eventually, plane};
use serde_json::Value;

/// The checked-in DAG CRD (crds/dags.yaml) installed under a group of this test's own, so
/// its rules are checked by the real API server (its CEL cost budget too) without replacing
/// the CRD other tests on the shared plane use. Deleted when dropped.
struct PrivateDagCrd {
    group: String,
}

impl PrivateDagCrd {
    async fn install() -> Self {
        let group = format!("input{}.e2e.dagoperator.io", std::process::id());
        let path = plane().repo.join("crds/dags.yaml");
        let yaml = std::fs::read_to_string(&path).expect("crds/dags.yaml");
        let yaml = yaml
            .replace("name: dags.dagoperator.io", &format!("name: dags.{group}"))
            .replace("group: dagoperator.io", &format!("group: {group}"));
        assert!(yaml.contains(&group), "the CRD names its group");
        plane().kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
        // `kubectl wait` fails on a CRD whose status has no conditions yet: asked until
        // Established instead
        let crd = format!("crd/dags.{group}");
        let established = "{.status.conditions[?(@.type==\"Established\")].status}";
        eventually(Duration::from_secs(60), "the CRD Established", || {
            let out = plane().kubectl(
                &["get", &crd, "-o", &format!("jsonpath={established}")],
                None,
            );
            let ok = String::from_utf8_lossy(&out.stdout) == "True";
            async move { ok.then_some(()) }
        })
        .await;
        PrivateDagCrd { group }
    }

    fn dag(&self, name: &str, spec: &str) -> String {
        dag_with_spec(name, spec).replace(
            "apiVersion: dagoperator.io/v1alpha1",
            &format!("apiVersion: {}/v1alpha1", self.group),
        )
    }
}

impl Drop for PrivateDagCrd {
    fn drop(&mut self) {
        let crd = format!("crd/dags.{}", self.group);
        let _ = plane().kubectl(&["delete", &crd, "--wait=false"], None);
    }
}

#[tokio::test]
async fn bad_quantities_and_env_names_are_refused_at_apply() {
    let crd = PrivateDagCrd::install().await;
    let ns = TestNamespace::new("input-apply");
    let refused = |spec: &str, message: &str| {
        let out = ns.kubectl(&["apply", "-f", "-"], Some(&crd.dag("refused", spec)));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{spec}");
        assert!(err.contains(message), "{spec}: {err}");
    };
    let quantity = "must be a non-negative quantity";
    refused(
        "  taskDefaults: {image: busybox, resources: {requests: {cpu: lots}}}\n  tasks: [{name: a, container: {}}]\n",
        &format!("spec.taskDefaults.resources.requests[cpu]: Invalid value: \"lots\": {quantity}"),
    );
    refused(
        "  taskDefaults: {image: busybox, resources: {limits: {memory: '-1Gi'}}}\n  tasks: [{name: a, container: {}}]\n",
        quantity,
    );
    refused(
        "  tasks: [{name: a, container: {image: busybox, resources: {limits: {memory: 2GB}}}}]\n",
        &format!(
            "spec.tasks[0].container.resources.limits[memory]: Invalid value: \"2GB\": {quantity}"
        ),
    );
    refused(
        "  tasks: [{name: a, container: {image: busybox, resources: {requests: {cpu: 1.5.0}}}}]\n",
        quantity,
    );
    refused(
        "  taskDefaults: {image: busybox, env: [{name: 'A=B', value: x}]}\n  tasks: [{name: a, container: {}}]\n",
        "spec.taskDefaults.env[0].name",
    );
    refused(
        "  tasks: [{name: a, container: {image: busybox, env: [{name: '', value: x}]}}]\n",
        "spec.tasks[0].container.env[0].name",
    );
    // what a Pod takes is taken: quantities in every notation, relaxed env names
    ns.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&crd.dag(
            "accepted",
            "  taskDefaults:\n    image: busybox\n    resources: {requests: {cpu: 500m, memory: 1.5Gi, example.com/gpu: 1}, limits: {memory: 2e9, ephemeral-storage: '+1Ti'}}\n    env: [{name: DS, value: x}, {name: my.var-1, value: 'on'}]\n  tasks: [{name: a, container: {resources: {limits: {cpu: 2}}}}]\n",
        )),
    );
}

fn ready(status: &Value) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == "Ready").then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

fn ready_is(status: &Value, ok: &str, reason: &str) -> bool {
    ready(status).is_some_and(|(s, r, _)| s == ok && r == reason)
}

/// Waits for a Warning event `reason` on DAG `dag` and returns its message.
async fn warning(s: &Setup, dag: &str, reason: &str) -> String {
    eventually(Duration::from_secs(30), reason, || async {
        s.events(reason)
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == dag && e["type"] == "Warning")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
    })
    .await
}

#[tokio::test]
async fn a_jitter_longer_than_the_gap_between_ticks_is_a_condition_and_an_event() {
    let s = setup("input-jitter").await;
    s.apply(&dag_yaml(
        "spread",
        "  schedule: '* * * * *'\n  jitter: 400d",
    ));
    let _op = s.operator(&[]);
    let status = s
        .status_until("spread", "Ready=False InvalidJitter", |st| {
            ready_is(st, "False", "InvalidJitter")
        })
        .await;
    let (_, _, message) = ready(&status).unwrap_or_default();
    assert!(message.contains("use at most 1m"), "{message}");
    assert!(
        status["nextScheduleTime"].is_null(),
        "off the schedule: {status}"
    );
    let event = warning(&s, "spread", "InvalidJitter").await;
    assert!(event.contains("400d"), "{event}");
    // a jitter that fits: scheduled again
    s.apply(&dag_yaml(
        "spread",
        "  schedule: '* * * * *'\n  jitter: 30s",
    ));
    s.status_until("spread", "Ready=True", |st| {
        ready_is(st, "True", "Scheduling")
    })
    .await;
}

#[tokio::test]
async fn an_upstream_dag_that_does_not_exist_is_a_condition_until_it_appears() {
    let s = setup("input-upstream").await;
    s.apply(&dag_yaml("down", "  dependsOn: [{dag: up}]"));
    let _op = s.operator(&[]);
    let status = s
        .status_until("down", "Ready=False UpstreamNotFound", |st| {
            ready_is(st, "False", "UpstreamNotFound")
        })
        .await;
    let (_, _, message) = ready(&status).unwrap_or_default();
    assert!(message.contains("dependsOn \"up\""), "{message}");
    let event = warning(&s, "down", "UpstreamNotFound").await;
    assert!(event.contains("\"up\""), "{event}");
    // the upstream appears: cleared at once (not at the next periodic reconcile, 5 min on)
    s.apply(&dag_yaml("up", "  schedule: '0 0 1 1 *'"));
    s.status_until("down", "Ready=True", |st| {
        ready(st).is_some_and(|(ok, _, _)| ok == "True")
    })
    .await;
    // and gone again: reported again
    s.ns.kubectl_ok(&["delete", "dag", "up"], None);
    s.status_until("down", "Ready=False UpstreamNotFound again", |st| {
        ready_is(st, "False", "UpstreamNotFound")
    })
    .await;
}
