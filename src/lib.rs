//! The `tally` binary's library: the command line, and the assembly of
//! roles into one process.

pub mod admin;
pub mod app;
pub mod cli;
pub mod health;
pub mod record;
pub mod registry;
pub mod seed;
