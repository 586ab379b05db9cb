//! Integration tests against the real Postgres, Redis and NATS.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod audit;
mod broadcast;
mod browser;
mod demo;
mod elections;
mod enrollment;
mod exhaustion;
mod failover;
mod foundation;
mod hardening;
mod helpers;
mod hostile;
mod identity;
mod limits;
mod logs;
mod model;
mod nats_auth;
mod observability;
mod openapi;
mod outage;
mod pipeline;
mod promise;
mod record;
mod registry;
mod secrecy;
