//! Bad input on the wave-2 fields (issue 27), against the real API server: what the schema
//! and CEL can check is refused at `kubectl apply`; what they cannot (a jitter longer than
//! the schedule's interval, an upstream DAG that does not exist) is a `Ready=False` condition
//! with a reason and a Warning event — never a silent `Ready=True`.

use dag_operator_e2e::scenario::dag_with_spec;
use dag_operator_e2e::{TestNamespace, plane};

/// The checked-in DAG CRD (crds/dags.yaml) installed under a group of this test's own, so
/// its rules are checked by the real API server (its CEL cost budget too) without replacing
/// the CRD other tests on the shared plane use. Deleted when dropped.
struct PrivateDagCrd {
    group: String,
}

impl PrivateDagCrd {
    fn install() -> Self {
        let group = format!("input{}.e2e.dagoperator.io", std::process::id());
        let path = plane().repo.join("crds/dags.yaml");
        let yaml = std::fs::read_to_string(&path).expect("crds/dags.yaml");
        let yaml = yaml
            .replace("name: dags.dagoperator.io", &format!("name: dags.{group}"))
            .replace("group: dagoperator.io", &format!("group: {group}"));
        assert!(yaml.contains(&group), "the CRD names its group");
        plane().kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
        plane().kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/dags.{group}"),
            ],
            None,
        );
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
    let crd = PrivateDagCrd::install();
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
