//! A private Postgres, Redis and NATS (JetStream) in a scratch directory,
//! on free loopback ports, that a fault-injection run may kill and restart
//! without touching the machine's own services.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use tally_domain::secret::Secret;
use tally_platform::Settings;

use crate::free_port;
use crate::process::{End, Tally, end};

pub struct Infra {
    pub dir: PathBuf,
    pub pg_port: u16,
    pub redis_port: u16,
    pub nats_port: u16,
    pg_bin: PathBuf,
    redis: Option<Child>,
    nats: Option<Child>,
}

/// A private Postgres, Redis and NATS, the settings that point at them,
/// and the database and NATS streams as `tally migrate` makes them.
pub async fn private_stack(
    tally: &Tally,
    settings: &Settings,
) -> anyhow::Result<(Infra, Settings, sqlx::PgPool)> {
    let infra = Infra::start().await.context("starting a private Postgres, Redis and NATS")?;
    let mut settings = settings.clone();
    settings.database.url = Secret::new(infra.database_url());
    settings.redis.url = Secret::new(infra.redis_url());
    settings.nats.url = Secret::new(infra.nats_url());
    tally.migrate(&infra.settings()).await.context("migrating the private stack")?;
    let db = tally_platform::postgres::pool(&settings.database)?;
    Ok((infra, settings, db))
}

impl Infra {
    pub async fn start() -> anyhow::Result<Infra> {
        let dir = std::env::temp_dir().join(format!("tally-infra-{}-{}", std::process::id(), nonce()));
        std::fs::create_dir_all(dir.join("pg")).context("creating the scratch directory")?;
        let mut infra = Infra {
            pg_bin: postgres_bin_dir()?,
            dir,
            pg_port: free_port()?,
            redis_port: free_port()?,
            nats_port: free_port()?,
            redis: None,
            nats: None,
        };
        infra.init_postgres().await?;
        infra.start_postgres().await?;
        infra.start_redis().await?;
        infra.start_nats().await?;
        Ok(infra)
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/tally", self.pg_port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// The settings every `tally` process of the run needs.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TALLY_DATABASE__URL", self.database_url()),
            ("TALLY_REDIS__URL", self.redis_url()),
            ("TALLY_NATS__URL", self.nats_url()),
        ]
    }

    /// The servers' process ids (Postgres's postmaster, whose later
    /// backends inherit its CPU affinity).
    pub fn pids(&self) -> Vec<u32> {
        let postmaster = std::fs::read_to_string(self.dir.join("pg/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()));
        [self.redis.as_ref().and_then(Child::id), self.nats.as_ref().and_then(Child::id), postmaster]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Postgres stops as after a crash (no shutdown checkpoint), then
    /// starts and replays its WAL.
    pub async fn crash_postgres(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "stop"]).await?;
        self.start_postgres().await
    }

    /// Redis is killed and comes back empty, as a cache without persistence does.
    pub async fn crash_redis(&mut self) -> anyhow::Result<()> {
        end(&mut self.redis, End::Kill).await;
        self.start_redis().await
    }

    /// NATS is killed; JetStream's files on disk survive, as on a process crash.
    pub async fn crash_nats(&mut self) -> anyhow::Result<()> {
        end(&mut self.nats, End::Kill).await;
        self.start_nats().await
    }

    async fn init_postgres(&self) -> anyhow::Result<()> {
        let data = self.dir.join("pg");
        if running_as_root() {
            // Postgres refuses to run as root; its own account owns the cluster.
            run(Command::new("chown").arg("postgres:postgres").arg(&data), "chown").await?;
        }
        let initdb = self.pg_bin.join("initdb");
        let mut command = as_postgres(&initdb);
        command.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        run(&mut command, "initdb").await
    }

    async fn start_postgres(&self) -> anyhow::Result<()> {
        let data = self.dir.join("pg");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.pg_port,
            data.display()
        );
        let log = data.join("server.log");
        self.pg_ctl(&["-w", "-t", "60", "-o", &options, "-l", &log.to_string_lossy(), "start"]).await
    }

    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = as_postgres(&self.pg_bin.join("pg_ctl"));
        command.arg("-D").arg(self.dir.join("pg")).args(args);
        run(&mut command, "pg_ctl").await
    }

    async fn start_redis(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.redis = Some(child);
        wait_for_port(self.redis_port, "redis").await
    }

    async fn start_nats(&mut self) -> anyhow::Result<()> {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.nats_port.to_string(), "-js", "-sd"])
            .arg(self.dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        self.nats = Some(child);
        wait_for_port(self.nats_port, "nats").await
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        stop_postgres_now(&self.pg_bin, &self.dir.join("pg"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `pg_ctl stop -m immediate`, waited for without a runtime: for `Drop`,
/// which may run while the harness unwinds.
pub(crate) fn stop_postgres_now(bin: &Path, data: &Path) {
    let pg_ctl = bin.join("pg_ctl");
    let mut stop = if running_as_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(pg_ctl);
        command
    } else {
        std::process::Command::new(pg_ctl)
    };
    let _ = stop
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub(crate) fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("looking for Postgres's programs under /usr/lib/postgresql")?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().context("no initdb under /usr/lib/postgresql/*/bin")
}

pub(crate) fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub(crate) fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

pub(crate) async fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output().await.with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

pub async fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(crate) fn nonce() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
