//! One `clap` tree for every command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_common::Settings;

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
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Load a synthetic citizen registry and an open demo election (idempotent).
    SeedDemo {
        /// How many synthetic citizens to make sure exist.
        #[arg(long, default_value_t = 10_000)]
        citizens: u64,
    },
}

impl Cli {
    pub fn run(self) -> ExitCode {
        let settings = match Settings::load(self.config.as_deref()) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("tally: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = tally_common::telemetry::init_tracing(&settings.log) {
            eprintln!("tally: {e:#}");
            return ExitCode::from(2);
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("tally: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(self.command.execute(settings)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tally: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

impl Command {
    async fn execute(self, settings: Settings) -> anyhow::Result<()> {
        match self {
            Command::Serve { roles } => {
                let shutdown = tally_common::shutdown::on_signal();
                let mut app = App::start(settings, roles, shutdown).await?;
                if app.ready().await.is_ok() {
                    print_urls(&app);
                }
                app.wait().await
            }
            Command::Migrate => {
                tally_common::db::create_database_if_missing(&settings.database).await?;
                let pool = tally_common::db::pool(&settings.database)?;
                tally_common::db::migrate(&pool).await?;
                println!("migrations applied");
                Ok(())
            }
            Command::SeedDemo { citizens } => {
                let pool = tally_common::db::pool(&settings.database)?;
                let report = crate::seed::seed_demo(&pool, citizens).await.context("seeding the demo")?;
                println!("{report}");
                Ok(())
            }
        }
    }
}

fn print_urls(app: &App) {
    if let Some(api) = app.api_addr {
        println!("API           http://{api}/v1");
        println!("API docs      http://{api}/docs");
    }
    if let Some(live) = app.broadcaster_addr {
        println!("Live results  http://{live}/");
    }
    println!("Metrics       http://{}/metrics", app.admin_addr);
    println!("Readiness     http://{}/readyz", app.admin_addr);
}
