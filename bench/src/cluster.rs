//! Several `tally serve` processes, each with its own roles and fixed
//! loopback ports, that can be killed, paused and restarted on the same
//! ports; their logs go to files beside the run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::process::Child;

use crate::process::{End, Tally, end, signal};
use crate::{free_port, wait_ready};

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
    tally: Tally,
    logs: PathBuf,
}

impl Cluster {
    /// Starts `count` processes for each `roles` entry and waits until all
    /// are ready.
    pub async fn start(
        tally: &Tally,
        logs: &Path,
        settings: Vec<(&'static str, String)>,
        layout: &[(&'static str, usize)],
    ) -> anyhow::Result<Cluster> {
        // Each run's logs start empty; a restarted process appends to its own.
        let _ = std::fs::remove_dir_all(logs);
        std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut cluster =
            Cluster { nodes: Vec::new(), settings, tally: tally.clone(), logs: logs.to_owned() };
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
        let mut settings = self.settings.clone();
        settings.extend([
            ("TALLY_HTTP__ADMIN_ADDR", format!("127.0.0.1:{}", node.admin)),
            ("TALLY_HTTP__API_ADDR", format!("127.0.0.1:{}", node.api)),
            ("TALLY_HTTP__BROADCASTER_ADDR", format!("127.0.0.1:{}", node.live)),
        ]);
        let log = self.logs.join(format!("{}.log", node.name));
        let child = self.tally.serve(node.roles, &settings, Some(&log))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// SIGKILL: no drain, no goodbye, a batch possibly half done.
    pub async fn kill(&mut self, i: usize) {
        end(&mut self.nodes[i].child, End::Kill).await;
    }

    /// Starts the node again on its own ports and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await;
        self.spawn(i)?;
        wait_ready(self.nodes[i].admin).await
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&self, i: usize, paused: bool) -> anyhow::Result<()> {
        let child = self.nodes[i].child.as_ref().context("the process is not running")?;
        signal(child, if paused { "STOP" } else { "CONT" })
    }

    /// Every node drains and exits, all at once; those that take longer
    /// than 20 s are killed.
    pub async fn stop(&mut self) {
        let grace = End::Term(std::time::Duration::from_secs(20));
        futures_util::future::join_all(self.nodes.iter_mut().map(|node| end(&mut node.child, grace))).await;
    }
}
