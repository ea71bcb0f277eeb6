//! History does not outlive its namespace (issue 28, finding 8; docs/SEMANTICS.md, "History
//! and namespaces"): a namespace with a DAG that made runs is deleted and created again with
//! the same name and a DAG of the same name. The new tenant's API shows none of the old runs,
//! the old run's id answers 404, the new DAG's first run on the old run's date is made (the
//! old trigger value and date do not suppress it), and the leader purges the old rows.

use std::time::Duration;

use dag_operator_e2e::rights::{ACT, READ};
use dag_operator_e2e::scenario::{dag_with_spec, setup};
use dag_operator_e2e::{eventually, plane};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

const DATE: &str = "2026-03-01T00:00:00Z";

/// The ids of the runs the API lists for `dag`, once it answers 200.
async fn listed_runs(
    op: &dag_operator_e2e::operator::Operator,
    ns: &str,
    dag: &str,
    token: &str,
) -> Vec<String> {
    let path = format!("/api/v1/namespaces/{ns}/dags/{dag}/runs");
    let (_, body) = eventually(Duration::from_secs(30), "the API lists runs", || {
        let path = path.clone();
        async move {
            let (code, body) = op.api(&path, Some(token)).await?;
            (code == 200).then_some((code, body))
        }
    })
    .await;
    json(&body)["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Triggers `dag` on [`DATE`] through the API until the DAG is in the API's cache: the code.
async fn trigger(
    op: &dag_operator_e2e::operator::Operator,
    ns: &str,
    dag: &str,
    token: &str,
) -> u16 {
    let path = format!("/api/v1/namespaces/{ns}/dags/{dag}/runs");
    let body = format!(r#"{{"logicalDate": "{DATE}"}}"#);
    let (code, answer) = eventually(Duration::from_secs(30), "the DAG in the API", || {
        let (path, body) = (path.clone(), body.clone());
        async move {
            let (code, answer) = op.api_post(&path, Some(token), &body).await?;
            (code != 404).then_some((code, answer))
        }
    })
    .await;
    assert!(code < 300, "{code}: {answer}");
    code
}

async fn rows_of_run(pool: &sqlx::PgPool, id: &str) -> i64 {
    let id = uuid::Uuid::parse_str(id).expect("a run id");
    sqlx::query_scalar("SELECT count(*) FROM dag_runs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_namespace_created_again_sees_none_of_the_old_tenants_history() {
    let s = setup("nshist").await;
    let ns = s.ns.name.clone();
    let dag = dag_with_spec(
        "etl",
        "  tasks:\n  - {name: a, container: {image: busybox}}\n",
    );
    s.apply(&dag);
    let op = s.operator(&[]);

    // the old tenant: one run, on DATE
    let old_token = s.ns.account("runner", &[READ, ACT]);
    trigger(&op, &ns, "etl", &old_token).await;
    let old = s
        .runs_until("etl", "the old tenant's run", |r| !r.is_empty())
        .await;
    let old_id = old[0].id.to_string();
    assert_eq!(
        listed_runs(&op, &ns, "etl", &old_token).await,
        std::slice::from_ref(&old_id)
    );

    // the namespace goes (the plane's namespace controller empties it), and comes back
    plane().kubectl_ok(
        &["delete", "namespace", &ns, "--wait=true", "--timeout=180s"],
        None,
    );
    plane().kubectl_ok(&["create", "namespace", &ns], None);
    s.apply(&dag);
    let new_token = s.ns.account("runner", &[READ, ACT]);

    // the new tenant's API shows none of the old history, at once
    assert!(
        listed_runs(&op, &ns, "etl", &new_token).await.is_empty(),
        "the new tenant sees the old runs"
    );
    let (code, body) = op
        .api(
            &format!("/api/v1/namespaces/{ns}/runs/{old_id}"),
            Some(&new_token),
        )
        .await
        .expect("an answer");
    assert_eq!(code, 404, "{body}");

    // its first run on the old run's date is made: the date is not taken by the old run
    trigger(&op, &ns, "etl", &new_token).await;
    let new_id = eventually(Duration::from_secs(60), "the new tenant's run", || {
        let (op, ns, token) = (&op, ns.clone(), new_token.clone());
        async move {
            let ids = listed_runs(op, &ns, "etl", &token).await;
            ids.first().cloned()
        }
    })
    .await;
    assert_ne!(new_id, old_id);
    let listed = listed_runs(&op, &ns, "etl", &new_token).await;
    assert_eq!(
        listed,
        std::slice::from_ref(&new_id),
        "only the new run is listed"
    );

    // and the old rows are purged by the leader
    let pool = s.store.pool().clone();
    eventually(Duration::from_secs(60), "the old run purged", || {
        let (pool, old_id) = (pool.clone(), old_id.clone());
        async move { (rows_of_run(&pool, &old_id).await == 0).then_some(()) }
    })
    .await;
    assert_eq!(rows_of_run(&pool, &new_id).await, 1);
}
