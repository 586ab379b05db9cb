//! How often anyone may try a password or an enrollment code.
//!
//! Three limits, all shared through Redis and all failing closed (without
//! them, guessing would be unlimited):
//! - per address, whichever citizens it names;
//! - per (citizen, address): the guessing budget of one address against
//!   one citizen. Keyed by the pair, so an attacker who exhausts it locks
//!   out only themselves, never the citizen;
//! - per citizen over every address, the backstop against guessing from
//!   many addresses. Past it an attempt is slowed, not refused: it takes
//!   the next free slot and waits for it, so the citizen still gets in.
//!   Only an attempt that would wait longer than [`MAX_WAIT_MS`] is told
//!   to come back later.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use tally_http::ApiError;
use tally_http::rate_limit::DecisionExt;
use tally_platform::limits;
use tally_platform::limits::Quota;

use crate::ApiState;

/// Longest an attempt is held for its slot; well below the default
/// request timeout, so a slowed attempt is answered, not timed out.
pub const MAX_WAIT_MS: u64 = 5_000;

/// GCRA that reserves: an attempt past the burst takes the next slot and
/// is told how long to wait for it, unless that is longer than ARGV[3].
/// Redis's clock, like `rate_limit`, so replicas agree.
const BACKSTOP: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - interval * burst - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {0, wait - max_wait} end
local next_tat = tat + interval
redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now)
return {1, wait}
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Login,
    Signup,
}

impl Attempt {
    /// Rate-limit scopes: per address, per (citizen, address), per citizen.
    fn scopes(self) -> [&'static str; 3] {
        match self {
            Attempt::Login => ["login-ip", "login-pair", "login-citizen"],
            Attempt::Signup => ["signup-ip", "signup-pair", "signup-citizen"],
        }
    }
}

/// Counts one attempt of `client` naming `citizen_id`: `Err(429)` past an
/// address's budget, a wait past the citizen's backstop, `Err(503)`
/// without Redis.
pub async fn admit(
    state: &ApiState,
    attempt: Attempt,
    client: IpAddr,
    citizen_id: i64,
) -> Result<(), ApiError> {
    let auth = &state.deps.settings.auth;
    let [per_ip, per_pair, per_citizen] = attempt.scopes();
    let address_limit = match attempt {
        Attempt::Login => auth.login_attempts_per_ip,
        Attempt::Signup => auth.signup_attempts_per_ip,
    };
    let window = |limit| Quota { limit, period_secs: auth.login_window_secs };
    for (scope, subject, quota) in [
        (per_ip, client.to_string(), window(address_limit)),
        (per_pair, format!("{citizen_id}@{client}"), window(auth.attempts_per_citizen_address)),
    ] {
        limits::check(&state.deps.redis, &state.deps.keys.rate_limit(scope, &subject), quota)
            .await
            .map_err(|e| ApiError::unavailable(e, 1))?
            .enforce(scope)?;
    }
    let quota = window(auth.attempts_per_citizen);
    if quota.is_off() {
        return Ok(());
    }
    let key = state.deps.keys.rate_limit(per_citizen, &citizen_id.to_string());
    // Hashed once; sent by its hash, and loaded again after a Redis restart.
    static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BACKSTOP));
    let (admitted, wait_ms): (i64, i64) = SCRIPT
        .key(key)
        .arg(quota.interval_ms())
        .arg(quota.limit)
        .arg(MAX_WAIT_MS)
        .invoke_async(&mut state.deps.redis.clone())
        .await
        .map_err(|e| ApiError::unavailable(anyhow::anyhow!("attempt backstop: {e}"), 1))?;
    let wait_ms = wait_ms.max(0) as u64;
    if admitted != 1 {
        return Err(ApiError::rate_limited(wait_ms.div_ceil(1000), per_citizen)
            .with_detail("too many attempts for this citizen from everywhere; retry after Retry-After"));
    }
    if wait_ms > 0 {
        metrics::counter!("tally_attempts_slowed_total", "scope" => per_citizen).increment(1);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
    Ok(())
}
