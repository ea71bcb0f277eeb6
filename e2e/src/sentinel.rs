//! A Redis Sentinel group of the test's own, beside the plane's Redis and from the same
//! `redis-server` the plane installs: a master, one replica and one Sentinel (quorum 1) on
//! loopback ports, in a directory of its own, so a test may kill the master without touching
//! the Redis every other test shares. Stopped (every process killed) when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::eventually;
use crate::operator::free_port;

/// The name the Sentinel monitors the master under.
pub const MASTER_NAME: &str = "dagop-e2e";

struct Node {
    port: u16,
    child: Option<Child>,
}

pub struct SentinelGroup {
    dir: PathBuf,
    nodes: Vec<Node>,
    sentinel: Option<Child>,
    pub sentinel_port: u16,
}

fn redis_cli(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (installed by e2e/plane up)")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn spawn(dir: &Path, conf: &str, extra: &[&str], log: &str) -> Child {
    let log = fs::File::create(dir.join(log)).expect("log file");
    let err = log.try_clone().expect("log file");
    Command::new("redis-server")
        .arg(dir.join(conf))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("redis-server starts (installed by e2e/plane up)")
}

impl SentinelGroup {
    /// Starts the master, its replica (synced) and a Sentinel that knows both.
    pub async fn start(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("dagop-sentinel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("sentinel dir");
        let master = free_port();
        let replica = free_port();
        let sentinel_port = free_port();
        let mut nodes = Vec::new();
        for (i, port) in [master, replica].into_iter().enumerate() {
            let data = dir.join(format!("node{i}"));
            fs::create_dir_all(&data).expect("node dir");
            let mut conf = format!(
                "bind 127.0.0.1\nport {port}\ndir {}\nsave \"\"\nappendonly no\n",
                data.display()
            );
            if port == replica {
                conf.push_str(&format!("replicaof 127.0.0.1 {master}\n"));
            }
            let file = format!("node{i}.conf");
            fs::write(dir.join(&file), conf).expect("node conf");
            let child = spawn(&dir, &file, &[], &format!("node{i}.log"));
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let mut group = SentinelGroup {
            dir,
            nodes,
            sentinel: None,
            sentinel_port,
        };
        eventually(Duration::from_secs(30), "the replica in sync", || {
            let info = text(&redis_cli(replica, &["info", "replication"]));
            async move { info.contains("master_link_status:up").then_some(()) }
        })
        .await;
        fs::write(
            group.dir.join("sentinel.conf"),
            format!(
                "bind 127.0.0.1\nport {sentinel_port}\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 10000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = group.dir.display()
            ),
        )
        .expect("sentinel conf");
        group.sentinel = Some(spawn(
            &group.dir,
            "sentinel.conf",
            &["--sentinel"],
            "sentinel.log",
        ));
        eventually(
            Duration::from_secs(30),
            "the Sentinel to know the replica",
            || {
                let replicas = text(&redis_cli(
                    sentinel_port,
                    &["sentinel", "replicas", MASTER_NAME],
                ));
                let port = replica.to_string();
                async move { replicas.contains(&port).then_some(()) }
            },
        )
        .await;
        group
    }

    /// `host:port` of the Sentinel, for `--redis-sentinel`.
    pub fn sentinel_address(&self) -> String {
        format!("127.0.0.1:{}", self.sentinel_port)
    }

    /// The port of the master the Sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let out = text(&redis_cli(
            self.sentinel_port,
            &["sentinel", "get-master-addr-by-name", MASTER_NAME],
        ));
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }

    /// Runs `redis-cli` against the node on `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        text(&redis_cli(port, args))
    }

    /// Kills the master (SIGKILL: no goodbye to the replica or the Sentinel) and waits until
    /// the Sentinel has promoted the replica. Returns the new master's port.
    pub async fn fail_over(&mut self) -> u16 {
        let old = self.master_port().expect("a master");
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == old)
            .expect("the master is ours");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let new = eventually(
            Duration::from_secs(60),
            "the Sentinel to promote the replica",
            || {
                let now = self.master_port();
                async move { now.filter(|p| *p != old) }
            },
        )
        .await;
        eventually(
            Duration::from_secs(30),
            "the new master to take writes",
            || {
                let role = self.cli(new, &["role"]);
                async move { role.starts_with("master").then_some(()) }
            },
        )
        .await;
        new
    }

    /// The Sentinel's log, for a failure message.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        let children = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.as_mut())
            .chain(self.sentinel.as_mut());
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
