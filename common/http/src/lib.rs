//! What every HTTP listener shares: the problem+json error, extractors,
//! the middleware stack, the server loop, the admin endpoints, who is
//! calling and the rate limits at the edge.
//!
//! The top layer of `common/`: it builds on `tally-platform` and
//! `tally-domain`.

pub mod admin;
pub mod assets;
pub mod auth;
pub mod client_ip;
mod edge;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod rate_limit;
pub mod serve;

pub use error::ApiError;
pub use extract::{Json, Path, Query};
