//! Integration tests against the real Postgres, Redis and NATS.

mod elections;
mod foundation;
mod helpers;
mod identity;
mod logs;
mod openapi;
mod pipeline;
mod registry;
