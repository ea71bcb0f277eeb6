//! Stopping the operator as Kubernetes does (SIGTERM): it ends promptly, and a leader gives its
//! Lease up so a standby takes over at once instead of after the lease duration.

use std::time::Duration;

use dag_operator_e2e::eventually;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::scenario::setup;

#[tokio::test]
async fn sigterm_ends_a_leader_promptly_and_frees_its_lease() {
    let s = setup("sigterm").await;
    let ns = s.ns.name.clone();
    let args = [
        "--leader-election=true",
        "--leader-election-namespace",
        ns.as_str(),
        "--leader-lease-duration",
        "60s",
    ];
    let mut op = s.operator(&args);
    let holder = eventually(Duration::from_secs(60), "the Lease held", || {
        let holder = s.lease_holder();
        async move { (!holder.is_empty()).then_some(holder) }
    })
    .await;
    op.terminate();
    eventually(Duration::from_secs(15), "the operator to exit", || {
        let alive = op.alive();
        async move { (!alive).then_some(()) }
    })
    .await;
    let out = s.lease_holder();
    assert!(out.is_empty(), "{holder} still holds the Lease: {out:?}");
    // a standby takes over at once, not after the 60 s lease
    let next = s.operator(&args);
    let (code, _) = eventually(Duration::from_secs(20), "the next leader", || async {
        let (code, body) = next.get("/metrics").await?;
        body.lines()
            .any(|l| l == "dagop_leader 1")
            .then_some((code, ()))
    })
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn sigterm_ends_an_operator_the_api_server_refuses() {
    let s = setup("sigterm-refused").await;
    // a kubeconfig whose token the API server rejects: every watch fails
    let plane = dag_operator_e2e::plane();
    let server = plane.kubectl_ok(
        &[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    );
    let ca = plane.kubectl_ok(
        &[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ],
        None,
    );
    let path = std::env::temp_dir().join(format!("dagop-e2e-{}-kubeconfig", s.ns.name));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}}}]\nusers: [{{name: u, user: {{token: not-a-token}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("kubeconfig");
    let kubeconfig = path.display().to_string();
    let mut op = Operator::start(&s.ns.name, &s.db.url, &["--kubeconfig", &kubeconfig]);
    eventually(Duration::from_secs(30), "the operator up", || async {
        op.get("/healthz").await.map(|_| ())
    })
    .await;
    op.terminate();
    eventually(Duration::from_secs(15), "the operator to exit", || {
        let alive = op.alive();
        async move { (!alive).then_some(()) }
    })
    .await;
}
