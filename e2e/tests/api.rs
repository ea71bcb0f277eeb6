//! The HTTP API (issue 16), authenticated by TokenReview and authorized by
//! SubjectAccessReview on the local plane: a ServiceAccount allowed `get dags` in one namespace
//! reads that namespace's DAGs, runs and tries, and nothing else.

use std::time::Duration;

use dag_operator_e2e::scenario::{dag_yaml, setup};
use dag_operator_e2e::{TestNamespace, eventually};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn a_viewer_reads_its_namespace_and_nothing_else() {
    let s = setup("api-a").await;
    let other = TestNamespace::new("api-b");
    let a = s.ns.name.clone();
    s.ns.kubectl_ok(&["create", "serviceaccount", "viewer"], None);
    s.ns.kubectl_ok(
        &[
            "create",
            "role",
            "dag-viewer",
            "--verb=get,list,watch",
            "--resource=dags.dagoperator.io",
        ],
        None,
    );
    s.ns.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "viewer",
            "--role=dag-viewer",
            &format!("--serviceaccount={a}:viewer"),
        ],
        None,
    );
    let token = s.ns.kubectl_ok(&["create", "token", "viewer"], None);
    let token = token.trim();
    s.apply(&dag_yaml("etl", "  maxActiveRuns: 5"));
    other.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&dag_yaml("secret-etl", "  maxActiveRuns: 5")),
    );
    let op = s.operator(&[]);
    s.cli(&[
        "trigger",
        "etl",
        "-n",
        &a,
        "--logical-date",
        "2024-03-01T00:00:00Z",
    ]);
    let run = s
        .runs_until("etl", "the triggered run", |r| !r.is_empty())
        .await
        .remove(0);

    // no token, a bad token: 401
    let listing = format!("/api/v1/namespaces/{a}/dags");
    let (code, _) = eventually(Duration::from_secs(30), "the API answers", || {
        let (op, path) = (&op, listing.clone());
        async move { op.api(&path, None).await }
    })
    .await;
    assert_eq!(code, 401);
    assert_eq!(
        op.api(&listing, Some("not-a-token")).await.map(|r| r.0),
        Some(401)
    );

    // its namespace: the DAG with its runs, the runs with their tasks, a run with its tries
    let dags = eventually(Duration::from_secs(30), "the DAG listed", || {
        let (op, path) = (&op, listing.clone());
        async move {
            let (code, body) = op.api(&path, Some(token)).await?;
            assert_eq!(code, 200, "{body}");
            let v = json(&body);
            (v["items"].as_array()?.iter().any(|d| d["name"] == "etl")).then_some(v)
        }
    })
    .await;
    assert_eq!(dags["items"][0]["namespace"], a.as_str());
    let (code, body) = op
        .api(
            &format!("/api/v1/namespaces/{a}/dags/etl/runs?limit=10"),
            Some(token),
        )
        .await
        .expect("runs");
    assert_eq!(code, 200, "{body}");
    let runs = json(&body);
    assert_eq!(runs["items"][0]["id"], run.id.to_string());
    assert_eq!(runs["items"][0]["tasks"][0]["task"], "a", "{runs}");
    let (code, body) = op
        .api(
            &format!("/api/v1/namespaces/{a}/runs/{}", run.id),
            Some(token),
        )
        .await
        .expect("run");
    assert_eq!(code, 200, "{body}");
    let one = json(&body);
    assert_eq!(one["logicalDate"], "2024-03-01T00:00:00+00:00");
    assert!(
        one["tries"].as_array().is_some_and(|t| !t.is_empty()),
        "{one}"
    );

    // the UI's pages, on the same token
    let (code, page) = op.api("/", Some(token)).await.expect("index");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains(&format!("/ui/namespaces/{a}/dags/etl")),
        "{page}"
    );
    assert!(!page.contains("secret-etl"), "{page}");
    let (code, page) = op
        .api(&format!("/ui/namespaces/{a}/dags/etl"), Some(token))
        .await
        .expect("grid");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("data-state="), "the grid has cells: {page}");
    assert!(page.contains(&run.id.to_string()), "{page}");
    let (code, page) = op
        .api(&format!("/ui/namespaces/{a}/runs/{}", run.id), Some(token))
        .await
        .expect("run page");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("id=\"task-a\""), "the try is listed: {page}");

    // another namespace: 403; the cluster-wide listing holds only its own namespace
    let (code, body) = op
        .api(
            &format!("/api/v1/namespaces/{}/dags", other.name),
            Some(token),
        )
        .await
        .expect("answer");
    assert_eq!(code, 403, "{body}");
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot get dags")
    );
    let (code, body) = op.api("/api/v1/dags", Some(token)).await.expect("answer");
    assert_eq!(code, 200, "{body}");
    let all = json(&body);
    let namespaces: Vec<&str> = all["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|d| d["namespace"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(namespaces.iter().all(|ns| *ns == a), "{namespaces:?}");
    assert!(!body.contains("secret-etl"));
    // a run of its namespace asked for under another: not found
    let (code, _) = op
        .api(
            &format!("/api/v1/namespaces/{}/runs/{}", other.name, run.id),
            Some(token),
        )
        .await
        .expect("answer");
    assert_eq!(code, 403);
}
