use clap::Parser;

// Every ballot allocates a few dozen small buffers across threads
// (request, JSON, NATS and Redis frames); glibc's allocator spent a tenth
// of the process's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tally::cli::Cli::parse().run()
}
