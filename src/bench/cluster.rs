//! Several `tally serve` processes, each with its own roles and fixed
//! loopback ports, that can be killed, paused and restarted on the same
//! ports; their logs go to files beside the run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::process::{Child, Command};

use super::{free_port, wait_ready};

pub struct Node {
    pub name: String,
    pub roles: &'static str,
    pub admin: u16,
    pub api: u16,
    pub live: u16,
    child: Option<Child>,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    settings: Vec<(&'static str, String)>,
    config: Option<PathBuf>,
    logs: PathBuf,
}

impl Cluster {
    /// Starts `count` processes for each `roles` entry and waits until all
    /// are ready.
    pub async fn start(
        config: Option<&Path>,
        logs: &Path,
        settings: Vec<(&'static str, String)>,
        layout: &[(&'static str, usize)],
    ) -> anyhow::Result<Cluster> {
        // Each run's logs start empty; a restarted process appends to its own.
        let _ = std::fs::remove_dir_all(logs);
        std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            settings,
            config: config.map(Path::to_owned),
            logs: logs.to_owned(),
        };
        for (roles, count) in layout {
            for n in 0..*count {
                cluster.nodes.push(Node {
                    name: format!("{}-{n}", roles.replace(',', "+")),
                    roles,
                    admin: free_port()?,
                    api: free_port()?,
                    live: free_port()?,
                    child: None,
                });
            }
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for node in &cluster.nodes {
            wait_ready(node.admin).await.with_context(|| format!("{} did not become ready", node.name))?;
        }
        Ok(cluster)
    }

    /// Indexes of the nodes that run this role.
    pub fn with_role(&self, role: &str) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].roles.split(',').any(|r| r == role)).collect()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", node.name)))
            .context("opening a process log")?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["serve", "--roles", node.roles]);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .envs(self.settings.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(super::ONE_ADDRESS_LOAD)
            .env("TALLY_HTTP__ADMIN_ADDR", format!("127.0.0.1:{}", node.admin))
            .env("TALLY_HTTP__API_ADDR", format!("127.0.0.1:{}", node.api))
            .env("TALLY_HTTP__BROADCASTER_ADDR", format!("127.0.0.1:{}", node.live))
            .stdout(log.try_clone().context("sharing a process log")?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {}", node.name))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// SIGKILL: no drain, no goodbye, a batch possibly half done.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the node again on its own ports and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await;
        self.spawn(i)?;
        wait_ready(self.nodes[i].admin).await
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.nodes[i].pid().context("the process is not running")?;
        let status =
            std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// SIGTERM to every node, then waits for each to drain and exit.
    pub async fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.signal(i, "CONT");
            let _ = self.signal(i, "TERM");
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take()
                && tokio::time::timeout(std::time::Duration::from_secs(20), child.wait()).await.is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
