//! `spec.podTemplate`, `spec.taskDefaults` and the template variables end to end (issue 18):
//! the example DAG `manifests/examples/dag-pod-template.yaml` applied as a user would, one run
//! triggered, and its task Pods read back from the API server; the CRD's CEL rules refuse
//! reserved keys and image-less tasks at `kubectl apply`.

use dag_operator::store::RunState;
use dag_operator_e2e::plane;
use dag_operator_e2e::scenario::{dag_with_spec, env_of, setup};
use serde_json::Value;

#[tokio::test]
async fn task_pods_carry_the_template_the_defaults_and_the_dates() {
    let s = setup("podtpl").await;
    let example = plane()
        .repo
        .join("manifests/examples/dag-pod-template.yaml");
    let yaml = std::fs::read_to_string(&example).expect("the example");
    s.apply(&yaml);
    let _op = s.operator(&[]);
    // 06:00 in Tokyo on 2024-03-01: 21:00 UTC the day before
    s.cli(&[
        "trigger",
        "daily-report",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2024-02-29T21:00:00Z",
    ]);
    let runs = s
        .runs_until("daily-report", "the run to succeed", |r| {
            r.iter().any(|r| r.state == RunState::Success)
        })
        .await;
    assert_eq!(runs.len(), 1);
    let pods = s.pods("daily-report");
    assert_eq!(pods.len(), 3, "one Pod per task, kept after the run");
    let by_task = |task: &str| -> Value {
        pods.iter()
            .find(|p| p["metadata"]["labels"]["dagoperator.io/task"] == task)
            .cloned()
            .unwrap_or_else(|| panic!("the Pod of {task}"))
    };
    for task in ["extract", "report", "publish"] {
        let pod = by_task(task);
        let meta = &pod["metadata"];
        // the template's labels and annotations beside the operator's own
        assert_eq!(meta["labels"]["team"], "analytics", "{task}");
        assert_eq!(meta["labels"]["dagoperator.io/dag"], "daily-report");
        assert_eq!(
            meta["labels"]["dagoperator.io/run-id"],
            runs[0].id.to_string()
        );
        assert_eq!(
            meta["annotations"]["example.com/owner"], "analytics@example.com",
            "{task}"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["securityContext"]["runAsUser"], 1000, "{task}");
        assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
        assert_eq!(spec["tolerations"][0]["key"], "batch");
        assert_eq!(spec["volumes"][0]["name"], "scratch");
        let c = &spec["containers"][0];
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/scratch", "{task}");
        assert_eq!(c["resources"]["requests"]["cpu"], "50m", "{task}");
        let env = env_of(&pod);
        assert_eq!(env["LOGICAL_DATE"], "2024-02-29T21:00:00Z");
        // the date in the DAG's zone, not the UTC one
        assert_eq!(env["DS"], "2024-03-01", "{task}");
        assert_eq!(env["DS_NODASH"], "20240301");
        assert_eq!(env["TS"], "2024-03-01T06:00:00+09:00");
        assert_eq!(env["PREV_LOGICAL_DATE"], "2024-02-28T21:00:00Z");
        assert_eq!(env["NEXT_LOGICAL_DATE"], "2024-03-01T21:00:00Z");
    }
    // the defaults' image and variable, unless the task has its own
    let image = |task: &str| by_task(task)["spec"]["containers"][0]["image"].clone();
    assert_eq!(image("extract"), "busybox:1.35");
    assert_eq!(image("publish"), "docker.io/library/busybox:1.35");
    assert_eq!(env_of(&by_task("extract"))["OUTPUT"], "/scratch/$(DS)");
    assert_eq!(
        env_of(&by_task("publish"))["OUTPUT"],
        "/scratch/published-$(DS_NODASH)"
    );
    // `$(DS)` stays in the args for the kubelet to expand from the variables above
    let args = by_task("extract")["spec"]["containers"][0]["args"][0].clone();
    assert!(args.as_str().is_some_and(|a| a.contains("$(DS)")), "{args}");
}

#[tokio::test]
async fn reserved_keys_and_image_less_tasks_are_refused_at_apply() {
    let s = setup("podtpl-refused").await;
    for (spec, message) in [
        (
            "  podTemplate: {labels: {dagoperator.io/task: mine}}\n  tasks: [{name: a, container: {image: busybox}}]\n",
            "label keys under dagoperator.io/ are reserved",
        ),
        (
            "  podTemplate: {annotations: {dagoperator.io/note: mine}}\n  tasks: [{name: a, container: {image: busybox}}]\n",
            "annotation keys under dagoperator.io/ are reserved",
        ),
        (
            "  tasks: [{name: a, container: {image: busybox}}, {name: b, container: {command: [sh]}}]\n",
            "needs an image",
        ),
    ] {
        let out =
            s.ns.kubectl(&["apply", "-f", "-"], Some(&dag_with_spec("refused", spec)));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec} was accepted");
        assert!(err.contains(message), "{spec}: {err}");
    }
    // the same tasks with a default image, and a subdomain of ours, are fine
    s.apply(&dag_with_spec(
        "accepted",
        "  podTemplate: {annotations: {e2e.dagoperator.io/outcome: succeed}}\n  taskDefaults: {image: busybox}\n  tasks: [{name: a, container: {image: busybox}}, {name: b, container: {command: [sh]}}]\n",
    ));
}
