//! A Postgres primary and a synchronous streaming standby, and the
//! failover an operator (or CloudNativePG) does: the primary dies, the
//! standby is promoted, the old primary comes back as the new standby.
//!
//! Replication is synchronous (`synchronous_standby_names = '*'`): a
//! commit returns once the standby has it, so a batch acked just before
//! the primary dies survives the promotion. The price: with no standby,
//! commits wait until one is back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Connection;
use tokio::process::Command;

use crate::free_port;
use crate::infra::{as_postgres, postgres_bin_dir, run, running_as_root};

/// Shared by both nodes (pg_basebackup copies it); ports stay on the command line.
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 200
wal_level = replica
max_wal_senders = 10
hot_standby = on
wal_log_hints = on
# pg_rewind needs the old primary's WAL back to the last common checkpoint.
wal_keep_size = 512MB
synchronous_commit = on
synchronous_standby_names = '*'
";

pub struct PostgresPair {
    bin: PathBuf,
    pub ports: [u16; 2],
    data: [PathBuf; 2],
    /// Unix sockets live outside the data directories: pg_rewind would
    /// try to copy a socket file from the source.
    sockets: PathBuf,
    pub primary: usize,
}

impl PostgresPair {
    pub async fn start(dir: &Path) -> anyhow::Result<PostgresPair> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pair = PostgresPair {
            bin: postgres_bin_dir()?,
            ports: [free_port()?, free_port()?],
            data: [dir.join("pg0"), dir.join("pg1")],
            sockets: dir.join("sockets"),
            primary: 0,
        };
        std::fs::create_dir_all(&pair.sockets).context("creating the socket directory")?;
        if running_as_root() {
            // Postgres refuses to run as root; its own account owns the clusters.
            run(Command::new("chown").arg("postgres:postgres").arg(dir).arg(&pair.sockets), "chown").await?;
        }
        let mut initdb = as_postgres(&pair.bin.join("initdb"));
        initdb.arg("-D").arg(&pair.data[0]).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(&mut initdb, "initdb").await?;
        let conf = pair.data[0].join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
        text.push_str(SETTINGS);
        std::fs::write(&conf, text).context("writing postgresql.conf")?;
        pair.pg_ctl(0, &["start"]).await?;
        pair.base_backup(1).await?;
        pair.pg_ctl(1, &["start"]).await?;
        pair.wait_sync(Duration::from_secs(60)).await?;
        Ok(pair)
    }

    fn url(&self, i: usize) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.ports[i])
    }

    pub fn standby(&self) -> usize {
        1 - self.primary
    }

    async fn pg_ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        let data = &self.data[i];
        let options = format!("-p {} -k {}", self.ports[i], self.sockets.display());
        let log = data.join("server.log");
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(data).args(["-w", "-t", "60", "-o", &options, "-l"]).arg(log).args(args);
        run(&mut command, "pg_ctl").await
    }

    /// A fresh standby of the primary in node `i`'s directory.
    async fn base_backup(&self, i: usize) -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(&self.data[i]);
        let mut command = as_postgres(&self.bin.join("pg_basebackup"));
        command
            .args(["-h", "127.0.0.1", "-p", &self.ports[self.primary].to_string(), "-U", "postgres"])
            .arg("-D")
            .arg(&self.data[i])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(&mut command, "pg_basebackup").await
    }

    /// kill -9 of the primary's postmaster and every backend, as when its
    /// machine dies: no shutdown checkpoint, sessions cut mid-transaction.
    pub async fn kill_primary(&mut self) -> anyhow::Result<()> {
        self.kill(self.primary).await
    }

    /// kill -9 of the standby; the primary's commits wait from now on.
    pub async fn kill_standby(&mut self) -> anyhow::Result<()> {
        self.kill(self.standby()).await
    }

    /// Starts the standby again and waits until it is synchronous.
    pub async fn restart_standby(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(self.standby(), &["start"]).await?;
        self.wait_sync(Duration::from_secs(60)).await
    }

    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let data = &self.data[i];
        let pid_file =
            std::fs::read_to_string(data.join("postmaster.pid")).context("reading postmaster.pid")?;
        let postmaster: u32 =
            pid_file.lines().next().unwrap_or("").trim().parse().context("postmaster.pid")?;
        let backends = children_of(postmaster);
        run(Command::new("kill").args(["-KILL", &postmaster.to_string()]), "kill").await?;
        // Best effort: some backends exit by themselves as the others die.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(backends.iter().map(u32::to_string))
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        // Once it is gone (or a zombie not yet reaped), its pid file is
        // stale, as after a reboot; pg_rewind's crash recovery would
        // otherwise see a live postmaster in a zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(postmaster) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let socket = format!(".s.PGSQL.{}", self.ports[i]);
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        for stale in [format!("{socket}.lock"), socket] {
            let _ = std::fs::remove_file(self.sockets.join(stale));
        }
        Ok(())
    }

    /// Promotes the standby; from now on it is the primary. Its commits
    /// wait until a standby is back (`rejoin`).
    pub async fn promote(&mut self) -> anyhow::Result<()> {
        let standby = self.standby();
        self.pg_ctl(standby, &["promote"]).await?;
        self.primary = standby;
        Ok(())
    }

    /// Brings the dead old primary back as the standby of the new one:
    /// `pg_rewind` (which first replays its crash) if it can, a fresh base
    /// backup if not; then waits until replication is synchronous again.
    pub async fn rejoin(&mut self) -> anyhow::Result<&'static str> {
        let old = self.standby();
        // pg_rewind reads the new timeline from the source's control file,
        // which only the promotion's checkpoint updates; without it, it
        // sees one timeline and rewinds nothing.
        let mut conn = sqlx::PgConnection::connect(&self.url(self.primary)).await?;
        sqlx::query("CHECKPOINT").execute(&mut conn).await.context("checkpoint on the new primary")?;
        let _ = conn.close().await;
        let source =
            format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.ports[self.primary]);
        let mut rewind = as_postgres(&self.bin.join("pg_rewind"));
        rewind.arg("-D").arg(&self.data[old]).arg(format!("--source-server={source}")).arg("-R");
        let how = match run(&mut rewind, "pg_rewind").await {
            Ok(()) => "pg_rewind",
            Err(e) => {
                eprintln!("ha: pg_rewind failed ({e:#}); a fresh base backup instead");
                self.base_backup(old).await?;
                "pg_basebackup"
            }
        };
        self.pg_ctl(old, &["start"]).await?;
        self.wait_sync(Duration::from_secs(60)).await?;
        Ok(how)
    }

    /// Until the primary has a standby in `sync` state.
    async fn wait_sync(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&self.url(self.primary)).await {
                let sync: Option<i64> =
                    sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
                        .fetch_one(&mut conn)
                        .await
                        .ok();
                let _ = conn.close().await;
                if sync.is_some_and(|n| n > 0) {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "no synchronous standby within {within:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for PostgresPair {
    fn drop(&mut self) {
        for data in &self.data {
            crate::infra::stop_postgres_now(&self.bin, data);
        }
    }
}

/// Whether the process exists and is not a zombie.
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

/// Processes whose parent is `pid` (a postmaster's backends), from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent is the second field after the parenthesised name.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}
