//! Integration tests against the real Postgres, Redis and NATS.

mod foundation;
mod helpers;
mod identity;
mod logs;
mod registry;
