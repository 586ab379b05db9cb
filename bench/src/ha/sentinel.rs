//! A Redis master, a replica and three Sentinels watching them as `tally`.
//! When the master dies a quorum of two Sentinels promotes the replica;
//! the old master, started again, is turned into a replica by them.
//! Neither node persists anything: Redis is Tally's cache, rebuilt from
//! Postgres.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

use super::nats_cluster::wait_tcp;
use crate::free_port;
use crate::process::{End, end};

pub const MASTER_NAME: &str = "tally";

pub struct RedisGroup {
    pub ports: [u16; 2],
    pub sentinels: [u16; 3],
    dir: PathBuf,
    nodes: [Option<Child>; 2],
    _sentinels: Vec<Child>,
}

impl RedisGroup {
    pub async fn start(dir: &Path) -> anyhow::Result<RedisGroup> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut group = RedisGroup {
            ports: [free_port()?, free_port()?],
            sentinels: [free_port()?, free_port()?, free_port()?],
            dir: dir.to_owned(),
            nodes: [None, None],
            _sentinels: Vec::new(),
        };
        group.spawn(0, None)?;
        group.spawn(1, Some(group.ports[0]))?;
        for port in group.ports {
            wait_tcp("127.0.0.1", port).await?;
        }
        for port in group.sentinels {
            // Sentinel rewrites its configuration file: one each.
            let config = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.display(),
                    master = group.ports[0],
                ),
            )?;
            let log = std::fs::File::create(dir.join(format!("sentinel-{port}.log")))?;
            let child = Command::new("redis-server")
                .arg(&config)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting redis-server --sentinel")?;
            group._sentinels.push(child);
            wait_tcp("127.0.0.1", port).await?;
        }
        group.wait_replica(1, Duration::from_secs(30)).await?;
        Ok(group)
    }

    /// The Sentinels' addresses, as Tally's `redis.sentinel.urls` takes them.
    pub fn sentinel_urls(&self) -> String {
        self.sentinels.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, i: usize, replica_of: Option<u16>) -> anyhow::Result<()> {
        let port = self.ports[i].to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("redis-{i}.log")))?;
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--port", &port, "--save", "", "--appendonly", "no", "--dir"]);
        command.arg(&self.dir);
        if let Some(master) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.nodes[i] = Some(child);
        Ok(())
    }

    /// The node the Sentinels name as master (the first that answers).
    pub async fn master(&self) -> anyhow::Result<usize> {
        let named = self.named().await;
        named.into_iter().flatten().next().context("no Sentinel named a master")
    }

    /// The master each Sentinel names (`None`: it did not answer).
    async fn named(&self) -> Vec<Option<usize>> {
        let mut named = Vec::new();
        for port in self.sentinels {
            let mut master = None;
            if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
            {
                let answer: redis::RedisResult<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME)
                    .query_async(&mut conn)
                    .await;
                master = answer.ok().and_then(|(_, port)| self.ports.iter().position(|p| *p == port));
            }
            named.push(master);
        }
        named
    }

    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    /// kill -9 of the master: whatever it had not yet sent to its replica is gone.
    pub async fn kill(&mut self, i: usize) {
        end(&mut self.nodes[i], End::Kill).await;
    }

    /// Until every Sentinel names node `i` master and it says so itself.
    pub async fn wait_master(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let agreed = self.named().await.iter().all(|named| *named == Some(i));
            if agreed && self.role(i).await.as_deref() == Some("master") {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "Sentinel did not promote node {i} within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts node `i` again, empty, as a replica of the master the
    /// Sentinels name, as an operator (or Bitnami's chart) does: an empty
    /// node started as a master could be taken for the master again
    /// before the Sentinels reconfigure it, and its replica would copy
    /// its emptiness (seen in an early run of this harness).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await;
        let master = self.master().await?;
        anyhow::ensure!(master != i, "the Sentinels still name the dead node {i} master");
        self.spawn(i, Some(self.ports[master]))?;
        wait_tcp("127.0.0.1", self.ports[i]).await?;
        self.wait_replica(i, Duration::from_secs(60)).await
    }

    /// Until node `i` is a replica whose link to its master is up.
    async fn wait_replica(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self
                .info(i)
                .await
                .is_some_and(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "Redis node {i} was not a synced replica within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn role(&self, i: usize) -> Option<String> {
        let info = self.info(i).await?;
        info.lines().find_map(|l| l.strip_prefix("role:")).map(|r| r.trim().to_owned())
    }

    async fn info(&self, i: usize) -> Option<String> {
        let client = redis::Client::open(self.url(i)).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("INFO").arg("replication").query_async(&mut conn).await.ok()
    }
}
