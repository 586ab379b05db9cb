//! One `clap` tree for every command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_domain::citizen::Role;
use tally_domain::enrollment::EnrollmentKey;
use tally_platform::Settings;
use tally_platform::config::Environment;

use crate::registry::commands::RegistryCommand;

use crate::app::{App, Roles};

#[derive(Parser, Debug)]
#[command(name = "tally", version, about = "Tally: a vote pipeline. One binary runs any set of roles.")]
pub struct Cli {
    /// TOML file with settings; TALLY_* environment variables override it.
    #[arg(long, global = true, env = "TALLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run roles: the REST API, the vote workers, the live broadcaster.
    Serve {
        /// Comma-separated: api, workers, broadcaster (default: all three).
        #[arg(long, default_value = "api,workers,broadcaster", value_parser = clap::value_parser!(Roles))]
        roles: Roles,
    },
    /// Create the database if missing and apply pending migrations, then
    /// create or update the NATS streams (run as the provisioning identity).
    Migrate,
    /// Exit 0 if the local process's admin listener reports ready (container health checks).
    Health,
    /// Load a synthetic citizen registry and an open demo election (idempotent).
    SeedDemo {
        /// How many synthetic citizens to make sure exist.
        #[arg(long, default_value_t = 10_000)]
        citizens: u64,
    },
    /// Rewrite Redis tallies from Postgres and report the drift found.
    Reconcile {
        /// Only this election (default: all).
        #[arg(long)]
        election: Option<i64>,
    },
    /// The national registry: import a CSV, generate a synthetic one, issue enrollment codes.
    #[command(subcommand)]
    Citizens(CitizensCommand),
    /// Grant or revoke the admin role of an existing user.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Ballot-sealing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Accepted ballots no worker could open: list, replay or reject them.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// The signed election record: export it, check it offline, prove a receipt is in it.
    #[command(subcommand)]
    Record(RecordCommand),
}

#[derive(Subcommand, Debug)]
enum RecordCommand {
    /// Write a final election's record (every file, as signed) into DIR.
    Export {
        /// The election's id; it must be final, with its record built.
        election: i64,
        /// Where to write the files (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check a record offline: signatures, file hashes, the Merkle root,
    /// the recount and the counts. Exits non-zero naming the first failing check.
    Verify {
        /// A directory holding a record's files, as `export` writes them.
        dir: PathBuf,
        /// `<name>+<key id>+<base64>`, from somewhere other than the record
        /// (default: the public half of record.signing_key).
        #[arg(long, value_name = "KEY")]
        verifier_key: Option<String>,
    },
    /// Print a receipt's inclusion proof, made from DIR's receipts.txt and
    /// checked against its signed checkpoint.
    Prove {
        /// The receipt, as the API gave it (a UUID) or as 32 hex characters.
        receipt: String,
        /// A directory holding the election's record, as `export` writes it.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// `<name>+<key id>+<base64>`, from somewhere other than the record
        /// (default: the public half of record.signing_key).
        #[arg(long, value_name = "KEY")]
        verifier_key: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum QuarantineCommand {
    /// Election, reason and key id of each quarantined ballot; opens none.
    List {
        /// Only this election's (default: every election's).
        #[arg(long)]
        election: Option<i64>,
    },
    /// Put them back in the work queue, once workers that can open them run.
    Replay {
        /// Only this election's (default: every election's).
        #[arg(long)]
        election: Option<i64>,
    },
    /// Reject an election's quarantined ballots as `unreadable`, so its
    /// count can be final.
    Reject {
        /// The election whose quarantined ballots are rejected.
        #[arg(long)]
        election: i64,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Print a new X25519 key pair for sealing ballots, as settings lines.
    Generate {
        /// The key id to name in the printed settings (lower case).
        #[arg(long, default_value = "k1")]
        id: String,
        /// Print the API's own pair (sealing.api_*), which proves to
        /// workers that a ballot came from the API.
        #[arg(long, conflicts_with = "record")]
        api: bool,
        /// Print an Ed25519 key for signing election records
        /// (record.signing_key) and its verifier key, in signed-note format.
        #[arg(long)]
        record: bool,
        /// The record key's name (default: <record.public_host>/tally).
        #[arg(long, requires = "record")]
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum CitizensCommand {
    /// Load a CSV with a header row: citizen_id,full_name,dob,pob,permanent_address,province.
    /// All or nothing unless --skip-bad-rows.
    Import {
        /// The registry CSV.
        file: PathBuf,
        /// Import the good rows and only report the bad ones.
        #[arg(long)]
        skip_bad_rows: bool,
    },
    /// Write a deterministic synthetic registry as CSV (or straight into the database).
    Generate {
        /// How many citizens to write.
        #[arg(long)]
        count: u64,
        /// The same seed writes the same registry.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The first citizen id; ids are consecutive from it.
        #[arg(long, default_value_t = 1)]
        first_id: i64,
        /// Write to this file instead of standard output.
        #[arg(long, conflicts_with = "into_db")]
        output: Option<PathBuf>,
        /// Insert into the configured database instead of writing CSV.
        #[arg(long)]
        into_db: bool,
    },
    /// Issue one-time enrollment codes, replacing older ones; prints
    /// `citizen_id,code` lines. Recorded in the audit log, without the codes.
    #[command(group(clap::ArgGroup::new("who").required(true).args(["ids", "without_account"])))]
    Codes {
        /// Comma-separated citizen ids.
        #[arg(long, value_delimiter = ',')]
        ids: Vec<i64>,
        /// Every citizen without an enrolled account (the mailing run);
        /// needs --output.
        #[arg(long, requires = "output")]
        without_account: bool,
        /// The new file for a mailing run (created readable by its owner only).
        #[arg(long, requires = "without_account")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Make a user an administrator.
    Grant {
        /// The citizen whose account becomes an administrator's.
        citizen_id: i64,
    },
    /// Make an administrator a voter again and end their sessions.
    Revoke {
        /// The administrator who becomes a voter again.
        citizen_id: i64,
    },
}

impl Cli {
    pub fn run(self) -> ExitCode {
        let Cli { config, command } = self;
        tally_platform::program::run("tally", config.as_deref(), |settings| command.execute(settings))
    }
}

impl Command {
    async fn execute(self, settings: Settings) -> anyhow::Result<()> {
        // It writes synthetic citizens, accounts and codes into the database.
        if matches!(self, Command::SeedDemo { .. }) && settings.env == Environment::Production {
            anyhow::bail!(
                "seed-demo makes synthetic citizens and accounts; it refuses to run with TALLY_ENV=production"
            );
        }
        match self {
            Command::Keys(KeysCommand::Generate { record: true, name, .. }) => {
                let name = match name {
                    Some(name) => name,
                    None => format!("{}/tally", settings.record.origin_host()?),
                };
                let signer = tally_domain::record::note::NoteSigner::generate(&name)?;
                println!(
                    "# The record key: the signing key to workers and the API only; publish the verifier key."
                );
                println!("TALLY_RECORD__SIGNING_KEY={}", signer.encode());
                println!("# verifier key: {}", signer.verifier().encode());
                Ok(())
            }
            Command::Record(command) => run_record(command, &settings).await,
            Command::Keys(KeysCommand::Generate { id, api, .. }) => {
                let pair = tally_domain::seal::generate();
                if api {
                    println!("# The API's pair: the private key to the API only, the public key to workers.");
                    println!("TALLY_SEALING__API_PRIVATE_KEY={}", pair.private);
                    println!("TALLY_SEALING__API_PUBLIC_KEY={}", pair.public);
                } else {
                    let (id, var) = (id.to_lowercase(), id.to_uppercase());
                    println!(
                        "# Workers' pair `{id}`: the public key to the API, the private key to workers only."
                    );
                    println!("TALLY_SEALING__KEY_ID={id}");
                    println!("TALLY_SEALING__PUBLIC_KEYS__{var}={}", pair.public);
                    println!("TALLY_SEALING__PRIVATE_KEYS__{var}={}", pair.private);
                }
                Ok(())
            }
            Command::Serve { roles } => {
                let shutdown = tally_platform::shutdown::on_signal();
                let mut app = App::start(settings, roles, shutdown).await?;
                if app.ready().await.is_ok() {
                    print_urls(&app);
                }
                app.wait().await
            }
            Command::Health => {
                let admin = settings.http.admin_addr;
                let probe = format!("127.0.0.1:{}", admin.port());
                crate::health::probe_ready(&probe).await.with_context(|| format!("{probe} is not ready"))?;
                println!("ready");
                Ok(())
            }
            Command::Migrate => {
                tally_platform::postgres::create_database_if_missing(&settings.database).await?;
                let pool = tally_platform::postgres::pool(&settings.database)?;
                tally_platform::postgres::migrate(&pool).await?;
                println!("migrations applied");
                crate::app::provision_streams(&settings.nats).await?;
                println!(
                    "NATS streams {} and {} ready",
                    settings.nats.stream,
                    tally_platform::nats::quarantine_stream(&settings.nats)
                );
                Ok(())
            }
            Command::SeedDemo { citizens } => {
                let pool = tally_platform::postgres::pool(&settings.database)?;
                let key = EnrollmentKey::new(settings.auth.enrollment_key()?);
                let report =
                    crate::seed::seed_demo(&pool, &key, citizens).await.context("seeding the demo")?;
                println!("{report}");
                Ok(())
            }
            Command::Reconcile { election } => {
                let Some(deps) = connect(settings).await? else { return Ok(()) };
                let report = tally_workers::reconcile::reconcile(&deps, election).await?;
                println!(
                    "reconciled {} elections: drift {}, {} tallies rewritten, {} voters restored to voter sets",
                    report.elections, report.drift, report.repaired, report.voters_restored
                );
                Ok(())
            }
            Command::Quarantine(command) => {
                let Some(deps) = connect(settings).await? else { return Ok(()) };
                use tally_workers::quarantine;
                match command {
                    QuarantineCommand::List { election } => {
                        let found = quarantine::list(&deps, election).await?;
                        println!("{:>10}  {:>10}  {:<8}  reason", "sequence", "election", "key");
                        for q in &found {
                            println!("{:>10}  {:>10}  {:<8}  {}", q.sequence, q.election, q.key_id, q.reason);
                        }
                        println!("{} quarantined", found.len());
                    }
                    QuarantineCommand::Replay { election } => {
                        println!("replayed {}", quarantine::replay(&deps, election).await?);
                    }
                    QuarantineCommand::Reject { election } => {
                        let done = quarantine::reject(&deps, election).await?;
                        println!(
                            "rejected {} (reason on the receipt) and {} that no key here opens",
                            done.with_receipt, done.without_receipt
                        );
                    }
                }
                Ok(())
            }
            Command::Citizens(command) => {
                crate::registry::commands::run(command_args(command), &settings).await
            }
            Command::Admin(AdminCommand::Grant { citizen_id }) => {
                crate::admin::set_role(&settings, citizen_id, Role::Admin).await?;
                println!("citizen {citizen_id} is now an admin");
                Ok(())
            }
            Command::Admin(AdminCommand::Revoke { citizen_id }) => {
                crate::admin::set_role(&settings, citizen_id, Role::Voter).await?;
                println!("citizen {citizen_id} is now a voter; their sessions have ended");
                Ok(())
            }
        }
    }
}

async fn run_record(command: RecordCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        RecordCommand::Export { election, out } => {
            let n = crate::record::export(settings, election, &out).await?;
            println!("wrote {n} files of election {election}'s record to {}", out.display());
        }
        RecordCommand::Verify { dir, verifier_key } => {
            let key = crate::record::verifier(verifier_key.as_deref(), settings)?;
            println!("{}", crate::record::verify_dir(&dir, &key)?);
        }
        RecordCommand::Prove { receipt, dir, verifier_key } => {
            let key = crate::record::verifier(verifier_key.as_deref(), settings)?;
            let (proof, line) = crate::record::prove(&receipt, &dir, &key)?;
            println!("{proof}");
            println!("{line}");
        }
    }
    Ok(())
}

/// The shared clients for an admin command; `None` if interrupted first.
async fn connect(settings: Settings) -> anyhow::Result<Option<tally_platform::Deps>> {
    let shutdown = tally_platform::shutdown::on_signal();
    let readiness = tally_platform::readiness::Readiness::default();
    tally_platform::Deps::connect(std::sync::Arc::new(settings), &readiness, &shutdown).await
}

fn print_urls(app: &App) {
    if let Some(api) = app.api_addr {
        println!("API           http://{api}/v1");
        println!("API docs      http://{api}/docs");
        println!("Voter page    http://{api}/vote");
    }
    if let Some(live) = app.broadcaster_addr {
        println!("Live results  http://{live}/");
    }
    println!("Metrics       http://{}/metrics", app.admin_addr);
    println!("Readiness     http://{}/readyz", app.admin_addr);
}

fn command_args(command: CitizensCommand) -> RegistryCommand {
    match command {
        CitizensCommand::Import { file, skip_bad_rows } => RegistryCommand::Import { file, skip_bad_rows },
        CitizensCommand::Generate { count, seed, first_id, output, into_db } => {
            RegistryCommand::Generate { count, seed, first_id, output, into_db }
        }
        CitizensCommand::Codes { ids, output, .. } => RegistryCommand::Codes { ids, without_account: output },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_and_argument_has_help() {
        use clap::CommandFactory;
        let missing = tally_bench::flags_without_help(&super::Cli::command());
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
