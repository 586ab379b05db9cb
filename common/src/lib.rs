//! What the roles share: configuration, the HTTP error shape, telemetry,
//! and the clients for Postgres, Redis and NATS.

pub mod auth;
pub mod ballot;
pub mod bus;
pub mod catalog;
pub mod client_ip;
pub mod config;
pub mod db;
pub mod deps;
pub mod domain;
pub mod election;
pub mod error;
pub mod extract;
pub mod fence;
pub mod health;
pub mod http;
pub mod process;
pub mod rate_limit;
pub mod retry;
pub mod seal;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod streams;
pub mod tally;
pub mod telemetry;

pub use config::Settings;
pub use deps::Deps;
pub use error::ApiError;
pub use extract::{Json, Path, Query};
