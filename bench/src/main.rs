//! `tally-bench`: drives the `tally` binary given by `--tally` through
//! benchmarks and fault-injection runs, with the settings it would read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_bench::process::Tally;
use tally_bench::{chaos, demo, e2e, ha, provision, viewers};
use tally_platform::Settings;
use tally_platform::config::Environment;

#[derive(Parser, Debug)]
#[command(
    name = "tally-bench",
    version,
    about = "Measures a Tally binary on this machine and injects faults into it."
)]
struct Cli {
    /// The `tally` binary under test.
    #[arg(
        long,
        global = true,
        env = "TALLY_BIN",
        value_name = "PATH",
        default_value = "target/release/tally"
    )]
    tally: PathBuf,

    /// TOML file with settings, for this harness and every `tally` it
    /// starts; TALLY_* environment variables override it.
    #[arg(long, global = true, env = "TALLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N ballots through the whole stack; also the one-transaction-per-vote design for comparison.
    E2e {
        /// Ballots cast, one per new voter.
        #[arg(long, default_value_t = 100_000)]
        voters: u64,
        /// HTTP connections the ballots share.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Offer ballots at this rate (per second) instead of as fast as possible.
        #[arg(long)]
        rate: Option<u32>,
        /// Votes for the naive comparison; 0 skips it.
        #[arg(long, default_value_t = 20_000)]
        naive_votes: u64,
        /// WebSocket viewers watching the election on the stack's broadcaster; adds accept-to-viewer to the report.
        #[arg(long, default_value_t = 0)]
        viewers: usize,
    },
    /// Bring `tally seed-demo`'s election to life: citizens sign up and vote through the API at a gentle rate.
    Demo {
        /// The API's base URL (default: http.api_addr of the settings, on loopback if it is 0.0.0.0).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// Voters started per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Citizens without an account who vote in this run; it stops once they have.
        #[arg(long, default_value_t = 3_000)]
        voters: u64,
    },
    /// Write N voters' tokens and an open election as JSON, for k6.
    Provision {
        /// Voters to make, each with an account and an access token.
        #[arg(long)]
        voters: u64,
        /// The JSON file to write (election id, runners, tokens).
        #[arg(long)]
        output: PathBuf,
    },
    /// Faults under load on a private stack of separate processes, then every vote accounted for.
    Chaos {
        /// Ballots offered per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Rounds of the fault schedule; each kills or crashes every component once.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Milliseconds of steady load between faults.
        #[arg(long, default_value_t = 3000)]
        gap_ms: u64,
        /// Live viewers connected throughout, checked for gaps.
        #[arg(long, default_value_t = 20)]
        viewers: usize,
        /// Directory for the per-voter log and the processes' logs.
        #[arg(long, default_value = "artifacts/chaos")]
        out: PathBuf,
    },
    /// The API offered twice what it can take, the stream filled to its limit; every 202 still recorded.
    Overload {
        /// How long the API is offered more than it can take.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// The share of one core the system under test may use (a CPU
        /// cgroup when this process may create one; otherwise only pinning).
        #[arg(long, default_value_t = 0.3)]
        system_cpu: f64,
        /// Fail when the client offers less than this multiple of the capacity.
        #[arg(long, default_value_t = 1.8)]
        min_offer_ratio: f64,
        /// Directory for the report and the processes' logs.
        #[arg(long, default_value = "artifacts/overload")]
        out: PathBuf,
    },
    /// nginx (deploy/nginx/tally.conf) in front of two replicas of each role; one API replica killed mid-run.
    Proxy {
        /// Ballots cast through the proxy, one per new voter.
        #[arg(long, default_value_t = 2000)]
        voters: u64,
        /// Ballots offered per second.
        #[arg(long, default_value_t = 150)]
        rate: u32,
        /// Live viewers connected through the proxy.
        #[arg(long, default_value_t = 10)]
        viewers: usize,
        /// The nginx configuration under test (checked with nginx -t first).
        #[arg(long, default_value = "deploy/nginx/tally.conf")]
        nginx_conf: PathBuf,
        /// Directory for the report and the processes' logs.
        #[arg(long, default_value = "artifacts/proxy")]
        out: PathBuf,
    },
    /// Tally on clustered engines (three NATS servers, a Postgres primary
    /// and synchronous standby behind HAProxy, Redis with Sentinel), all on
    /// this machine, under store faults with every ballot accounted for.
    Ha {
        /// Ballots offered per second, over both API processes.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Live viewers, over both broadcaster processes.
        #[arg(long, default_value_t = 20)]
        viewers: usize,
        /// The faults, in order, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [
            ha::Fault::NatsLeader, ha::Fault::NatsFollower, ha::Fault::NatsPartition,
            ha::Fault::PostgresPrimary, ha::Fault::PostgresStandby, ha::Fault::RedisMaster,
        ])]
        faults: Vec<ha::Fault>,
        /// Milliseconds of steady load before each fault.
        #[arg(long, default_value_t = 3000)]
        gap_ms: u64,
        /// Milliseconds of load after each fault is undone, before the books are checked.
        #[arg(long, default_value_t = 3000)]
        tail_ms: u64,
        /// Leave Tally's processes alone (by default one of each role is killed -9 during each fault).
        #[arg(long)]
        no_role_kills: bool,
        /// The nats-server binary to cluster (Debian's is 2.9; from 2.10 the
        /// nodes get `sync_interval: always`, as production runs them).
        #[arg(long, default_value = "nats-server")]
        nats_server: PathBuf,
        /// Directory for the report, the per-voter log and every process's log.
        #[arg(long, default_value = "artifacts/ha")]
        out: PathBuf,
    },
    /// K WebSocket viewers on one broadcaster process while tallies change.
    Viewers {
        /// WebSocket viewers to connect.
        #[arg(long, default_value_t = 10_000)]
        viewers: usize,
        /// New tally versions per second (each viewer gets at most the broadcaster's cap).
        #[arg(long, default_value_t = 20)]
        updates_per_sec: u32,
        /// How long the viewers watch.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tally = Tally { bin: cli.tally, config: cli.config.clone() };
    let command = cli.command;
    tally_platform::program::run("tally-bench", cli.config.as_deref(), |settings| async move {
        run(command, &settings, &tally).await
    })
}

async fn run(command: Command, settings: &Settings, tally: &Tally) -> anyhow::Result<()> {
    // Every run writes synthetic citizens and accounts into the database.
    if settings.env == Environment::Production {
        anyhow::bail!(
            "tally-bench makes synthetic citizens and accounts; it refuses to run with TALLY_ENV=production"
        );
    }
    // Provisioning and the demo need no binary; everything else starts one.
    if !matches!(command, Command::Provision { .. } | Command::Demo { .. }) {
        anyhow::ensure!(
            tally.bin.is_file(),
            "no tally binary at {} (build it, or give --tally PATH)",
            tally.bin.display()
        );
    }
    match command {
        Command::E2e { voters, connections, rate, naive_votes, viewers } => {
            let options = e2e::Options { voters, connections, rate, naive_votes, viewers };
            let report = e2e::run(settings, tally, options).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Demo { api, rate, voters } => {
            let api = api.unwrap_or_else(|| demo::local_api(settings.http.api_addr));
            let report = demo::run(settings, demo::Options { api, rate, voters }).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Provision { voters, output } => {
            let db = tally_platform::postgres::pool(&settings.database)?;
            let first = provision::next_voter_id(&db).await?;
            let provisioned = provision::provision(settings, voters, first).await?;
            std::fs::write(&output, serde_json::to_vec(&provisioned)?)
                .with_context(|| format!("writing {}", output.display()))?;
            println!("{voters} voters for election {} in {}", provisioned.election_id, output.display());
            Ok(())
        }
        Command::Chaos { rate, rounds, gap_ms, viewers, out } => {
            let gap = Duration::from_millis(gap_ms);
            let options = chaos::Options { rate, rounds, gap, viewers, out };
            let report = chaos::run(settings, tally, options).await?;
            verdict("chaos run", &report, report.passed, report.votes.violations.len())
        }
        Command::Overload { seconds, system_cpu, min_offer_ratio, out } => {
            let options = chaos::overload::Options { seconds, system_cpu, min_offer_ratio, out };
            let report = chaos::overload::run(settings, tally, options).await?;
            verdict("overload run", &report, report.passed, report.votes.violations.len())
        }
        Command::Proxy { voters, rate, viewers, nginx_conf, out } => {
            let options = chaos::proxy::Options { voters, rate, viewers, nginx_conf, out };
            let report = chaos::proxy::run(settings, tally, options).await?;
            verdict("proxy check", &report, report.passed, report.votes.violations.len())
        }
        Command::Ha { rate, viewers, faults, gap_ms, tail_ms, no_role_kills, nats_server, out } => {
            let (gap, tail) = (Duration::from_millis(gap_ms), Duration::from_millis(tail_ms));
            let roles = !no_role_kills;
            let options = ha::Options { rate, viewers, faults, gap, tail, roles, nats_server, out };
            let report = ha::run(settings, tally, options).await?;
            verdict("HA run", &report, report.passed, report.votes.violations.len())
        }
        Command::Viewers { viewers, updates_per_sec, seconds } => {
            let duration = Duration::from_secs(seconds);
            let options = viewers::Options { viewers, updates_per_sec, duration };
            let report = viewers::run(settings, tally, options).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// Prints a fault-injection report and fails the command on a violation.
fn verdict(
    what: &str,
    report: &impl serde::Serialize,
    passed: bool,
    violations: usize,
) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    anyhow::ensure!(passed, "the {what} found {violations} violations");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let missing = tally_bench::flags_without_help(&super::Cli::command());
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
