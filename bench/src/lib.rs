//! `tally-bench`: measurements and fault injection on this machine. The
//! system under test is a `tally` binary given by path (`process::Tally`),
//! run as child processes; `kit` makes the elections and voters they
//! need, for the benchmarks and for tests.

pub mod ballot_client;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod e2e;
pub mod ha;
pub mod infra;
pub mod kit;
pub mod latency;
pub mod live;
pub mod process;
pub mod provision;
pub mod viewers;

use std::time::{Duration, Instant};

use process::Tally;

pub use latency::Latencies;

/// A free port on loopback, for a child process to listen on.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `tally serve --roles ROLES` with the given extra settings and
/// its admin listener on `admin`, and waits until it reports ready. The
/// child is killed when the handle is dropped.
pub async fn serve_ready(
    tally: &Tally,
    roles: &str,
    admin: u16,
    settings: &[(&str, String)],
) -> anyhow::Result<tokio::process::Child> {
    let mut all = vec![("TALLY_HTTP__ADMIN_ADDR", format!("127.0.0.1:{admin}"))];
    all.extend(settings.iter().cloned());
    let child = tally.serve(roles, &all, None)?;
    wait_ready(admin).await?;
    Ok(child)
}

/// Waits until the process with this admin port answers `/readyz` 200.
pub async fn wait_ready(admin: u16) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client.get(&url).timeout(Duration::from_secs(3)).send().await;
        if answer.is_ok_and(|a| a.status() == 200) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the stack did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Every flag and argument of the command tree (`tool sub --flag`)
/// without help text, for the binaries' tests: `--help` must explain each.
pub fn flags_without_help(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    walk(command, command.get_name(), &mut missing);
    missing
}

fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let generated = matches!(arg.get_id().as_str(), "help" | "version");
        if !generated && arg.get_help().is_none() && arg.get_long_help().is_none() {
            let name = arg.get_long().map_or_else(|| arg.get_id().to_string(), |long| format!("--{long}"));
            missing.push(format!("{path} {name}"));
        }
    }
    for sub in command.get_subcommands() {
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, Command};

    #[test]
    fn a_flag_without_help_is_named_with_its_path() {
        let tool = Command::new("tool")
            .arg(Arg::new("config").long("config").help("settings"))
            .subcommand(Command::new("sub").arg(Arg::new("rate").long("rate")).arg(Arg::new("file")));
        assert_eq!(super::flags_without_help(&tool), ["tool sub --rate", "tool sub file"]);
    }
}
