//! A real 3-node RabbitMQ cluster on this machine, for the tests that lose broker nodes.
//!
//! [`RabbitCluster::start`] runs `scripts/rabbit-cluster up` (three `rabbitmq-server` nodes
//! with their own names, ports and data directories, joined with `rabbitmqctl join_cluster`)
//! in a temporary directory and tears the cluster down on drop. Nodes are numbered 1 to 3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tempfile::TempDir;

use crate::repo_root;

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// 1, 2 or 3.
    pub index: usize,
    /// Erlang node name.
    pub name: String,
    /// AMQP port on 127.0.0.1.
    pub port: u16,
}

/// A running 3-node cluster; stopped and removed on drop.
pub struct RabbitCluster {
    /// Holds the cluster directory; removed on drop (after `down`).
    _tmp: TempDir,
    /// The directory `scripts/rabbit-cluster` keeps the nodes' data, logs and ports in.
    dir: PathBuf,
    nodes: Vec<ClusterNode>,
}

impl RabbitCluster {
    /// Forms the cluster. Panics, with the script's output, if it cannot: a machine without
    /// RabbitMQ cannot run these tests and must not pass them.
    pub fn start() -> RabbitCluster {
        let tmp = tempfile::Builder::new()
            .prefix("warren-cluster-")
            .tempdir()
            .expect("a temporary directory for the cluster");
        let dir = tmp.path().join("c");
        let started = Instant::now();
        let stdout = script(&["up", path_str(&dir)]);
        let nodes: Vec<ClusterNode> = stdout
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                Some(ClusterNode {
                    index: fields.next()?.parse().ok()?,
                    name: fields.next()?.to_owned(),
                    port: fields.next()?.parse().ok()?,
                })
            })
            .collect();
        assert_eq!(nodes.len(), 3, "rabbit-cluster up printed {stdout:?}");
        eprintln!(
            "cluster of 3 nodes formed in {:.1} s: {nodes:?}",
            started.elapsed().as_secs_f64()
        );
        RabbitCluster {
            _tmp: tmp,
            dir,
            nodes,
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// `AMQP_URL` naming every node: the first as a full URL, the others as `host:port`.
    pub fn amqp_url(&self) -> String {
        let mut url = self.node_url(1);
        for node in &self.nodes[1..] {
            url.push_str(&format!(",127.0.0.1:{}", node.port));
        }
        url
    }

    /// The URL of node `index` alone.
    pub fn node_url(&self, index: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.node(index).port)
    }

    /// `host:port` of node `index`, as the worker's metrics and logs name it.
    pub fn node_label(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.node(index).port)
    }

    /// Stops node `index` hard: `kill -9` of its Erlang VM; returns once it is gone.
    pub fn kill(&self, index: usize) {
        script(&["kill", self.dir_str(), &index.to_string()]);
    }

    /// Stops node `index` cleanly; returns once it is gone.
    pub fn stop(&self, index: usize) {
        script(&["stop", self.dir_str(), &index.to_string()]);
    }

    /// Starts node `index` again; returns once it runs and is back in the cluster.
    pub fn start_node(&self, index: usize) {
        script(&["start", self.dir_str(), &index.to_string()]);
    }

    /// The node leading quorum queue `queue`, asked of a running node.
    pub fn leader(&self, queue: &str) -> usize {
        let stdout = script(&["leader", self.dir_str(), queue]);
        stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("rabbit-cluster leader printed {stdout:?}"))
    }

    fn node(&self, index: usize) -> &ClusterNode {
        &self.nodes[index - 1]
    }

    fn dir_str(&self) -> &str {
        path_str(&self.dir)
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let status = Command::new("bash")
            .arg(script_path())
            .args(["down", self.dir_str()])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("rabbit-cluster down failed ({status:?}); nodes may be left running");
        }
    }
}

fn script_path() -> PathBuf {
    repo_root().join("scripts/rabbit-cluster")
}

/// Runs `scripts/rabbit-cluster args...`; panics with its output unless it succeeds.
fn script(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(script_path())
        .args(args)
        .output()
        .expect("bash runs scripts/rabbit-cluster");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/rabbit-cluster {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
