//! TLS to PostgreSQL (issue 17): the plane's PostgreSQL serves TLS with a certificate from the
//! plane's CA (e2e/plane). With `sslmode=verify-full` and that CA the operator works end to
//! end over TLS; with another CA it refuses the server, says why in one line, stays unready
//! and writes nothing.

use std::time::Duration;

use dag_operator::store::RunState;
use dag_operator_e2e::scenario::{dag_yaml, setup};
use dag_operator_e2e::{eventually, plane};

/// The test database's URL with TLS parameters.
fn with_tls(url: &str, mode: &str, ca: &std::path::Path) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode={mode}&sslrootcert={}", ca.display())
}

#[tokio::test]
async fn verify_full_postgres_runs_end_to_end_over_tls() {
    let s = setup("tls-pg").await;
    s.apply(&dag_yaml("etl", "  maxActiveRuns: 5"));
    let url = with_tls(&s.db.url, "verify-full", &plane().ca);
    let op = dag_operator_e2e::operator::Operator::start(&s.ns.name, &url, &[]);
    s.cli(&[
        "trigger",
        "etl",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2026-01-01T00:00:00Z",
    ]);
    eventually(Duration::from_secs(60), "the run succeeds", || async {
        let runs = s.runs("etl").await;
        (runs.len() == 1 && runs[0].state == RunState::Success).then_some(())
    })
    .await;
    // the operator's connections are TLS ones
    let tls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'dag-operator' AND a.datname = current_database() AND s.ssl",
    )
    .fetch_one(s.store.pool())
    .await
    .expect("pg_stat_ssl");
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'dag-operator' AND a.datname = current_database() AND NOT s.ssl",
    )
    .fetch_one(s.store.pool())
    .await
    .expect("pg_stat_ssl");
    assert!(
        tls >= 1 && plain == 0,
        "TLS connections {tls}, plain {plain}"
    );
    drop(op);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_in_one_line_and_nothing_is_written() {
    let s = setup("tls-pg-wrong").await;
    s.apply(&dag_yaml("etl", "  maxActiveRuns: 5"));
    s.cli(&[
        "trigger",
        "etl",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2026-01-01T00:00:00Z",
    ]);
    let url = with_tls(&s.db.url, "verify-full", &plane().other_ca);
    let op = dag_operator_e2e::operator::Operator::start(&s.ns.name, &url, &[]);
    let line = eventually(Duration::from_secs(30), "the refusal logged", || {
        let log = op.log_tail();
        async move {
            log.lines()
                .find(|l| l.contains("cannot migrate the database yet"))
                .map(str::to_string)
        }
    })
    .await;
    assert!(
        line.to_lowercase().contains("certificate"),
        "the line says why: {line}"
    );
    let (code, _) = op.get("/readyz").await.expect("/readyz answers");
    assert_eq!(code, 503, "not ready without its database");
    // the schema step failed, and nothing is written before it succeeds
    assert!(s.runs("etl").await.is_empty(), "nothing written");
    drop(op);
}

/// A DAG whose one task holds a slot of Pool `db` until told to finish.
fn pooled(name: &str) -> String {
    dag_operator_e2e::scenario::dag_with_spec(
        name,
        "  tasks:\n  - {name: t, pool: db, container: {image: e2e.local/hold}}\n",
    )
}

#[tokio::test]
async fn rediss_with_the_planes_ca_holds_the_limits() {
    let s = setup("tls-redis").await;
    s.apply(
        "apiVersion: dagoperator.io/v1alpha1\nkind: Pool\nmetadata: {name: db}\nspec:\n  slots: 1\n",
    );
    s.apply(&pooled("held"));
    let ca = plane().ca.display().to_string();
    let op = s.operator(&[
        "--redis-url",
        &plane().redis_tls_url,
        "--redis-ca-file",
        &ca,
    ]);
    s.cli(&[
        "trigger",
        "held",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2026-01-01T00:00:00Z",
    ]);
    let run = s
        .runs_until("held", "the run", |r| !r.is_empty())
        .await
        .remove(0);
    s.pod_of_run(&run).await;
    // the slot is held in Redis (the same server, read here on its plain port)
    let prefix = format!("dagop-{}", s.ns.name);
    let keys = eventually(Duration::from_secs(30), "the pool's lease in Redis", || {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-u",
                &plane().redis_url,
                "--scan",
                "--pattern",
                &format!("{prefix}:*pool*"),
            ])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        async move { (!out.trim().is_empty()).then_some(out) }
    })
    .await;
    assert!(keys.contains(&prefix), "{keys}");
    let (code, _) = op.get("/readyz").await.expect("/readyz");
    assert_eq!(code, 200);
    s.all_pods_outcome("succeed");
    eventually(Duration::from_secs(60), "the run succeeds", || async {
        (s.runs("held").await[0].state == RunState::Success).then_some(())
    })
    .await;
    drop(op);
}

#[tokio::test]
async fn rediss_with_a_wrong_ca_fails_closed() {
    let s = setup("tls-redis-wrong").await;
    s.apply(&dag_yaml("etl", "  maxActiveRuns: 5"));
    let ca = plane().other_ca.display().to_string();
    let op = s.operator(&[
        "--redis-url",
        &plane().redis_tls_url,
        "--redis-ca-file",
        &ca,
    ]);
    s.cli(&[
        "trigger",
        "etl",
        "-n",
        &s.ns.name,
        "--logical-date",
        "2026-01-01T00:00:00Z",
    ]);
    let (code, body) = eventually(Duration::from_secs(30), "/readyz to fail", || async {
        op.get("/readyz").await.filter(|(code, _)| *code == 503)
    })
    .await;
    assert_eq!(code, 503, "{body}");
    let line = eventually(Duration::from_secs(30), "the refusal logged", || {
        let log = op.log_tail();
        async move {
            log.lines()
                .find(|l| l.to_lowercase().contains("certificate"))
                .map(str::to_string)
        }
    })
    .await;
    assert!(
        line.to_lowercase().contains("redis") || line.contains("gate"),
        "{line}"
    );
    assert!(
        s.runs("etl").await.is_empty(),
        "no run admitted without the gate"
    );
    drop(op);
}
