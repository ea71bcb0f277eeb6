//! The chart installed for real (issue 26): `helm install` on the plane with two replicas on
//! the real node, from the image `scripts/images` made (no container engine), in-cluster
//! config, PostgreSQL and Redis on the host; the Pods pass their probes, elect a leader
//! through the Lease and schedule an every-second DAG whose tasks run in real containers.
//! Killing the leader's Pod hands over with no duplicate and no gap. Also: the image holds
//! what the Dockerfile's final stage describes.

mod support;

use std::process::Command;
use std::time::Duration;

use dag_operator::store::RunState;
use dag_operator_e2e::chart::{chart, helm_ok};
use dag_operator_e2e::node::{TASK_IMAGE, operator_image, real_namespace, real_node};
use dag_operator_e2e::scenario::{Setup, dag_with_spec};
use dag_operator_e2e::{assert_one_run_per_tick, db::TestDb, eventually, plane};
use serde_json::Value;
use support::Release;

/// A file of an OCI archive (the image layout in a tar), as text.
fn archive_file(tar: &std::path::Path, name: &str) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg(name)
        .output()
        .expect("tar runs");
    assert!(out.status.success(), "{name} in {}", tar.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blob(tar: &std::path::Path, digest: &str) -> Value {
    let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    serde_json::from_str(&archive_file(tar, &name)).expect("a JSON blob")
}

/// The value of the Dockerfile's last `KEY` instruction (its final stage).
fn dockerfile(key: &str) -> String {
    let text = std::fs::read_to_string(plane().repo.join("Dockerfile")).expect("Dockerfile");
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} in the Dockerfile"))
        .trim()
        .to_string()
}

#[test]
fn the_image_holds_what_the_dockerfile_describes() {
    let tar = operator_image();
    let index: Value = serde_json::from_str(&archive_file(&tar, "index.json")).expect("index");
    let manifest = blob(
        &tar,
        index["manifests"][0]["digest"].as_str().expect("digest"),
    );
    let config = blob(&tar, manifest["config"]["digest"].as_str().expect("digest"));
    let c = &config["config"];
    assert_eq!(c["User"], dockerfile("USER"));
    let entrypoint: Value = serde_json::from_str(&dockerfile("ENTRYPOINT")).expect("JSON form");
    assert_eq!(c["Entrypoint"], entrypoint);
    let cmd: Value = serde_json::from_str(&dockerfile("CMD")).expect("JSON form");
    assert_eq!(c["Cmd"], cmd);
    // COPY --from=build /dag-operator /usr/local/bin/dag-operator: the binary's path
    let copy = dockerfile("COPY");
    let path = copy.split_whitespace().last().expect("a destination");
    assert_eq!(entrypoint[0], path);
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("a layer")
        .trim_start_matches("sha256:")
        .to_string();
    let listing = Command::new("bash")
        .arg("-c")
        .arg("tar -xOf \"$0\" \"blobs/sha256/$1\" | tar -tvf -")
        .arg(&tar)
        .arg(&layer)
        .output()
        .expect("tar runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(&format!(".{path}"))),
        "{listing}"
    );
    // the name the chart's default values give
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        format!(
            "ghcr.io/dag-operator/dag-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[tokio::test]
async fn the_chart_runs_two_replicas_on_the_real_node_and_a_killed_leader_hands_over() {
    operator_image();
    plane().install_crds();
    dag_operator_e2e::node::task_image();
    let node = real_node();
    let ns = real_namespace("chart-real");
    let db = TestDb::create("e2e_chart_real").await;
    let store = db.migrated().await;
    let s = Setup { ns, db, store };
    let release = Release {
        name: "dag-operator".into(),
        namespace: s.ns.name.clone(),
    };
    // the Pods reach PostgreSQL and Redis on the host through the node's bridge
    let db_name = s.db.url.rsplit('/').next().expect("a database name");
    let base = node
        .pod_database_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .expect("a URL");
    let sets = [
        format!("database.url={base}/{db_name}"),
        format!("redis.url={}", node.pod_redis_url),
        format!("config.redisKeyPrefix=dagop-{}", s.ns.name),
        format!("watchNamespace={}", s.ns.name),
        "replicaCount=2".to_string(),
        "crds.install=false".to_string(),
        "config.scheduleInterval=1s".to_string(),
        "config.podRetention=10s".to_string(),
        "config.logFormat=text".to_string(),
    ];
    let chart = chart();
    let mut args = vec![
        "install",
        release.name.as_str(),
        chart.as_str(),
        "--namespace",
        s.ns.name.as_str(),
        "--wait",
        "--timeout",
        "240s",
    ];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    helm_ok(&args);

    // two Pods, on the real node, from the local image, Ready (their probes pass)
    let pods = || -> Vec<Value> {
        let out = s.ns.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=dag-operator",
                "-o",
                "json",
            ],
            None,
        );
        let list: Value = serde_json::from_str(&out).expect("json");
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let ready = |p: &Value| {
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        }) && p["metadata"]["deletionTimestamp"].is_null()
    };
    // helm's --wait asks for the Deployment's available replicas less maxUnavailable (1)
    let first = eventually(Duration::from_secs(120), "two Ready replicas", || {
        let all = pods();
        let n = all.iter().filter(|p| ready(p)).count();
        async move { (all.len() == 2 && n == 2).then_some(all) }
    })
    .await;
    for p in &first {
        assert_eq!(p["spec"]["nodeName"], node.name.as_str());
        assert!(ready(p), "{p}");
        let status = &p["status"]["containerStatuses"][0];
        assert!(
            status["imageID"]
                .as_str()
                .is_some_and(|i| i.contains("sha256:")),
            "{status}"
        );
    }
    // one of them leads, through the Lease, with in-cluster config
    // the holder is "<Pod name>_<a random id of the process>"
    let pod_of = |holder: &str| holder.split('_').next().unwrap_or_default().to_string();
    let leader = eventually(Duration::from_secs(60), "a leader", || {
        let name = pod_of(&s.lease_holder());
        async move { (!name.is_empty()).then_some(name) }
    })
    .await;
    assert!(
        first
            .iter()
            .any(|p| p["metadata"]["name"] == leader.as_str()),
        "the leader {leader} is one of the Pods"
    );

    // a DAG every second, its tasks on the real node
    s.apply(&dag_with_spec(
        "tick",
        &format!(
            "  schedule: '* * * * * *'\n  maxActiveRuns: 20\n  tasks:\n  - name: t\n    container: {{image: '{TASK_IMAGE}', command: [sh, -c, 'echo $LOGICAL_DATE']}}\n"
        ),
    ));
    let before = s
        .runs_until("tick", "ten runs succeeded", |r| {
            r.iter().filter(|r| r.state == RunState::Success).count() >= 10
        })
        .await;
    let killed_at = before.len();

    // kill the leader's Pod: the other takes the Lease and goes on where it stopped
    s.ns.kubectl_ok(
        &["delete", "pod", &leader, "--grace-period=0", "--force"],
        None,
    );
    let next = eventually(Duration::from_secs(60), "a new leader", || {
        let name = pod_of(&s.lease_holder());
        let leader = leader.clone();
        async move { (!name.is_empty() && name != leader).then_some(name) }
    })
    .await;
    // the standby, or the Pod the Deployment made in the killed one's place, whichever
    // takes the Lease first once it has expired
    assert_ne!(next, leader);
    let runs = s
        .runs_until("tick", "ten runs more after the handover", |r| {
            r.len() >= killed_at + 10
        })
        .await;
    assert_one_run_per_tick(&runs, 1);
    let runs = s
        .runs_until("tick", "the runs up to the handover succeeded", |r| {
            r.iter()
                .take(killed_at + 5)
                .all(|r| r.state == RunState::Success)
        })
        .await;
    assert_one_run_per_tick(&runs, 1);
    // the Deployment replaced the killed Pod
    eventually(Duration::from_secs(120), "two Ready replicas again", || {
        let n = pods().iter().filter(|p| ready(p)).count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    s.ns.kubectl_ok(&["delete", "dag", "tick"], None);
    release.uninstall();
}
