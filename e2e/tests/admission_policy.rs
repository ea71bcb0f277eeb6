//! The chart's optional admission policy (issue 28, finding 11): a DAG author may otherwise run
//! any image as any ServiceAccount of the namespace, with any privilege. With
//! `admissionPolicy.enabled` the API server itself (a ValidatingAdmissionPolicy, CEL, no
//! webhook) refuses a DAG whose tasks would run as a ServiceAccount, or name an image, the
//! namespace does not allow, or ask for privileges; the Namespace's annotations replace the
//! chart's defaults. Installed from `helm template`, bound to this test's namespaces only (the
//! plane is shared).

use std::process::Output;
use std::time::Duration;

use dag_operator_e2e::chart::{render, text};
use dag_operator_e2e::{TestNamespace, eventually, plane};

/// Cluster-scoped objects this test made, deleted when it ends.
struct ClusterObjects(Vec<(&'static str, String)>);

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = plane().kubectl(&["delete", kind, name, "--ignore-not-found"], None);
        }
    }
}

fn dag(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: dagoperator.io/v1alpha1\nkind: DAG\nmetadata: {{name: {name}}}\n\
         spec:\n  schedule: '0 2 * * *'\n{spec}\n"
    )
}

fn apply(ns: &TestNamespace, yaml: &str, dry_run: bool) -> Output {
    let mut args = vec!["apply", "-f", "-"];
    if dry_run {
        args.push("--dry-run=server");
    }
    ns.kubectl(&args, Some(yaml))
}

/// Applying `yaml` is refused by the policy; the refusal's message.
fn refused(ns: &TestNamespace, yaml: &str) -> String {
    let out = apply(ns, yaml, false);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "accepted in {}:\n{yaml}", ns.name);
    assert!(
        err.contains("ValidatingAdmissionPolicy") && err.contains("denied request"),
        "{err}"
    );
    err
}

fn accepted(ns: &TestNamespace, yaml: &str) {
    let out = apply(ns, yaml, false);
    assert!(
        out.status.success(),
        "refused in {}:\n{yaml}\n{}",
        ns.name,
        text(&out.stderr)
    );
}

#[tokio::test]
async fn the_admission_policy_refuses_disallowed_service_accounts_images_and_privileges() {
    plane().install_crds();
    let strict = TestNamespace::new("vap-strict");
    let open = TestNamespace::new("vap-open");
    let name = strict.name.clone();
    let objects = render(&[
        &format!("fullnameOverride={name}"),
        "admissionPolicy.enabled=true",
        "admissionPolicy.defaults.imagePrefixes[0]=e2e.local/",
        "admissionPolicy.defaults.imagePrefixes[1]=busybox",
        "admissionPolicy.namespaceSelector.matchExpressions[0].key=kubernetes.io/metadata.name",
        "admissionPolicy.namespaceSelector.matchExpressions[0].operator=In",
        &format!(
            "admissionPolicy.namespaceSelector.matchExpressions[0].values={{{},{}}}",
            strict.name, open.name
        ),
    ]);
    let policy: Vec<String> = objects
        .iter()
        .filter(|o| {
            o["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))
        })
        .map(|o| o.to_string())
        .collect();
    assert_eq!(policy.len(), 2, "the policy and its binding");
    let _cleanup = ClusterObjects(vec![
        ("validatingadmissionpolicybinding", format!("{name}-dags")),
        ("validatingadmissionpolicy", format!("{name}-dags")),
    ]);
    for o in &policy {
        plane().kubectl_ok(&["apply", "-f", "-"], Some(o));
    }
    // the open namespace's annotations replace the defaults
    open.kubectl_ok(
        &[
            "annotate",
            "namespace",
            &open.name,
            "dagoperator.io/allowed-service-accounts=etl, reports",
            "dagoperator.io/allowed-image-prefixes=quay.io/acme/",
            "dagoperator.io/allow-privileged=true",
        ],
        None,
    );

    // a binding takes effect shortly after it is made: a server-side dry run of a refused DAG
    // shows when
    let foreign = dag(
        "foreign",
        "  tasks: [{name: a, container: {image: docker.io/evil/miner}}]",
    );
    eventually(Duration::from_secs(60), "the policy in force", || async {
        let out = apply(&strict, &foreign, true);
        (!out.status.success()).then_some(())
    })
    .await;

    // the strict namespace: the chart's defaults
    accepted(
        &strict,
        &dag(
            "fine",
            "  tasks:\n  - {name: a, container: {image: e2e.local/hold}}\n  \
             - {name: b, serviceAccountName: default, container: {image: 'busybox:1.36'}}",
        ),
    );
    let err = refused(&strict, &foreign);
    assert!(
        err.contains("image \"docker.io/evil/miner\" is not from a registry"),
        "{err}"
    );
    assert!(
        err.contains("dagoperator.io/allowed-image-prefixes"),
        "{err}"
    );
    // a prefix without a trailing / is a whole name: busybox allows busybox:tag, not busyboxx
    let err = refused(
        &strict,
        &dag(
            "lookalike",
            "  tasks: [{name: a, container: {image: busyboxx}}]",
        ),
    );
    assert!(err.contains("\"busyboxx\""), "{err}");
    // every place an image is named: the default image of tasks that name none
    let err = refused(
        &strict,
        &dag(
            "defaults",
            "  taskDefaults: {image: quay.io/acme/etl}\n  tasks: [{name: a, container: {command: [sh]}}]",
        ),
    );
    assert!(err.contains("\"quay.io/acme/etl\""), "{err}");
    // the ServiceAccount: the task's, else the podTemplate's
    let err = refused(
        &strict,
        &dag(
            "as-admin",
            "  tasks: [{name: a, serviceAccountName: admin, container: {image: e2e.local/hold}}]",
        ),
    );
    assert!(err.contains("ServiceAccount \"admin\""), "{err}");
    assert!(err.contains("allows [default]"), "{err}");
    let err = refused(
        &strict,
        &dag(
            "template-sa",
            "  podTemplate: {serviceAccountName: deployer}\n  tasks: [{name: a, container: {image: e2e.local/hold}}]",
        ),
    );
    assert!(err.contains("ServiceAccount \"deployer\""), "{err}");
    // privileges
    for (what, security) in [
        ("privileged", "{privileged: true}"),
        ("escalation", "{allowPrivilegeEscalation: true}"),
        ("caps", "{capabilities: {add: [SYS_ADMIN]}}"),
    ] {
        let err = refused(
            &strict,
            &dag(
                what,
                &format!(
                    "  tasks: [{{name: a, container: {{image: e2e.local/hold, securityContext: {security}}}}}]"
                ),
            ),
        );
        assert!(err.contains("task a asks for privileges"), "{what}: {err}");
    }
    for (what, spec) in [
        (
            "host-task",
            "  tasks: [{name: a, volumes: [{name: root, hostPath: {path: /}}], container: {image: e2e.local/hold}}]",
        ),
        (
            "host-template",
            "  podTemplate: {volumes: [{name: root, hostPath: {path: /}}]}\n  tasks: [{name: a, container: {image: e2e.local/hold}}]",
        ),
    ] {
        let err = refused(&strict, &dag(what, spec));
        assert!(err.contains("mounts a hostPath"), "{what}: {err}");
    }
    // dropping privileges is fine
    accepted(
        &strict,
        &dag(
            "dropped",
            "  tasks: [{name: a, container: {image: e2e.local/hold, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}}}]",
        ),
    );
    // an update is checked as a create is
    let err = refused(
        &strict,
        &dag(
            "fine",
            "  tasks: [{name: a, container: {image: docker.io/evil/miner}}]",
        ),
    );
    assert!(err.contains("docker.io/evil/miner"), "{err}");

    // the open namespace: its own ServiceAccounts, registry and privileges
    accepted(
        &open,
        &dag(
            "etl",
            "  podTemplate: {serviceAccountName: etl, volumes: [{name: h, hostPath: {path: /tmp}}]}\n  \
             tasks:\n  - {name: a, container: {image: quay.io/acme/etl:2, securityContext: {privileged: true}}}\n  \
             - {name: b, serviceAccountName: reports, container: {image: quay.io/acme/report}}",
        ),
    );
    let err = refused(
        &open,
        &dag(
            "as-default",
            "  tasks: [{name: a, container: {image: quay.io/acme/etl}}]",
        ),
    );
    assert!(err.contains("ServiceAccount \"default\""), "{err}");
    assert!(err.contains("allows [etl, reports]"), "{err}");
    let err = refused(
        &open,
        &dag(
            "elsewhere",
            "  tasks: [{name: a, serviceAccountName: etl, container: {image: e2e.local/hold}}]",
        ),
    );
    assert!(err.contains("\"e2e.local/hold\""), "{err}");

    // a namespace the binding does not select is not checked
    let other = TestNamespace::new("vap-other");
    accepted(&other, &foreign);
}
