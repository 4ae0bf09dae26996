//! A JetStream cluster of real `nats-server` processes on loopback: each node with its own
//! client, monitoring and route ports and its own store directory, all routed to each other
//! under one cluster name. Nodes can be killed (SIGKILL) and restarted on the same ports
//! with the same store. Dropping the cluster kills every node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::{Process, eventually, free_port};

/// The cluster name every node carries.
pub const CLUSTER_NAME: &str = "tally-e2e";

/// One node's ports.
#[derive(Debug, Clone)]
pub struct Node {
    /// `n1`, `n2`, …: the server name JetStream reports (stream leaders, peers).
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
    pub route_port: u16,
}

impl Node {
    /// This node's client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

pub struct NatsCluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    processes: Vec<Process>,
    http: reqwest::Client,
}

impl NatsCluster {
    /// Starts `size` routed nodes with JetStream in `dir` and waits until JetStream has a
    /// meta leader and every node is healthy.
    pub async fn start(dir: &Path, size: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let nodes: Vec<Node> = (1..=size)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                monitor_port: free_port(),
                route_port: free_port(),
            })
            .collect();
        let mut cluster = Self {
            dir: dir.to_owned(),
            nodes,
            processes: Vec::new(),
            http: reqwest::Client::new(),
        };
        for i in 0..size {
            let process = cluster.spawn(i)?;
            cluster.processes.push(process);
        }
        for i in 0..size {
            cluster.wait_healthy(i).await?;
        }
        cluster.wait_meta_leader().await?;
        Ok(cluster)
    }

    fn spawn(&self, i: usize) -> anyhow::Result<Process> {
        let node = &self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        Process::spawn(
            &format!("nats-{}", node.name),
            Command::new(crate::env_path("TALLY_NATS_SERVER")?)
                .args(["-a", "127.0.0.1", "-p", &node.port.to_string()])
                .args(["-m", &node.monitor_port.to_string()])
                .args(["--server_name", &node.name])
                .args(["-js", "-sd"])
                .arg(self.dir.join(&node.name))
                .args(["--cluster_name", CLUSTER_NAME])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", node.route_port),
                ])
                .args(["--routes", &routes.join(",")]),
            self.dir.join(format!("{}.log", node.name)),
        )
    }

    /// Every node's client URL, comma-separated: what `spec.nats.url` takes.
    pub fn url_list(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL one node: no goodbye to its peers, no flush.
    pub fn kill(&mut self, i: usize) {
        self.processes[i].kill();
    }

    /// Starts a killed node again on its ports with its store, and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.processes[i] = self.spawn(i)?;
        self.wait_healthy(i).await
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    async fn wait_healthy(&self, i: usize) -> anyhow::Result<()> {
        let url = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.nodes[i].monitor_port
        );
        eventually(
            &format!("nats node {} to be healthy", self.nodes[i].name),
            Duration::from_secs(30),
            || {
                let (http, url) = (&self.http, &url);
                async move {
                    let response = http
                        .get(url)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .ok()?;
                    response.status().is_success().then_some(())
                }
            },
        )
        .await
    }

    /// `/jsz` of node `i` with account and stream details.
    pub async fn jsz(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        let url = format!(
            "http://127.0.0.1:{}/jsz?accounts=true&streams=true&consumers=true",
            self.nodes[i].monitor_port
        );
        let response = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        response.json().await.context("/jsz is not JSON")
    }

    async fn wait_meta_leader(&self) -> anyhow::Result<()> {
        eventually(
            "the JetStream cluster to elect a meta leader",
            Duration::from_secs(30),
            || async {
                let jsz = self.jsz(0).await.ok()?;
                let leader = jsz["meta_cluster"]["leader"].as_str()?;
                (!leader.is_empty()).then_some(())
            },
        )
        .await
    }

    /// The server name of `stream`'s leader, as node `asking` sees it (`None` while there is
    /// none, or the node does not know the stream).
    pub async fn stream_leader(&self, asking: usize, stream: &str) -> Option<String> {
        let jsz = self.jsz(asking).await.ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == stream)
            .and_then(|s| s["cluster"]["leader"].as_str())
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }

    /// Waits until node `asking` reports a leader for `stream` other than `not`, and returns
    /// its name.
    pub async fn wait_stream_leader(
        &self,
        asking: usize,
        stream: &str,
        not: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        eventually(
            &format!("a leader for stream {stream}"),
            timeout,
            || async {
                self.stream_leader(asking, stream)
                    .await
                    .filter(|leader| Some(leader.as_str()) != not)
            },
        )
        .await
    }
}
