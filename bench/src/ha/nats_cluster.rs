//! Three `nats-server` processes in one cluster, JetStream on each with a
//! store of its own, on loopback or, when the run partitions them, each in
//! a network namespace of the run's own (`partition::Net`). Any node can be
//! killed and started again on the same address and store.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

use super::partition::Net;
use crate::free_port;
use crate::process::{End, end};

pub struct NatsNode {
    pub name: String,
    pub host: String,
    pub port: u16,
    route: u16,
    monitor: u16,
    netns: Option<String>,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }
}

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    dir: PathBuf,
    server: NatsServer,
    http: reqwest::Client,
}

/// The `nats-server` binary the cluster runs, and its version.
pub struct NatsServer {
    path: PathBuf,
    pub version: String,
    /// 2.10 or later: `sync_interval` exists.
    syncs: bool,
}

impl NatsServer {
    pub async fn find(path: &Path) -> anyhow::Result<NatsServer> {
        let out = Command::new(path)
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("running {} --version", path.display()))?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let version =
            said.split_whitespace().find_map(|t| t.strip_prefix('v')).unwrap_or_default().to_owned();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        anyhow::ensure!(major == 2, "{} --version said {said:?}, not a 2.x nats-server", path.display());
        Ok(NatsServer { path: path.to_owned(), version, syncs: minor >= 10 })
    }
}

impl NatsCluster {
    /// Three nodes, started and routed to each other, with a JetStream meta
    /// leader elected (streams with three replicas need all three peers).
    pub async fn start(dir: &Path, net: Option<&Net>, server: NatsServer) -> anyhow::Result<NatsCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node = match net {
                // Each namespace has its own ports: the usual ones will do.
                Some(net) => NatsNode {
                    name: format!("n{i}"),
                    host: net.ip(i),
                    port: 4222,
                    route: 6222,
                    monitor: 8222,
                    netns: Some(net.netns(i)),
                    child: None,
                },
                None => NatsNode {
                    name: format!("n{i}"),
                    host: "127.0.0.1".to_owned(),
                    port: free_port()?,
                    route: free_port()?,
                    monitor: free_port()?,
                    netns: None,
                    child: None,
                },
            };
            nodes.push(node);
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let mut cluster = NatsCluster { nodes, dir: dir.to_owned(), server, http };
        for i in 0..3 {
            cluster.write_config(i)?;
            cluster.spawn(i)?;
        }
        for i in 0..3 {
            wait_tcp(&cluster.nodes[i].host, cluster.nodes[i].port).await?;
        }
        cluster.wait_meta_leader().await?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated, as Tally's `nats.url` takes them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsNode::url).collect::<Vec<_>>().join(",")
    }

    fn write_config(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let routes: Vec<String> =
            self.nodes.iter().map(|n| format!("nats-route://{}:{}", n.host, n.route)).collect();
        let store = self.dir.join(format!("{}-store", node.name));
        // As production runs them (docs/reliability.md, "High
        // availability"); Debian's 2.9 has no `sync_interval`.
        let sync = if self.server.syncs { ", sync_interval: always" } else { "" };
        let config = format!(
            "server_name: {name}\nlisten: {host}:{port}\nhttp: {host}:{monitor}\n\
             jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 2GB{sync} }}\n\
             cluster {{ name: tally-ha, listen: {host}:{route}, routes: [{routes}] }}\n",
            name = node.name,
            host = node.host,
            port = node.port,
            monitor = node.monitor,
            route = node.route,
            store = store.display(),
            routes = routes.join(", "),
        );
        let path = self.dir.join(format!("{}.conf", node.name));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let config = self.dir.join(format!("{}.conf", node.name));
        // Appended: a restarted node's log follows its earlier life.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", node.name)))?;
        let mut command = match &node.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.server.path);
                command
            }
            None => Command::new(&self.server.path),
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// kill -9: its store stays on disk, as after a process crash.
    pub async fn kill(&mut self, i: usize) {
        end(&mut self.nodes[i].child, End::Kill).await;
    }

    /// Starts the node again with its store and waits until it listens.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await;
        self.spawn(i)?;
        wait_tcp(&self.nodes[i].host, self.nodes[i].port).await
    }

    /// What node `i`'s monitoring port says about `stream`: its leader and
    /// whether every replica is current. `None` if it does not answer.
    async fn view(&self, i: usize, stream: &str) -> Option<(Option<String>, bool)> {
        let cluster = self.cluster_info(i, stream).await?;
        let leader = cluster["leader"].as_str().filter(|l| !l.is_empty()).map(str::to_owned);
        let replicas = cluster["replicas"].as_array().map(Vec::as_slice).unwrap_or_default();
        let current = replicas.len() == 2 && replicas.iter().all(|r| r["current"] == true);
        Some((leader, current))
    }

    /// The `cluster` part of node `i`'s `/jsz` detail of `stream`.
    async fn cluster_info(&self, i: usize, stream: &str) -> Option<serde_json::Value> {
        let node = &self.nodes[i];
        let url = format!("http://{}:{}/jsz?accounts=true&streams=true", node.host, node.monitor);
        let jsz: serde_json::Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        let accounts = jsz["account_details"].as_array()?;
        let detail = accounts
            .iter()
            .filter_map(|a| a["stream_detail"].as_array())
            .flatten()
            .find(|s| s["name"] == stream)?;
        Some(detail["cluster"].clone())
    }

    /// Whom each node names leader of `stream` (`None`: down, or no leader).
    pub async fn views(&self, stream: &str) -> Vec<Option<String>> {
        let mut views = Vec::new();
        for i in 0..self.nodes.len() {
            let view = if self.nodes[i].is_up() { self.view(i, stream).await } else { None };
            views.push(view.and_then(|(leader, _)| leader));
        }
        views
    }

    /// The node the live nodes agree leads `stream`, once a majority of
    /// all three name the same one, other than `not`.
    pub async fn wait_leader(
        &self,
        stream: &str,
        not: Option<usize>,
        within: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            let mut named = Vec::new();
            for i in (0..3).filter(|&i| self.nodes[i].is_up()) {
                if let Some((Some(leader), _)) = self.view(i, stream).await {
                    named.push(leader);
                }
            }
            for (i, node) in self.nodes.iter().enumerate() {
                let votes = named.iter().filter(|n| **n == node.name).count();
                if votes >= 2 && Some(i) != not && node.is_up() {
                    return Ok(i);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no agreed leader for {stream} within {within:?}: {named:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the leader reports both followers current.
    pub async fn wait_current(&self, stream: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let leader = self.wait_leader(stream, None, within).await?;
            if let Some((_, true)) = self.view(leader, stream).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let seen = self.cluster_info(leader, stream).await.unwrap_or_default();
                anyhow::bail!(
                    "{stream}'s replicas were not current within {within:?}; its leader says {seen}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_meta_leader(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = 0;
            for node in &self.nodes {
                let url = format!("http://{}:{}/jsz", node.host, node.monitor);
                if let Ok(answer) = self.http.get(url).send().await
                    && let Ok(jsz) = answer.json::<serde_json::Value>().await
                    && jsz["meta_cluster"]["leader"].as_str().is_some_and(|l| !l.is_empty())
                    && jsz["meta_cluster"]["cluster_size"] == 3
                {
                    ready += 1;
                }
            }
            if ready == 3 {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the NATS cluster elected no JetStream meta leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until something listens at host:port.
pub async fn wait_tcp(host: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect((host, port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listened on {host}:{port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
