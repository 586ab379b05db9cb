//! Per-citizen rate limits of the API, and receipts' per-address limit
//! kept in the process (the shared per-client limit is
//! `tally_http::rate_limit::PerClient`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_http::ApiError;
use tally_http::rate_limit;
use tally_http::rate_limit::DecisionExt;
use tally_platform::limits;
use tally_platform::limits::Quota;

use crate::ApiState;

/// Counts one request of `citizen_id` against `per_minute`. Fails open when
/// Redis cannot answer, like the per-client limit: these limits guard
/// capacity, not secrets.
pub async fn per_citizen(
    state: &ApiState,
    scope: &'static str,
    citizen_id: i64,
    per_minute: u32,
) -> Result<(), ApiError> {
    let key = state.deps.keys.rate_limit(scope, &citizen_id.to_string());
    let quota = Quota::per_minute(per_minute);
    rate_limit::enforce_or_let_through(&state.deps.redis, &key, quota, scope).await.map(drop)
}

/// A per-address limit kept in this process (GCRA over `Instant`s), for
/// routes where a shared Redis key would itself be a trail: the receipt
/// route would leave the time of every look-up next to the address.
/// Replicas each allow the quota, which is fine for a read-only route.
#[derive(Clone)]
pub struct PerAddress {
    interval: Option<Duration>,
    burst: u32,
    due: Arc<Mutex<HashMap<IpAddr, Instant>>>,
}

/// Addresses remembered before stale ones are swept.
const SWEEP_AT: usize = 100_000;

impl PerAddress {
    pub fn per_minute(limit: u32) -> PerAddress {
        let interval = (limit > 0).then(|| Duration::from_secs(60) / limit);
        PerAddress { interval, burst: limit, due: Arc::default() }
    }

    /// Counts one request from `ip`; 429 with Retry-After when over.
    pub fn admit(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(interval) = self.interval else { return Ok(()) };
        let now = Instant::now();
        let window = interval * self.burst;
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        if due.len() >= SWEEP_AT {
            due.retain(|_, at| *at > now);
        }
        let at = due.get(&ip).copied().filter(|at| *at > now).unwrap_or(now);
        let next = at + interval;
        if next > now + window {
            let wait = next - now - window;
            let decision = limits::Decision {
                allowed: false,
                limit: self.burst,
                remaining: 0,
                reset_secs: (at - now).as_secs().max(1),
                retry_after_secs: wait.as_secs().max(1),
            };
            return Err(decision.refusal("receipts-client"));
        }
        due.insert(ip, next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_quota_then_waits() {
        let limit = PerAddress::per_minute(3);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(limit.admit(ip).is_ok());
        }
        assert!(limit.admit(ip).is_err(), "the fourth within a minute is refused");
        assert!(limit.admit([10, 0, 0, 2].into()).is_ok(), "other addresses are not affected");
        assert!(PerAddress::per_minute(0).admit(ip).is_ok(), "0 turns the limit off");
    }
}
