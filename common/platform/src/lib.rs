//! What every role runs on: settings, telemetry, and the clients for
//! Postgres, Redis and NATS with what Tally keeps in each.
//!
//! Above `tally-domain`, below `tally-http`, which it never names.

pub mod audit;
pub mod auth;
pub mod config;
pub mod deps;
pub mod elections;
pub mod fence;
pub mod limits;
pub mod metrics;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod program;
pub mod proxies;
pub mod readiness;
pub mod records;
pub mod redis;
pub mod retry;
pub mod round_trip;
pub mod shutdown;
pub mod streams;
pub mod tallies;
pub mod telemetry;
pub mod tls;
pub mod voters;

pub use config::Settings;
pub use deps::Deps;
