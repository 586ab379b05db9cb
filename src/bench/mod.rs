//! `tally bench`: measurements on this machine, printed as a table and
//! as JSON.

pub mod chaos;
pub mod cluster;
pub mod e2e;
pub mod infra;
pub mod provision;
pub mod viewers;

use std::time::{Duration, Instant};

/// Latencies in a fixed histogram of 1 ms buckets (up to 60 s), cheap to
/// record from many tasks at once.
pub struct Latencies {
    buckets: Vec<std::sync::atomic::AtomicU64>,
}

const BUCKETS: usize = 60_000;

impl Default for Latencies {
    fn default() -> Self {
        Latencies { buckets: (0..BUCKETS).map(|_| std::sync::atomic::AtomicU64::new(0)).collect() }
    }
}

impl Latencies {
    pub fn record(&self, latency: Duration) {
        let bucket = (latency.as_millis() as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// The latency below which `q` (0..1) of the samples fall, in ms.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(std::sync::atomic::Ordering::Relaxed);
            if seen >= target {
                return Some(ms as u64 + 1);
            }
        }
        None
    }
}

/// Every benchmark's load comes from one address: per-address limits
/// would measure themselves, so processes under test run without them,
/// the in-process receipt limit included (the accounting looks up every
/// voter's receipt). Per-citizen limits stay on.
pub const ONE_ADDRESS_LOAD: [(&str, &str); 3] = [
    ("TALLY_LIMITS__PER_CLIENT_PER_MINUTE", "0"),
    ("TALLY_LIMITS__RECEIPTS_PER_CLIENT_PER_MINUTE", "0"),
    ("TALLY_LIMITS__LIVE_CONNECTS_PER_CLIENT_PER_MINUTE", "0"),
];

/// A free port on loopback, for a child process to listen on.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts this binary as `tally serve --roles ROLES` with the given extra
/// settings, and waits until its admin port (`admin`) reports ready. The
/// child is killed when the handle is dropped.
pub async fn spawn_tally(
    config: Option<&std::path::Path>,
    roles: &str,
    admin: u16,
    settings: &[(&str, String)],
) -> anyhow::Result<tokio::process::Child> {
    use anyhow::Context;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.args(["serve", "--roles", roles]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .env("TALLY_HTTP__ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("TALLY_LOG__FILTER", "warn")
        .envs(ONE_ADDRESS_LOAD)
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = command.spawn().with_context(|| format!("starting tally serve --roles {roles}"))?;
    wait_ready(admin).await?;
    Ok(child)
}

/// Waits until the process with this admin port answers `/readyz` 200.
pub async fn wait_ready(admin: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe_ready(&format!("127.0.0.1:{admin}")).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the stack did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// One `/readyz` request to an admin listener, with a short time limit.
pub async fn probe_ready(addr: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(3), ask).await??;
    anyhow::ensure!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "not ready");
    Ok(())
}

/// The value of an unlabelled metric on a process's admin listener; `None`
/// when the process does not answer or does not export it.
pub async fn metric(admin: u16, name: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse::<f64>().ok())
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let l = Latencies::default();
        for ms in 0..100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 100);
        assert_eq!(l.quantile_ms(0.5), Some(50));
        assert_eq!(l.quantile_ms(0.99), Some(99));
        assert_eq!(Latencies::default().quantile_ms(0.5), None);
    }
}
