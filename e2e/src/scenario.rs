//! A test scenario: a namespace, a database of its own, the operator on them, and the ways
//! to look at what happened (runs in PostgreSQL, status and Pods in the API server).

use std::time::Duration;

use dag_operator::store::{PgStore, RunFilter, RunRow, RunStore};
use serde_json::Value;

use crate::db::TestDb;
use crate::operator::Operator;
use crate::{TestNamespace, eventually, plane};

pub struct Setup {
    pub ns: TestNamespace,
    pub db: TestDb,
    pub store: PgStore,
}

pub async fn setup(prefix: &str) -> Setup {
    plane().install_crds();
    let ns = TestNamespace::new(prefix);
    let db = TestDb::create(&format!("e2e_{}", prefix.replace('-', "_"))).await;
    let store = db.migrated().await;
    Setup { ns, db, store }
}

/// A scenario whose Pods run in real containers on the plane's real node (`crate::node`),
/// with the task image loaded there.
pub async fn setup_on_real_node(prefix: &str) -> Setup {
    plane().install_crds();
    crate::node::task_image();
    let ns = crate::node::real_namespace(prefix);
    let db = TestDb::create(&format!("e2e_{}", prefix.replace('-', "_"))).await;
    let store = db.migrated().await;
    Setup { ns, db, store }
}

impl Setup {
    pub fn operator(&self, extra: &[&str]) -> Operator {
        Operator::start(&self.ns.name, &self.db.url, extra)
    }

    pub fn apply(&self, yaml: &str) {
        self.ns.kubectl_ok(&["apply", "-f", "-"], Some(yaml));
    }

    pub async fn runs(&self, dag: &str) -> Vec<RunRow> {
        let mut runs = self
            .store
            .list_runs(&RunFilter {
                namespace: Some(self.ns.name.clone()),
                dag_name: Some(dag.to_string()),
                state: None,
                limit: 1_000_000,
            })
            .await
            .unwrap_or_default();
        runs.sort_by_key(|r| r.logical_date);
        runs
    }

    /// The Events of this namespace with `reason` (core/v1 view).
    pub fn events(&self, reason: &str) -> Vec<Value> {
        let out = self.ns.kubectl_ok(&["get", "events", "-o", "json"], None);
        let list: Value = serde_json::from_str(&out).expect("kubectl json");
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    pub fn status(&self, dag: &str) -> Value {
        let out = self.ns.kubectl_ok(&["get", "dag", dag, "-o", "json"], None);
        let obj: Value = serde_json::from_str(&out).expect("kubectl json");
        obj["status"].clone()
    }

    /// `spec.holderIdentity` of the operator's Lease ("" when free or not there yet).
    pub fn lease_holder(&self) -> String {
        let out = self.ns.kubectl(
            &[
                "get",
                "lease",
                "dag-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls the DAG's status until `f` accepts it.
    pub async fn status_until(&self, dag: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(60), what, || {
            let s = self.status(dag);
            let ok = f(&s);
            async move { ok.then_some(s) }
        })
        .await
    }

    pub async fn runs_until(
        &self,
        dag: &str,
        what: &str,
        f: impl Fn(&[RunRow]) -> bool,
    ) -> Vec<RunRow> {
        eventually(Duration::from_secs(90), what, || async {
            let runs = self.runs(dag).await;
            f(&runs).then_some(runs)
        })
        .await
    }
}

impl Setup {
    /// Runs `dag-operator <args>` against the plane as a user would; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "dag-operator {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `dag-operator <args>` against the plane; whatever it does.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::operator::operator_binary())
            .args(args)
            .env("KUBECONFIG", &plane().kubeconfig)
            .output()
            .expect("dag-operator runs")
    }

    /// The task Pods of a DAG, as JSON objects.
    pub fn pods(&self, dag: &str) -> Vec<Value> {
        let out = self.ns.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                &format!("dagoperator.io/dag={dag}"),
                "-o",
                "json",
            ],
            None,
        );
        let list: Value = serde_json::from_str(&out).expect("kubectl json");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Whether the Pod `pod` of `dag` is gone from the API server.
    pub fn pod_gone(&self, dag: &str, pod: &str) -> bool {
        !self.pods(dag).iter().any(|p| p["metadata"]["name"] == pod)
    }

    /// Tells kwok what every Pod of the namespace does next (`succeed`, `fail`, `hold`).
    /// Best effort: a Pod deleted meanwhile is no error (callers poll for the outcome).
    pub fn all_pods_outcome(&self, outcome: &str) {
        self.ns.kubectl(
            &[
                "annotate",
                "--overwrite",
                "pods",
                "--all",
                &format!("e2e.dagoperator.io/outcome={outcome}"),
            ],
            None,
        );
    }

    /// Tells kwok what a held Pod does next: `succeed`, `fail` or `hold`.
    pub fn pod_outcome(&self, pod: &str, outcome: &str) {
        self.ns.kubectl_ok(
            &[
                "annotate",
                "--overwrite",
                "pod",
                pod,
                &format!("e2e.dagoperator.io/outcome={outcome}"),
            ],
            None,
        );
    }

    /// Task instances of a run, by task then try.
    pub async fn tasks(&self, run: &RunRow) -> Vec<dag_operator::store::TaskRow> {
        self.store
            .task_instances(&[run.id])
            .await
            .unwrap_or_default()
    }

    /// Waits for a Pod of `dag` that `pred` accepts and returns its name.
    async fn pod_where(&self, dag: &str, what: &str, pred: impl Fn(&Value) -> bool) -> String {
        eventually(Duration::from_secs(90), what, || {
            let found = self.pods(dag).into_iter().find_map(|p| {
                pred(&p["metadata"]["labels"]).then(|| {
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
            });
            async move { found }
        })
        .await
    }

    /// Waits for the (first) Pod of a run and returns its name.
    pub async fn pod_of_run(&self, run: &RunRow) -> String {
        let id = run.id.to_string();
        self.pod_where(&run.dag.name, &format!("pod of run {id}"), |labels| {
            labels["dagoperator.io/run-id"] == id.as_str()
        })
        .await
    }

    /// Waits for the Pod of `task` try `try_number` of a DAG and returns its name.
    pub async fn pod_of(&self, dag: &str, task: &str, try_number: i32) -> String {
        let try_label = try_number.to_string();
        self.pod_where(dag, &format!("pod of {task} try {try_number}"), |labels| {
            labels["dagoperator.io/task"] == task
                && labels["dagoperator.io/try"] == try_label.as_str()
        })
        .await
    }

    /// Lets every Pod of the namespace succeed until no run of `dag` is running; returns the
    /// runs.
    pub async fn succeed_all(&self, dag: &str) -> Vec<RunRow> {
        eventually(Duration::from_secs(90), "every run to end", || async {
            self.all_pods_outcome("succeed");
            let runs = self.runs(dag).await;
            runs.iter()
                .all(|r| r.state != dag_operator::store::RunState::Running)
                .then_some(runs)
        })
        .await
    }
}

/// Applies a DAG given its whole spec body (indented two spaces).
/// The first container's environment of a Pod (as JSON), by name (literal values only).
pub fn env_of(pod: &Value) -> std::collections::BTreeMap<String, String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| {
                    Some((
                        v["name"].as_str()?.to_string(),
                        v["value"].as_str().unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn dag_with_spec(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

pub fn dag_yaml(name: &str, spec: &str) -> String {
    dag_yaml_with_image(name, spec, "busybox")
}

/// With image `e2e.local/hold` the task's Pod runs until told otherwise, so runs stay active.
pub fn dag_yaml_with_image(name: &str, spec: &str, image: &str) -> String {
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: {name}}}\nspec:\n{spec}\n  tasks:\n  - {{name: a, container: {{image: {image}}}}}\n"
    )
}
