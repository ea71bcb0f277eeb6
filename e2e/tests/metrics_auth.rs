//! `/metrics` behind `--metrics-auth` (issue 28, finding 10): its series name every tenant's
//! namespaces, DAGs and Pools, so with the flag (on in the chart) a scrape must bring a bearer
//! token the API server accepts whose owner may `get` the non-resource URL `/metrics` — the
//! chart's `<release>-metrics-reader` ClusterRole grants it. No token → 401, a token without
//! the right → 403, a reader's → 200 with the metrics; the probes stay open.

use std::time::Duration;

use dag_operator_e2e::chart::render;
use dag_operator_e2e::scenario::setup;
use dag_operator_e2e::{eventually, plane};

/// Cluster-scoped objects this test made, deleted when it ends.
struct ClusterObjects(Vec<(&'static str, String)>);

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = plane().kubectl(&["delete", kind, name, "--ignore-not-found"], None);
        }
    }
}

#[tokio::test]
async fn metrics_answer_only_tokens_that_may_get_the_metrics_url() {
    let s = setup("metrics-auth").await;
    let ns = s.ns.name.clone();

    // the chart's metrics-reader ClusterRole, under a release name of this test's own
    let objects = render(&[&format!("fullnameOverride={ns}")]);
    let reader_name = format!("{ns}-metrics-reader");
    let reader = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == reader_name.as_str())
        .unwrap_or_else(|| panic!("the chart renders no ClusterRole {reader_name}"));
    let binding = format!("{ns}-scraper");
    let _cleanup = ClusterObjects(vec![
        ("clusterrolebinding", binding.clone()),
        ("clusterrole", reader_name.clone()),
    ]);
    plane().kubectl_ok(&["apply", "-f", "-"], Some(&reader.to_string()));
    for sa in ["scraper", "stranger"] {
        s.ns.kubectl_ok(&["create", "serviceaccount", sa], None);
    }
    plane().kubectl_ok(
        &[
            "create",
            "clusterrolebinding",
            &binding,
            &format!("--clusterrole={reader_name}"),
            &format!("--serviceaccount={ns}:scraper"),
        ],
        None,
    );
    let token = |sa: &str| {
        s.ns.kubectl_ok(&["create", "token", sa], None)
            .trim()
            .to_string()
    };
    let (scraper, stranger) = (token("scraper"), token("stranger"));

    let op = s.operator(&["--metrics-auth"]);
    eventually(Duration::from_secs(60), "the operator's probes", || async {
        op.get("/healthz").await.filter(|(code, _)| *code == 200)
    })
    .await;

    // no token: 401, and not one series
    let (code, body) = op.get("/metrics").await.expect("an answer");
    assert_eq!(code, 401, "{body}\n{}", op.log_tail());
    assert!(!body.contains("dagop_"), "{body}");
    // a token the API server does not know: 401
    let (code, body) = op
        .get_as("/metrics", Some("not-a-token"))
        .await
        .expect("an answer");
    assert_eq!(code, 401, "{body}");
    // a valid token whose owner may not get /metrics: 403, naming who was refused
    let (code, body) = op
        .get_as("/metrics", Some(&stranger))
        .await
        .expect("an answer");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{ns}:stranger")),
        "{body}"
    );
    assert!(!body.contains("dagop_"), "{body}");
    // the metrics-reader's token: the metrics (the binding is seen by the authorizer shortly
    // after it is made, and the operator keeps a refusal for a few seconds: polled)
    let body = eventually(Duration::from_secs(30), "a reader's scrape", || async {
        op.get_as("/metrics", Some(&scraper))
            .await
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
    })
    .await;
    assert!(body.contains("dagop_leader"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    // the probes ask for no token
    let (code, _) = op.get("/healthz").await.expect("an answer");
    assert_eq!(code, 200);
    let (code, body) = op.get("/readyz").await.expect("an answer");
    assert!(code == 200 || code == 503, "{code} {body}");
    // and the stranger is still refused
    let (code, _) = op
        .get_as("/metrics", Some(&stranger))
        .await
        .expect("an answer");
    assert_eq!(code, 403);
}
