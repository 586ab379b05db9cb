//! The harness's children: `tally` processes of the binary under test,
//! and the one way any child is paused, resumed or ended.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// Every benchmark's load comes from one address: per-address limits
/// would measure themselves, so processes under test run without them,
/// the in-process receipt limit included (the accounting looks up every
/// voter's receipt). Per-citizen limits stay on.
pub const ONE_ADDRESS_LOAD: [(&str, &str); 3] = [
    ("TALLY_LIMITS__PER_CLIENT_PER_MINUTE", "0"),
    ("TALLY_LIMITS__RECEIPTS_PER_CLIENT_PER_MINUTE", "0"),
    ("TALLY_LIMITS__LIVE_CONNECTS_PER_CLIENT_PER_MINUTE", "0"),
];

/// The `tally` binary under test and the settings file its processes read.
#[derive(Clone, Debug)]
pub struct Tally {
    pub bin: PathBuf,
    pub config: Option<PathBuf>,
}

impl Tally {
    /// Starts `tally ARGS` with `settings` as its environment's last
    /// word, logging at `warn` unless told otherwise, its output appended
    /// to `log` (without one, only errors reach the harness's own stderr).
    /// Killed if its handle is dropped.
    pub fn spawn(
        &self,
        args: &[&str],
        settings: &[(&str, String)],
        log: Option<&Path>,
    ) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.bin);
        command.args(args);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .env("TALLY_LOG__FILTER", "warn")
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .with_context(|| format!("opening {}", log.display()))?;
                command.stdout(file.try_clone().context("sharing a process log")?).stderr(file);
            }
            None => {
                command.stdout(Stdio::null());
            }
        }
        command.spawn().with_context(|| format!("starting {} {}", self.bin.display(), args.join(" ")))
    }

    /// `tally serve --roles ROLES`, without per-address limits.
    pub fn serve(
        &self,
        roles: &str,
        settings: &[(&str, String)],
        log: Option<&Path>,
    ) -> anyhow::Result<Child> {
        let mut all: Vec<(&str, String)> =
            ONE_ADDRESS_LOAD.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        all.extend(settings.iter().cloned());
        self.spawn(&["serve", "--roles", roles], &all, log)
    }

    /// `tally migrate`: the database and the NATS streams, as an operator
    /// would make them before starting any role.
    pub async fn migrate(&self, settings: &[(&str, String)]) -> anyhow::Result<()> {
        let status = self.spawn(&["migrate"], settings, None)?.wait().await?;
        anyhow::ensure!(status.success(), "tally migrate failed ({status})");
        Ok(())
    }
}

/// How a child is ended.
#[derive(Clone, Copy, Debug)]
pub enum End {
    /// SIGKILL: no drain, no goodbye, a batch possibly half done.
    Kill,
    /// SIGTERM (after SIGCONT, should it be paused), then SIGKILL if it
    /// has not exited within the grace.
    Term(Duration),
}

/// Ends the child, if there is one, and waits for it; the handle is empty
/// afterwards.
pub async fn end(child: &mut Option<Child>, how: End) {
    let Some(mut child) = child.take() else { return };
    if let End::Term(grace) = how {
        let _ = signal(&child, "CONT");
        let _ = signal(&child, "TERM");
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Sends a signal by name (`STOP`, `CONT`, `TERM`) to a running child.
pub fn signal(child: &Child, name: &str) -> anyhow::Result<()> {
    let pid = child.id().context("the process is not running")?;
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}
