use clap::Parser;

fn main() -> std::process::ExitCode {
    tally::cli::Cli::parse().run()
}
