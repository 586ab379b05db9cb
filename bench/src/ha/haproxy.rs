//! HAProxy in front of the Postgres pair, as CloudNativePG's `-rw` service
//! is in Kubernetes: one address that follows the primary. sqlx has no
//! libpq-style multi-host URL, so something outside Tally must. A check
//! script asks each node `pg_is_in_recovery()`; only the writable one is
//! up, and sessions on a node marked down are cut at once.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::nats_cluster::wait_tcp;
use crate::free_port;

pub struct Haproxy {
    pub port: u16,
    _child: Child,
}

/// HAProxy's external check: $3 and $4 are the server's address and port.
const CHECK: &str = "#!/bin/sh
# Up only on the writable node: a standby answers t.
[ \"$(PGCONNECT_TIMEOUT=1 psql -h \"$3\" -p \"$4\" -U postgres -d postgres -XtAc 'select pg_is_in_recovery()' 2>/dev/null)\" = f ]
";

impl Haproxy {
    pub async fn start(dir: &Path, postgres: &[u16]) -> anyhow::Result<Haproxy> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let check = dir.join("pg-writable.sh");
        std::fs::write(&check, CHECK).context("writing the check script")?;
        std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755))?;
        let port = free_port()?;
        let servers: String = postgres
            .iter()
            .enumerate()
            .map(|(i, p)| format!("  server pg{i} 127.0.0.1:{p} check\n"))
            .collect();
        // Checks every 500 ms, two failures to go down, two passes to come
        // up: about a second either way. Long client/server timeouts: pooled
        // connections sit idle between batches.
        let config = format!(
            "global\n  external-check\n  insecure-fork-wanted\n  maxconn 4000\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30m\n  timeout server 30m\n  timeout check 2s\n\
             listen postgres\n  bind 127.0.0.1:{port}\n  option external-check\n\
             external-check path \"/usr/bin:/bin\"\n  external-check command {check}\n\
             default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n{servers}",
            check = check.display()
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).context("writing haproxy.cfg")?;
        let checked = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().await;
        let checked = checked.context("running haproxy -c (is haproxy installed?)")?;
        anyhow::ensure!(
            checked.status.success(),
            "haproxy refused its configuration: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting haproxy")?;
        wait_tcp("127.0.0.1", port).await?;
        Ok(Haproxy { port, _child: child })
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/tally", self.port)
    }
}
