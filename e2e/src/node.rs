//! The plane's real node (`e2e/plane`: containerd, runc, a kubelet and a CNI bridge): the
//! namespaces whose Pods run there, the images of `scripts/images` loaded into it, and what
//! its containerd and kubelet say.
//!
//! The node is tainted `type=real:NoSchedule` and labelled `type=real`, so the Pods of every
//! other test stay on kwok. A namespace made by [`real_namespace`] carries the annotations of
//! the API server's PodNodeSelector and PodTolerationRestriction admission plugins: every Pod
//! created in it (the operator's task Pods, the chart's operator Pods) lands on the real node
//! without a field of its own saying so.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::{RealNode, TestNamespace, plane};

/// The task image of `scripts/images` (Debian's busybox-static), as the examples name it.
pub const TASK_IMAGE: &str = "busybox:1.35";

/// The real node of the plane; panics when the plane has none (`DAGOP_PLANE_REAL_NODE=0`).
pub fn real_node() -> &'static RealNode {
    plane()
        .real_node
        .as_ref()
        .expect("the plane has a real node (e2e/plane up without DAGOP_PLANE_REAL_NODE=0)")
}

/// Runs `scripts/images <what>` once per test run per `what` (the operator image is built
/// in the dev profile unless `DAGOP_IMAGE_PROFILE` says otherwise) and loads the images into
/// the real node.
fn images(what: &'static str) {
    static TASK: OnceLock<()> = OnceLock::new();
    static OPERATOR: OnceLock<()> = OnceLock::new();
    let once = if what == "task" { &TASK } else { &OPERATOR };
    once.get_or_init(|| {
        real_node();
        let profile = std::env::var("DAGOP_IMAGE_PROFILE").unwrap_or_else(|_| "dev".into());
        let status = Command::new(plane().repo.join("scripts/images"))
            .arg(what)
            .env("DAGOP_IMAGE_PROFILE", profile)
            .env("PATH", &plane().path)
            .current_dir(&plane().repo)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("scripts/images runs");
        assert!(status.success(), "scripts/images {what} failed");
    });
}

/// The task image, built and loaded into the real node.
pub fn task_image() -> &'static str {
    images("task");
    TASK_IMAGE
}

/// The operator image (`scripts/images operator`), built and loaded; its OCI archive.
pub fn operator_image() -> PathBuf {
    images("operator");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| plane().repo.join("target"));
    target.join("images/dag-operator.tar")
}

/// A test namespace whose Pods all run on the real node.
pub fn real_namespace(prefix: &str) -> TestNamespace {
    real_node();
    let ns = TestNamespace::new(prefix);
    plane().kubectl_ok(
        &[
            "annotate",
            "namespace",
            &ns.name,
            "scheduler.alpha.kubernetes.io/node-selector=type=real",
            r#"scheduler.alpha.kubernetes.io/defaultTolerations=[{"key":"type","operator":"Equal","value":"real","effect":"NoSchedule"}]"#,
        ],
        None,
    );
    ns
}

/// `ctr -n k8s.io <args>` against the real node's containerd.
pub fn ctr(args: &[&str]) -> Output {
    Command::new("ctr")
        .arg("--address")
        .arg(&real_node().containerd)
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .expect("ctr runs")
}

/// The containers containerd holds for the Pod `pod` of `namespace` (its sandbox included).
pub fn containers_of_pod(namespace: &str, pod: &str) -> Vec<String> {
    let out = ctr(&[
        "containers",
        "ls",
        "-q",
        &format!(
            "labels.\"io.kubernetes.pod.name\"=={pod},labels.\"io.kubernetes.pod.namespace\"=={namespace}"
        ),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}
