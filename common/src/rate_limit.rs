//! Rate limits shared by every replica: GCRA (the generic cell rate
//! algorithm) in one Lua script, so a check is one Redis call that can
//! ride in the same pipeline as other work. A quota of `limit` per
//! `period` allows bursts of up to `limit` and refills smoothly.
//!
//! The script reads Redis's own clock, so replicas with skewed clocks
//! still agree.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::client_ip::ClientIp;
use crate::deps::Deps;
use crate::error::ApiError;
use crate::store::{Keys, Redis};

/// The `RateLimit-*` headers: limit, remaining, seconds until full again.
pub const HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];

const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local next_tat = tat + interval
local allowed_at = next_tat - tolerance
if allowed_at > now then
  return {0, 0, allowed_at - now, tat - now}
end
redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now)
return {1, math.floor((now + tolerance - next_tat) / interval), 0, next_tat - now}
";

/// `limit` requests per `period_secs`; a limit of 0 turns the check off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period_secs: u64,
}

impl Quota {
    pub fn per_minute(limit: u32) -> Quota {
        Quota { limit, period_secs: 60 }
    }

    pub fn is_off(&self) -> bool {
        self.limit == 0 || self.period_secs == 0
    }

    /// Milliseconds between two requests at the sustained rate.
    pub fn interval_ms(&self) -> u64 {
        (self.period_secs * 1000 / u64::from(self.limit.max(1))).max(1)
    }
}

/// The outcome of one check, with what the `RateLimit-*` headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the quota is full again.
    pub reset_secs: u64,
    /// Seconds until the next request would be allowed (0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    /// What a disabled quota answers.
    pub fn unlimited() -> Decision {
        Decision { allowed: true, limit: 0, remaining: 0, reset_secs: 0, retry_after_secs: 0 }
    }

    /// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
    pub fn write_headers(&self, headers: &mut axum::http::HeaderMap) {
        if self.limit == 0 {
            return;
        }
        for (name, value) in self.header_values() {
            headers.insert(name, value);
        }
    }

    fn header_values(&self) -> [(HeaderName, HeaderValue); 3] {
        let [limit, remaining, reset] = HEADERS;
        [
            (limit, HeaderValue::from(self.limit)),
            (remaining, HeaderValue::from(self.remaining)),
            (reset, HeaderValue::from(self.reset_secs)),
        ]
    }

    /// The 429 for a refused decision, counted under `scope`.
    pub fn refusal(&self, scope: &'static str) -> ApiError {
        metrics::counter!("tally_rate_limited_total", "scope" => scope).increment(1);
        self.header_values().into_iter().fold(
            ApiError::rate_limited(self.retry_after_secs)
                .with_detail("too many requests; retry after Retry-After"),
            |error, (name, value)| error.with_header(name, value),
        )
    }

    /// `Err(429)` when refused.
    pub fn enforce(self, scope: &'static str) -> Result<Decision, ApiError> {
        if self.allowed { Ok(self) } else { Err(self.refusal(scope)) }
    }
}

/// Appends one check to a pipeline; read its reply with [`read`].
pub fn add_to(pipe: &mut redis::Pipeline, key: &str, quota: Quota) {
    pipe.cmd("EVAL").arg(GCRA).arg(1).arg(key).arg(quota.interval_ms()).arg(quota.limit);
}

/// Turns a pipeline reply from [`add_to`] into a decision.
pub fn read(quota: Quota, (allowed, remaining, retry_ms, reset_ms): (i64, i64, i64, i64)) -> Decision {
    let secs = |ms: i64| (ms.max(0) as u64).div_ceil(1000);
    Decision {
        allowed: allowed == 1,
        limit: quota.limit,
        remaining: remaining.clamp(0, i64::from(quota.limit)) as u32,
        reset_secs: secs(reset_ms),
        retry_after_secs: secs(retry_ms).max(u64::from(allowed != 1)),
    }
}

/// How long a check may take. While Redis is away its client may wait on
/// reconnection far longer than one reply takes; a limit that cannot
/// answer by then is treated as unavailable (let through, or refused for
/// logins) rather than holding the request until its own timeout.
const CHECK_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// One check on its own: one round trip.
pub async fn check(redis: &Redis, key: &str, quota: Quota) -> anyhow::Result<Decision> {
    if quota.is_off() {
        return Ok(Decision::unlimited());
    }
    let mut pipe = redis::pipe();
    add_to(&mut pipe, key, quota);
    let mut redis = redis.clone();
    let (reply,): ((i64, i64, i64, i64),) = tokio::time::timeout(CHECK_WITHIN, pipe.query_async(&mut redis))
        .await
        .map_err(|_| anyhow::anyhow!("rate limit check: no answer within {CHECK_WITHIN:?}"))?
        .map_err(|e| anyhow::anyhow!("rate limit check: {e}"))?;
    Ok(read(quota, reply))
}

/// The per-client limit on every route of a listener, except `exempt`
/// (method, route template) pairs whose handlers check it themselves in a
/// pipeline they send anyway.
#[derive(Clone)]
pub struct PerClient {
    pub redis: Redis,
    pub keys: Keys,
    pub quota: Quota,
    pub exempt: &'static [(&'static str, &'static str)],
}

/// `routes` with the per-client limit of `limits.per_client_per_minute`,
/// except on `exempt` routes.
pub fn limit_per_client(
    routes: axum::Router,
    deps: &Deps,
    exempt: &'static [(&'static str, &'static str)],
) -> axum::Router {
    let limiter = std::sync::Arc::new(PerClient {
        redis: deps.redis.clone(),
        keys: deps.keys.clone(),
        quota: Quota::per_minute(deps.settings.limits.per_client_per_minute),
        exempt,
    });
    routes.layer(axum::middleware::from_fn_with_state(limiter, per_client))
}

/// Middleware for [`PerClient`]. When Redis cannot answer, the request is
/// let through (fail open) and counted: this limit protects capacity, and
/// refusing every request while Redis restarts would do more harm than
/// the abuse it stops. Logins fail closed instead (see `auth::session`).
pub async fn per_client(
    State(limiter): State<std::sync::Arc<PerClient>>,
    ClientIp(client): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let exempt = route.is_some_and(|r| limiter.exempt.contains(&(request.method().as_str(), r)));
    if exempt || limiter.quota.is_off() {
        return next.run(request).await;
    }
    let key = limiter.keys.rate_limit("client", &client.to_string());
    match enforce_or_let_through(&limiter.redis, &key, limiter.quota, "client").await {
        Ok(decision) => annotate(next.run(request).await, &decision),
        Err(refusal) => refusal.into_response(),
    }
}

/// One check of a capacity limit: `Err(429)` when refused. When Redis
/// cannot answer, the request is let through and counted (fail open).
pub async fn enforce_or_let_through(
    redis: &Redis,
    key: &str,
    quota: Quota,
    scope: &'static str,
) -> Result<Decision, ApiError> {
    match check(redis, key, quota).await {
        Ok(decision) => decision.enforce(scope),
        Err(error) => {
            metrics::counter!("tally_rate_limit_errors_total").increment(1);
            tracing::warn!(
                error = format!("{error:#}"),
                scope,
                "rate limit unavailable; request let through"
            );
            Ok(Decision::unlimited())
        }
    }
}

/// Adds the decision's headers to a response that was allowed through.
pub fn annotate(mut response: Response, decision: &Decision) -> Response {
    decision.write_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_decisions() {
        let quota = Quota::per_minute(10);
        assert_eq!(quota.interval_ms(), 6000);
        let allowed = read(quota, (1, 9, 0, 6000));
        assert_eq!(
            allowed,
            Decision { allowed: true, limit: 10, remaining: 9, reset_secs: 6, retry_after_secs: 0 }
        );
        let refused = read(quota, (0, 0, 1200, 60_000));
        assert_eq!(refused.retry_after_secs, 2, "rounded up, never 0");
        assert!(!refused.allowed);
        assert!(Quota::per_minute(0).is_off());
    }
}
