//! Installing the operator (issue 8, SPEC §10): the Helm chart lints clean and its schema
//! rejects typos; `helm install` works on the local plane; a token of the chart's
//! ServiceAccount is enough to run the operator end to end (out of cluster, the runs of an
//! example DAG scheduled and their task Pods run to success) and is refused Secrets; and
//! `kubectl kustomize manifests/` holds the same objects as the chart's defaults. The chart
//! renders the CRDs (kept on uninstall) and, when asked, a NetworkPolicy (issue 17); upgrading
//! CRDs through Helm is e2e/tests/crd_upgrade.rs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use dag_operator::store::RunState;
use dag_operator_e2e::chart::{chart, helm, helm_ok, render, text, yaml_docs};
use dag_operator_e2e::scenario::setup;
use dag_operator_e2e::{TestNamespace, eventually, plane};
use serde_json::Value;
use support::{Release, crds_uninstall_would_delete, first_difference, numbers_as_floats};

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    out.sort();
    out
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// (apiGroup, resource, verb) triples of a Role or ClusterRole.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().cloned().unwrap_or_default() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn triples(spec: &[(&str, &[&str], &[&str])]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in spec {
        for r in *resources {
            for v in *verbs {
                out.insert((group.to_string(), r.to_string(), v.to_string()));
            }
        }
    }
    out
}

/// What the operator may do in the namespaces it watches: nothing more (SPEC §10).
fn operator_grants() -> BTreeSet<(String, String, String)> {
    triples(&[
        (
            "dagoperator.io",
            &["dags", "pools", "backfills"],
            &["get", "list", "watch"],
        ),
        (
            "dagoperator.io",
            &["dags/status", "pools/status", "backfills/status"],
            &["get", "patch", "update"],
        ),
        // handled trigger annotations are removed from the DAG (metadata only)
        ("dagoperator.io", &["dags"], &["patch"]),
        (
            "",
            &["pods"],
            &[
                "get",
                "list",
                "watch",
                "create",
                "delete",
                "deletecollection",
            ],
        ),
        ("", &["pods/log"], &["get"]),
        ("events.k8s.io", &["events"], &["create", "patch"]),
        ("", &["events"], &["create", "patch"]),
    ])
}

/// Tenancy: the namespaces' annotations, read only (cluster-wide; by name with watchNamespace).
fn namespace_grants() -> BTreeSet<(String, String, String)> {
    triples(&[("", &["namespaces"], &["get", "list", "watch"])])
}

fn lease_grants() -> BTreeSet<(String, String, String)> {
    triples(&[(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update"],
    )])
}

#[test]
fn chart_lints_clean_and_its_values_are_checked() {
    let chart = chart();
    // a. helm lint, strict: no error, no warning, not even an [INFO] remark
    let lint = |sets: &[&str]| {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = helm_ok(&args);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{out}"
        );
        for marker in ["[ERROR]", "[WARNING]", "[INFO]"] {
            assert!(!out.contains(marker), "helm lint {sets:?}:\n{out}");
        }
    };
    lint(&[]);
    lint(&[
        "watchNamespace=team-a",
        "replicaCount=2",
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
        "database.url=postgres://u:p@db:5432/dagop",
        "redis.host=redis",
        "redis.password=x",
    ]);
    lint(&[
        "database.host=db",
        "database.existingSecret=pg",
        "database.existingSecretPasswordKey=password",
        "redis.existingSecret=redis",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    lint(&["crds.install=false"]);
    lint(&[
        "crds.keep=false",
        "networkPolicy.enabled=true",
        "redis.url=redis://redis:6379/0",
        "networkPolicy.database.ports[0]=6432",
        "networkPolicy.apiServer.to[0].ipBlock.cidr=10.0.0.1/32",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        "networkPolicy.extraEgress[0].ports[0].port=4317",
    ]);
    lint(&["networkPolicy.enabled=true", "ui.enabled=false"]);

    // the schema catches typos and wrong types; the templates catch a missing database
    let chart_arg = chart.as_str();
    for (set, expect) in [
        ("replicaCont=2", "replicaCont"),
        ("config.scheduleIntervall=5s", "scheduleIntervall"),
        ("config.scheduleInterval=5 seconds", "scheduleInterval"),
        ("config.logFormat=xml", "logFormat"),
        ("watchNamespace=Team_A", "watchNamespace"),
        ("database.existingSecret=", "no database configured"),
        ("crds.instal=false", "instal"),
        ("crds.keep=maybe", "keep"),
        ("networkPolicy.enable=true", "enable"),
        ("networkPolicy.dns.ports[0]=70000", "ports"),
    ] {
        let out = helm(&["template", "x", chart_arg, "--set", set]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(err.contains(expect), "--set {set}: {err}");
    }

    // defaults: cluster-wide RBAC, exactly the operator's rules, one replica, no PDB
    let objects = render(&[]);
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount"
        ]
    );
    assert_eq!(
        grants(named(&objects, "ClusterRole", "dag-operator")),
        &operator_grants() | &namespace_grants()
    );
    // the API's reviews, and the example viewer role for people
    assert_eq!(
        grants(named(&objects, "ClusterRole", "dag-operator-reviews")),
        triples(&[
            ("authentication.k8s.io", &["tokenreviews"], &["create"]),
            (
                "authorization.k8s.io",
                &["subjectaccessreviews"],
                &["create"]
            ),
        ])
    );
    assert_eq!(
        grants(named(&objects, "ClusterRole", "dag-operator-viewer")),
        triples(&[(
            "dagoperator.io",
            &["dags", "pools", "backfills"],
            &["get", "list", "watch"]
        )])
    );
    assert_eq!(
        grants(named(&objects, "ClusterRole", "dag-operator-run-operator")),
        triples(&[
            (
                "dagoperator.io",
                &["dags", "pools", "backfills"],
                &["get", "list", "watch"]
            ),
            ("dagoperator.io", &["dags/runs"], &["update"]),
            ("", &["pods/log"], &["get"]),
        ])
    );
    assert_eq!(
        named(&objects, "Service", "dag-operator-ui")["spec"]["ports"][0]["port"],
        8081
    );
    assert_eq!(grants(find(&objects, "Role")), lease_grants());
    let deployment = find(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "run");
    assert!(
        container["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "--leader-election=true"))
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let pod_sc = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        container["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == "DATABASE_URL"))
            .map(|e| e["valueFrom"]["secretKeyRef"].clone()),
        Some(serde_json::json!({"name": "dag-operator-database", "key": "url"}))
    );

    // one watched namespace: Role + RoleBinding there, nothing cluster-wide but that
    // namespace's annotations
    let objects = render(&["watchNamespace=team-a"]);
    // cluster-wide only what cannot be otherwise: the watched namespace's annotations (a
    // Namespace is cluster-scoped), the API's reviews, the metrics reader (a non-resource URL)
    // and the example roles
    let cluster_wide: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| k.starts_with("Cluster")))
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        cluster_wide,
        [
            "dag-operator-metrics-reader",
            "dag-operator-namespace",
            "dag-operator-reviews",
            "dag-operator-viewer",
            "dag-operator-run-operator",
            "dag-operator-namespace",
            "dag-operator-reviews"
        ]
    );
    let own_namespace = named(&objects, "ClusterRole", "dag-operator-namespace");
    assert_eq!(grants(own_namespace), namespace_grants());
    assert_eq!(
        own_namespace["rules"][0]["resourceNames"],
        serde_json::json!(["team-a"])
    );
    let role = objects
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == "team-a")
        .expect("a Role in the watched namespace");
    assert_eq!(grants(role), operator_grants());
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == "team-a")
        .expect("a RoleBinding in the watched namespace");
    assert_eq!(binding["subjects"][0]["namespace"], "dag-operator");

    // two replicas get a PodDisruptionBudget; optional parts render when asked for
    let objects = render(&[
        "replicaCount=2",
        "serviceMonitor.enabled=true",
        "database.host=db",
        "database.password=pw-never-inline",
        "redis.url=redis://r:6379/0",
    ]);
    let k = kinds(&objects);
    for kind in ["PodDisruptionBudget", "ServiceMonitor", "Secret"] {
        assert!(k.iter().any(|x| x == kind), "{kind} missing from {k:?}");
    }
    let env: BTreeMap<String, Value> =
        find(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e))
            .collect();
    assert_eq!(env["DB_HOST"]["value"], "db");
    assert_eq!(
        env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"],
        "db-password"
    );
    assert_eq!(
        env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"],
        "redis-url"
    );
    assert!(!env.contains_key("DATABASE_URL"));
    // no password ever sits in the Deployment
    let deployment = find(&objects, "Deployment").to_string();
    assert!(!deployment.contains("pw-never-inline") && !deployment.contains("redis://"));
}

/// kubectl as the holder of `kubeconfig` (the token's), never the admin.
fn kubectl_as(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", &plane().path)
        .output()
        .expect("kubectl runs")
}

/// `kubectl auth can-i` as the token's holder.
fn can_i(kubeconfig: &std::path::Path, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i", "--quiet"];
    full.extend_from_slice(args);
    kubectl_as(kubeconfig, &full).status.success()
}

/// Writes a kubeconfig for `token`: server and CA from the admin kubeconfig, nothing else.
fn token_kubeconfig(token: &str, namespace: &str) -> PathBuf {
    let p = plane();
    let view = |path: &str| {
        p.kubectl_ok(
            &[
                "config",
                "view",
                "--raw",
                "--minify",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
            ],
            None,
        )
    };
    let server = view("server");
    let ca = view("certificate-authority-data");
    assert!(
        server.starts_with("https://") && !ca.is_empty(),
        "admin kubeconfig: {server}"
    );
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "plane", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "plane", "user": "operator", "namespace": namespace}}],
        "current-context": "operator",
    });
    let path = std::env::temp_dir().join(format!("dagop-e2e-token-{namespace}.kubeconfig"));
    std::fs::write(&path, config.to_string()).expect("kubeconfig written");
    path
}

#[tokio::test]
async fn helm_install_then_the_charts_rbac_runs_a_dag_end_to_end() {
    // the DAG's namespace and database, and a separate namespace for the release
    let s = setup("install").await;
    let release_ns = TestNamespace::new("install-rel");
    let release = Release {
        name: format!(
            "dag-operator-{}",
            release_ns.name.trim_start_matches("e2e-install-rel-")
        ),
        namespace: release_ns.name.clone(),
    };
    assert!(release.name.len() <= 53, "{}", release.name);
    let chart = chart();
    let db_setting = format!("database.url={}", s.db.url);

    // b. helm install. The plane's CRDs are there already, applied with kubectl and shared by
    // every test: this release leaves them alone (crds.install=false), so it neither fails on
    // their ownership nor touches them on uninstall (e2e/tests/crd_upgrade.rs adopts them)
    helm_ok(&[
        "install",
        &release.name,
        &chart,
        "--namespace",
        &release.namespace,
        "--set",
        &db_setting,
        "--set",
        "crds.install=false",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let status: Value = serde_json::from_str(&helm_ok(&[
        "status",
        &release.name,
        "--namespace",
        &release.namespace,
        "-o",
        "json",
    ]))
    .expect("helm status json");
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    for (kind, name) in [
        ("deployment", release.name.clone()),
        ("serviceaccount", release.name.clone()),
        ("service", format!("{}-metrics", release.name)),
        ("secret", release.name.clone()),
        ("role", format!("{}-leader-election", release.name)),
        ("rolebinding", format!("{}-leader-election", release.name)),
    ] {
        release_ns.kubectl_ok(&["get", kind, &name], None);
    }
    for kind in ["clusterrole", "clusterrolebinding"] {
        plane().kubectl_ok(&["get", kind, &release.name], None);
    }
    // the Deployment is available (kwok plays the kubelet) and the Secret holds the URL
    let deployment: Value = serde_json::from_str(
        &release_ns.kubectl_ok(&["get", "deployment", &release.name, "-o", "json"], None),
    )
    .expect("deployment json");
    assert_eq!(deployment["status"]["availableReplicas"], 1, "{deployment}");
    let url = release_ns.kubectl_ok(
        &[
            "get",
            "secret",
            &release.name,
            "-o",
            "go-template={{index .data \"database-url\" | base64decode}}",
        ],
        None,
    );
    assert_eq!(url, s.db.url);
    assert_eq!(
        crds_uninstall_would_delete(&release.name, &release.namespace),
        Ok(vec![]),
        "the release holds no CRD to delete"
    );

    // c. a token of the chart's ServiceAccount, in a kubeconfig of its own
    let token = release_ns
        .kubectl_ok(
            &["create", "token", &release.name, "--duration", "1h"],
            None,
        )
        .trim()
        .to_string();
    let kubeconfig = token_kubeconfig(&token, &s.ns.name);
    let whoami = kubectl_as(
        &kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        text(&whoami.stdout),
        format!(
            "system:serviceaccount:{}:{}",
            release.namespace, release.name
        ),
        "{}",
        text(&whoami.stderr)
    );
    let dag_ns = s.ns.name.as_str();
    for args in [
        &["list", "dags.dagoperator.io", "--all-namespaces"][..],
        &["watch", "pools.dagoperator.io", "-n", dag_ns],
        &["get", "backfills.dagoperator.io", "-n", dag_ns],
        &[
            "patch",
            "dags.dagoperator.io",
            "--subresource=status",
            "-n",
            dag_ns,
        ],
        &["create", "pods", "-n", dag_ns],
        &["deletecollection", "pods", "-n", dag_ns],
        &["create", "events.events.k8s.io", "-n", dag_ns],
        &["watch", "namespaces"],
        &[
            "update",
            "leases.coordination.k8s.io",
            "-n",
            &release.namespace,
        ],
        // the reviews behind the API and --metrics-auth
        &["create", "tokenreviews.authentication.k8s.io"],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
    ] {
        assert!(
            can_i(&kubeconfig, args),
            "the chart's ServiceAccount may not {args:?}"
        );
    }
    for args in [
        &["get", "secrets", "-n", dag_ns][..],
        &["list", "secrets", "--all-namespaces"],
        &["get", "configmaps", "-n", dag_ns],
        &["update", "dags.dagoperator.io", "-n", dag_ns],
        &["delete", "dags.dagoperator.io", "-n", dag_ns],
        &["create", "backfills.dagoperator.io", "-n", dag_ns],
        &["create", "deployments.apps", "-n", dag_ns],
        &["create", "leases.coordination.k8s.io", "-n", dag_ns],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["list", "nodes"],
    ] {
        assert!(
            !can_i(&kubeconfig, args),
            "the chart's ServiceAccount may {args:?}"
        );
    }
    let secrets = kubectl_as(&kubeconfig, &["get", "secrets", "-n", dag_ns]);
    assert!(!secrets.status.success());
    assert!(
        text(&secrets.stderr).contains("Forbidden"),
        "{}",
        text(&secrets.stderr)
    );

    // the operator out of cluster on that token (--kubeconfig wins over the harness's
    // KUBECONFIG), with the chart's own flags: the binary accepts every one of them
    let harness_sets = [
        "--metrics-addr",
        "--ui-addr",
        "--leader-election",
        "--namespace",
        "--schedule-interval",
        "--redis-key-prefix",
    ];
    let chart_flags: Vec<String> =
        find(&render(&[]), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .filter(|a| a != "run" && !harness_sets.iter().any(|h| a.starts_with(h)))
            .collect();
    assert!(chart_flags.len() >= 8, "{chart_flags:?}");
    let kubeconfig_arg = kubeconfig.to_string_lossy().into_owned();
    let mut extra = vec!["--kubeconfig", kubeconfig_arg.as_str()];
    extra.extend(chart_flags.iter().map(String::as_str));
    let mut op = s.operator(&extra);

    let example = std::fs::read_to_string(
        plane()
            .repo
            .join("manifests/examples/dag-every-second.yaml"),
    )
    .expect("example DAG");
    s.apply(&example);
    let runs = eventually(
        Duration::from_secs(90),
        "two runs of every-second to succeed",
        || async {
            let runs = s.runs("every-second").await;
            let done = runs.iter().filter(|r| r.state == RunState::Success).count();
            (done >= 2).then_some(runs)
        },
    )
    .await;
    let succeeded = runs
        .iter()
        .find(|r| r.state == RunState::Success)
        .expect("a successful run");
    let tasks = s.tasks(succeeded).await;
    assert!(
        tasks
            .iter()
            .all(|t| t.state == "success" && t.pod_name.is_some()),
        "{tasks:?}"
    );
    // its task Pods ran (kwok) and are Succeeded
    let pods = s.pods("every-second");
    assert!(
        pods.iter().any(|p| p["status"]["phase"] == "Succeeded"),
        "no Succeeded task Pod: {pods:?}"
    );
    // the DAG's status, written through dags/status
    s.status_until("every-second", "status written by the operator", |st| {
        st["lastScheduleTime"].is_string()
            && st["recentRuns"].as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    // an Event, written through events.k8s.io
    s.cli(&[
        "trigger",
        "every-second",
        "-n",
        dag_ns,
        "--logical-date",
        "2024-01-01T00:00:00Z",
    ]);
    eventually(Duration::from_secs(60), "the TriggerHandled event", || {
        let out =
            s.ns.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"], None);
        let found = serde_json::from_str::<Value>(&out)
            .ok()
            .is_some_and(|list| {
                list["items"].as_array().is_some_and(|items| {
                    items.iter().any(|e| {
                        e["reason"] == "TriggerHandled"
                            && e["reportingController"] == "dag-operator"
                    })
                })
            });
        async move { found.then_some(()) }
    })
    .await;
    assert!(op.alive(), "the operator exited:\n{}", op.log_tail());
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something:\n{}",
        op.log_tail()
    );
    let _ = std::fs::remove_file(&kubeconfig);
}

#[test]
fn chart_renders_the_crds_kept_on_uninstall() {
    // the CRDs are templates (so `helm upgrade` updates them), each exactly the object of
    // crds/<file> plus `helm.sh/resource-policy: keep` (so `helm uninstall` leaves them)
    let repo = plane().repo.clone();
    let source: BTreeMap<String, Value> = ["backfills", "dags", "pools"]
        .iter()
        .map(|plural| {
            let path = repo.join(format!("crds/{plural}.yaml"));
            let text = std::fs::read_to_string(&path).expect("crds/ readable");
            let doc = yaml_docs(&text).pop().expect("one CRD per file");
            (format!("{plural}.dagoperator.io"), doc)
        })
        .collect();
    let crds = |sets: &[&str]| -> BTreeMap<String, Value> {
        render(sets)
            .into_iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .map(|o| {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                (name.to_string(), o)
            })
            .collect()
    };
    let kept = crds(&[]);
    assert_eq!(
        kept.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>()
    );
    for (name, crd) in &kept {
        let mut want = source[name].clone();
        want["metadata"]["annotations"] = serde_json::json!({"helm.sh/resource-policy": "keep"});
        if let Some(diff) = first_difference(&numbers_as_floats(crd), &numbers_as_floats(&want), "")
        {
            panic!("{name} differs from crds/ at {diff}");
        }
    }
    // crds.keep=false: the same objects without the policy (uninstall deletes them)
    let deleted = crds(&["crds.keep=false"]);
    for (name, crd) in &deleted {
        if let Some(diff) = first_difference(
            &numbers_as_floats(crd),
            &numbers_as_floats(&source[name]),
            "",
        ) {
            panic!("{name} (crds.keep=false) differs from crds/ at {diff}");
        }
    }
    assert_eq!(deleted.len(), 3);
    // crds.install=false: no CRD at all, the rest unchanged
    assert!(crds(&["crds.install=false"]).is_empty());
    let others = |sets: &[&str]| {
        kinds(
            &render(sets)
                .into_iter()
                .filter(|o| o["kind"] != "CustomResourceDefinition")
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(others(&["crds.install=false"]), others(&[]));
}

#[test]
fn network_policy_renders_by_default() {
    let policies = |sets: &[&str]| -> Vec<Value> {
        render(sets)
            .into_iter()
            .filter(|o| o["kind"] == "NetworkPolicy")
            .collect()
    };
    // on by default (issue 28), off when asked
    assert_eq!(policies(&[]).len(), 1);
    assert!(policies(&["networkPolicy.enabled=false"]).is_empty());
    assert_eq!(policies(&[]), policies(&["networkPolicy.enabled=true"]));

    // it selects the operator's Pods, and allows nothing but the operator's traffic
    let objects = render(&["networkPolicy.enabled=true", "redis.host=cache"]);
    let policy = find(&objects, "NetworkPolicy");
    assert_eq!(policy["metadata"]["name"], "dag-operator");
    assert_eq!(policy["metadata"]["namespace"], "dag-operator");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        find(&objects, "Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    // (port, protocol) of each rule, and whether it names peers
    let rules = |policy: &Value, direction: &str| -> Vec<(Vec<(String, String)>, bool)> {
        policy["spec"][direction]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|rule| {
                let ports = rule["ports"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        let port = match &p["port"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (port, p["protocol"].as_str().unwrap_or_default().to_string())
                    })
                    .collect();
                let peers = if direction == "ingress" { "from" } else { "to" };
                (ports, !rule[peers].is_null())
            })
            .collect()
    };
    let pp = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(p, q)| (p.to_string(), q.to_string()))
            .collect()
    };
    assert_eq!(
        rules(policy, "ingress"),
        [
            (pp(&[("http-metrics", "TCP")]), false),
            (pp(&[("http-ui", "TCP")]), false),
        ]
    );
    assert_eq!(
        rules(policy, "egress"),
        [
            (pp(&[("443", "TCP"), ("6443", "TCP")]), false),
            (pp(&[("5432", "TCP")]), false),
            (pp(&[("6379", "TCP")]), false),
            (pp(&[("53", "UDP"), ("53", "TCP")]), false),
        ]
    );
    // the named ports are the container's
    let container_ports: Vec<&str> =
        find(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .map(|ports| ports.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
    assert_eq!(container_ports, ["http-metrics", "http-ui"]);

    // ports and peers are configurable; the database's and Redis's ports follow their
    // settings; no Redis, no Redis rule; no UI, no UI rule; extra rules are appended
    let objects = render(&[
        "networkPolicy.enabled=true",
        "ui.enabled=false",
        "database.host=db",
        "database.port=6543",
        "networkPolicy.apiServer.ports[0]=8443",
        "networkPolicy.apiServer.to[0].ipBlock.cidr=10.0.0.1/32",
        "networkPolicy.dns.ports[0]=5353",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        "networkPolicy.extraEgress[0].ports[0].port=4317",
        "networkPolicy.extraIngress[0].ports[0].port=9090",
    ]);
    let policy = find(&objects, "NetworkPolicy");
    assert_eq!(
        rules(policy, "ingress"),
        [
            (pp(&[("http-metrics", "TCP")]), true),
            (pp(&[("9090", "")]), false),
        ]
    );
    assert_eq!(
        rules(policy, "egress"),
        [
            (pp(&[("8443", "TCP")]), true),
            (pp(&[("6543", "TCP")]), false),
            (pp(&[("5353", "UDP"), ("5353", "TCP")]), false),
            (pp(&[("4317", "")]), false),
        ]
    );
    assert_eq!(
        policy["spec"]["egress"][0]["to"],
        serde_json::json!([{"ipBlock": {"cidr": "10.0.0.1/32"}}])
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["name"],
        "monitoring"
    );
    // explicit database and Redis ports win over database.port / redis.port
    let objects = render(&[
        "networkPolicy.enabled=true",
        "redis.url=rediss://cache:6380/0",
        "networkPolicy.database.ports[0]=6432",
        "networkPolicy.redis.ports[0]=6380",
    ]);
    let egress = rules(find(&objects, "NetworkPolicy"), "egress");
    assert_eq!(egress[1].0, pp(&[("6432", "TCP")]));
    assert_eq!(egress[2].0, pp(&[("6380", "TCP")]));
}

#[test]
fn kustomize_install_holds_the_charts_default_objects() {
    // d. the plain install renders the same objects as `helm template` with default values,
    // the CRDs included (templates/crds.yaml)
    let p = plane();
    let manifests = p.repo.join("manifests").to_string_lossy().into_owned();
    let kustomized = yaml_docs(&p.kubectl_ok(&["kustomize", &manifests], None));
    let templated = render(&[]);
    assert_eq!(
        templated
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .count(),
        3,
        "the chart renders the three CRDs by default"
    );

    let key = |o: &Value| {
        (
            o["kind"].as_str().unwrap_or_default().to_string(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    // labels say who applied them, and the chart's CRDs carry `helm.sh/resource-policy:
    // keep` (for `helm uninstall`; it means nothing to kubectl, and manifests/install/crds/ are
    // byte copies of crds/, tests/chart.rs); everything else must be equal
    let normalise = |o: &Value| {
        let mut o = numbers_as_floats(o);
        for pointer in ["/metadata/labels", "/spec/template/metadata/labels"] {
            if let Some(m) = o.pointer_mut(pointer).and_then(Value::as_object_mut) {
                m.remove("app.kubernetes.io/managed-by");
            }
        }
        if o["kind"] == "CustomResourceDefinition"
            && let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut)
        {
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove("helm.sh/resource-policy");
            }
            if meta.get("annotations") == Some(&serde_json::json!({})) {
                meta.remove("annotations");
            }
        }
        o
    };
    let by_key = |objects: &[Value]| -> BTreeMap<(String, String, String), Value> {
        objects.iter().map(|o| (key(o), normalise(o))).collect()
    };
    // the chart's CRDs are kept on uninstall; the kustomize install's carry no Helm policy
    for o in &templated {
        if o["kind"] == "CustomResourceDefinition" {
            assert_eq!(
                o["metadata"]["annotations"],
                serde_json::json!({"helm.sh/resource-policy": "keep"}),
                "{}",
                o["metadata"]["name"]
            );
        }
    }
    for o in &kustomized {
        if o["kind"] == "CustomResourceDefinition" {
            assert!(o["metadata"]["annotations"].is_null(), "{}", o["metadata"]);
        }
    }
    let mut k = by_key(&kustomized);
    let h = by_key(&templated);
    assert_eq!(
        k.len(),
        kustomized.len(),
        "duplicate objects in the kustomize install"
    );
    let namespace = k
        .remove(&("Namespace".into(), "dag-operator".into(), String::new()))
        .expect("the kustomize install creates namespace dag-operator");
    assert_eq!(namespace["apiVersion"], "v1");
    assert_eq!(
        k.keys().collect::<Vec<_>>(),
        h.keys().collect::<Vec<_>>(),
        "kind/name/namespace differ"
    );
    for (key, object) in &h {
        let other = &k[key];
        // the parts the brief names, then the whole object
        for pointer in [
            "/rules",
            "/roleRef",
            "/subjects",
            "/spec/template/spec/containers/0/args",
            "/spec/template/spec/containers/0/env",
            "/spec/template/spec/containers/0/securityContext",
            "/spec/template/spec/securityContext",
            "/spec/template/spec/serviceAccountName",
        ] {
            assert_eq!(
                object.pointer(pointer),
                other.pointer(pointer),
                "{key:?} {pointer}: run scripts/render-manifests"
            );
        }
        if let Some(diff) = first_difference(object, other, "") {
            panic!("{key:?} differs at {diff}: run scripts/render-manifests");
        }
    }

    // and the checked-in files are exactly what the script renders now
    let out = Command::new(p.repo.join("scripts/render-manifests"))
        .arg("--check")
        .env("PATH", &p.path)
        .output()
        .expect("scripts/render-manifests runs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn secrets_from_files_and_tls_material_reach_the_container() {
    let objects = render(&[
        "database.urlFile=/secrets/db/url",
        "database.tls.mode=verify-full",
        "database.tls.caSecret=pg-ca",
        "redis.host=cache",
        "redis.passwordFile=/secrets/redis/password",
        "redis.tls.enabled=true",
        "redis.tls.caSecret=redis-ca",
        "extraVolumes[0].name=secrets",
        "extraVolumes[0].csi.driver=secrets-store.csi.k8s.io",
        "extraVolumeMounts[0].name=secrets",
        "extraVolumeMounts[0].mountPath=/secrets",
    ]);
    let deployment = find(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: std::collections::BTreeMap<String, String> = container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_string(),
                        e["value"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let want = [
        ("DATABASE_URL_FILE", "/secrets/db/url"),
        ("DB_SSLMODE", "verify-full"),
        ("DB_SSLROOTCERT", "/etc/dag-operator/tls/database/ca.crt"),
        ("REDIS_PASSWORD_FILE", "/secrets/redis/password"),
        ("REDIS_TLS", "true"),
        ("REDIS_CA_FILE", "/etc/dag-operator/tls/redis/ca.crt"),
    ];
    for (name, value) in want {
        assert_eq!(
            env.get(name).map(String::as_str),
            Some(value),
            "{name}: {env:?}"
        );
    }
    assert!(!env.contains_key("DATABASE_URL"), "the file wins: {env:?}");
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(volumes, ["database-tls", "redis-tls", "secrets"]);
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "pg-ca");
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .map(|v| v.iter().filter_map(|m| m["mountPath"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        mounts,
        [
            "/etc/dag-operator/tls/database",
            "/etc/dag-operator/tls/redis",
            "/secrets"
        ]
    );
    // a mode libpq does not know is refused by the schema
    let out = helm(&[
        "template",
        "x",
        &chart(),
        "--set",
        "database.tls.mode=always",
    ]);
    assert!(!out.status.success());
}

#[test]
fn sentinel_and_tenancy_values_become_flags_and_variables() {
    let objects = render(&[
        "redis.sentinel.addresses={s1:26379,s2:26379}",
        "redis.sentinel.masterName=cache",
        "redis.password=pw",
        "redis.tls.enabled=true",
        "config.maxRunsPerNamespace=20",
        "config.maxDagPriority=500",
    ]);
    let container = &find(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().cloned().unwrap_or_default();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(value("REDIS_SENTINELS"), Some("s1:26379,s2:26379".into()));
    assert_eq!(value("REDIS_SENTINEL_MASTER"), Some("cache".into()));
    assert_eq!(value("REDIS_TLS"), Some("true".into()));
    assert_eq!(value("REDIS_HOST"), None, "Sentinels, not a host: {env:?}");
    // the password from the chart's Secret
    let password = env
        .iter()
        .find(|e| e["name"] == "REDIS_PASSWORD")
        .expect("REDIS_PASSWORD");
    assert_eq!(
        password["valueFrom"]["secretKeyRef"]["key"],
        "redis-password"
    );
    assert!(
        find(&objects, "Secret")["data"]["redis-password"].is_string(),
        "the Secret holds the password"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|a| a.as_str()).collect())
        .unwrap_or_default();
    for flag in ["--max-runs-per-namespace=20", "--max-dag-priority=500"] {
        assert!(args.contains(&flag), "{flag}: {args:?}");
    }
}

/// `ui.secureCookies` and `ui.tokenAudience` (issue 28, finding 6): flags only when set, so
/// the default rendering (and manifests/install) is unchanged; a blank-containing audience is
/// refused by the schema.
#[test]
fn the_ui_session_values_become_flags_only_when_set() {
    let args = |sets: &[&str]| -> Vec<String> {
        find(&render(sets), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .filter(|a| a.starts_with("--ui-"))
            .collect()
    };
    assert_eq!(args(&[]), vec!["--ui-addr=:8081"]);
    assert_eq!(
        args(&["ui.secureCookies=true", "ui.tokenAudience=dag-operator-ui"]),
        vec![
            "--ui-addr=:8081",
            "--ui-secure-cookies=true",
            "--ui-token-audience=dag-operator-ui"
        ]
    );
    let refused = helm(&[
        "template",
        "dag-operator",
        &chart(),
        "--set",
        "ui.tokenAudience=a b",
    ]);
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("tokenAudience"),
        "{}",
        text(&refused.stderr)
    );
}

/// Issue 28: `/metrics` is guarded by default (`--metrics-auth=true`); the chart grants the
/// reviews it needs, a `<release>-metrics-reader` ClusterRole for scrapers, and a
/// ServiceMonitor that sends a token allowed to read.
#[test]
fn metrics_auth_is_on_by_default_and_the_service_monitor_sends_a_token() {
    let args = |objects: &[Value]| -> Vec<String> {
        find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .filter(|a| a.starts_with("--metrics-"))
            .collect()
    };
    let reader_rules = serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]);
    let objects = render(&[]);
    assert_eq!(
        args(&objects),
        ["--metrics-addr=:8080", "--metrics-auth=true"]
    );
    assert_eq!(
        named(&objects, "ClusterRole", "dag-operator-metrics-reader")["rules"],
        reader_rules
    );
    // nobody is bound to it until asked; no ServiceMonitor, no scraper
    assert!(
        !objects
            .iter()
            .any(|o| o["metadata"]["name"] == "dag-operator-metrics-reader"
                && o["kind"] == "ClusterRoleBinding")
    );
    assert!(!kinds(&objects).contains(&"ServiceMonitor".to_string()));

    // the reviews are granted for /metrics even without the UI
    let objects = render(&["ui.enabled=false"]);
    assert_eq!(
        grants(named(&objects, "ClusterRole", "dag-operator-reviews")),
        triples(&[
            ("authentication.k8s.io", &["tokenreviews"], &["create"]),
            (
                "authorization.k8s.io",
                &["subjectaccessreviews"],
                &["create"]
            ),
        ])
    );
    // … and not at all with neither
    let objects = render(&["ui.enabled=false", "metrics.auth.enabled=false"]);
    assert_eq!(
        args(&objects),
        ["--metrics-addr=:8080", "--metrics-auth=false"]
    );
    for o in &objects {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            !name.ends_with("-reviews") && !name.contains("metrics-reader"),
            "{name} rendered"
        );
    }

    // the ServiceMonitor sends the token of the chart's own scraper, which may only get
    // /metrics
    let objects = render(&["serviceMonitor.enabled=true"]);
    let endpoint = &find(&objects, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "http");
    assert_eq!(
        endpoint["authorization"],
        serde_json::json!({"type": "Bearer", "credentials": {
            "name": "dag-operator-metrics-scraper-token", "key": "token"}})
    );
    let token = named(&objects, "Secret", "dag-operator-metrics-scraper-token");
    assert_eq!(token["type"], "kubernetes.io/service-account-token");
    assert_eq!(
        token["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        "dag-operator-metrics-scraper"
    );
    named(&objects, "ServiceAccount", "dag-operator-metrics-scraper");
    let binding = named(
        &objects,
        "ClusterRoleBinding",
        "dag-operator-metrics-reader",
    );
    assert_eq!(binding["roleRef"]["name"], "dag-operator-metrics-reader");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "dag-operator-metrics-scraper",
            "namespace": "dag-operator"}])
    );

    // a token Secret of one's own instead, and a Prometheus's ServiceAccount as a reader
    let objects = render(&[
        "serviceMonitor.enabled=true",
        "serviceMonitor.tokenSecret.name=prometheus-token",
        "metrics.auth.readers[0].kind=ServiceAccount",
        "metrics.auth.readers[0].name=prometheus-k8s",
        "metrics.auth.readers[0].namespace=monitoring",
    ]);
    let endpoint = &find(&objects, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["authorization"]["credentials"],
        serde_json::json!({"name": "prometheus-token", "key": "token"})
    );
    assert!(
        !objects
            .iter()
            .any(|o| o["metadata"]["name"] == "dag-operator-metrics-scraper")
    );
    assert_eq!(
        named(
            &objects,
            "ClusterRoleBinding",
            "dag-operator-metrics-reader"
        )["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "prometheus-k8s",
            "namespace": "monitoring"}])
    );
    // without auth the ServiceMonitor sends nothing
    let objects = render(&["serviceMonitor.enabled=true", "metrics.auth.enabled=false"]);
    assert!(find(&objects, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"].is_null());
    // a reader must say what it is
    let refused = helm(&[
        "template",
        "dag-operator",
        &chart(),
        "--set",
        "metrics.auth.readers[0].name=x",
    ]);
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("kind"),
        "{}",
        text(&refused.stderr)
    );
}

/// Issue 28: the optional admission policy renders only when asked, with the chart's defaults
/// in its expressions (its effect is e2e/tests/admission_policy.rs).
#[test]
fn the_admission_policy_renders_only_when_enabled() {
    let policy_kinds = |objects: &[Value]| -> Vec<String> {
        kinds(objects)
            .into_iter()
            .filter(|k| k.starts_with("ValidatingAdmissionPolicy"))
            .collect()
    };
    assert!(policy_kinds(&render(&[])).is_empty());
    let objects = render(&[
        "admissionPolicy.enabled=true",
        "admissionPolicy.defaults.imagePrefixes[0]=registry.example.com/",
        "admissionPolicy.namespaceSelector.matchLabels.dags=guarded",
    ]);
    assert_eq!(
        policy_kinds(&objects),
        [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let policy = named(&objects, "ValidatingAdmissionPolicy", "dag-operator-dags");
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"],
        serde_json::json!(["dags"])
    );
    let variable = |name: &str| -> String {
        policy["spec"]["variables"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name))
            .and_then(|v| v["expression"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        variable("serviceAccounts").ends_with(": [\"default\"]"),
        "{}",
        variable("serviceAccounts")
    );
    assert!(
        variable("imagePrefixes").ends_with(": [\"registry.example.com/\"]"),
        "{}",
        variable("imagePrefixes")
    );
    let binding = named(
        &objects,
        "ValidatingAdmissionPolicyBinding",
        "dag-operator-dags",
    );
    assert_eq!(binding["spec"]["policyName"], "dag-operator-dags");
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"],
        serde_json::json!({"matchLabels": {"dags": "guarded"}})
    );
    // a rollout in audit mode; a typo is refused
    let objects = render(&[
        "admissionPolicy.enabled=true",
        "admissionPolicy.validationActions={Warn,Audit}",
    ]);
    assert_eq!(
        named(
            &objects,
            "ValidatingAdmissionPolicyBinding",
            "dag-operator-dags"
        )["spec"]["validationActions"],
        serde_json::json!(["Warn", "Audit"])
    );
    let refused = helm(&[
        "template",
        "dag-operator",
        &chart(),
        "--set",
        "admissionPolicy.validationActions={Refuse}",
    ]);
    assert!(!refused.status.success(), "an unknown action was accepted");
}
