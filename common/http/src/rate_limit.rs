//! Rate limits at the HTTP edge: the `RateLimit-*` headers, the 429, and
//! the per-client limit on a listener's routes. The counting itself (GCRA
//! in Redis) lives in `tally_platform::limits`.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_platform::Deps;
use tally_platform::limits::{Decision, Quota, check};
use tally_platform::redis::{Keys, Redis};

use crate::client_ip::ClientIp;
use crate::error::ApiError;

/// The `RateLimit-*` headers: limit, remaining, seconds until full again.
pub const HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];

/// A decision as HTTP: its headers and its refusal.
pub trait DecisionExt: Sized {
    /// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
    fn write_headers(&self, headers: &mut axum::http::HeaderMap);
    /// The 429 for a refused decision, to be counted under `scope`.
    fn refusal(&self, scope: &'static str) -> ApiError;
    /// `Err(429)` when refused.
    fn enforce(self, scope: &'static str) -> Result<Decision, ApiError>;
}

impl DecisionExt for Decision {
    fn write_headers(&self, headers: &mut axum::http::HeaderMap) {
        if self.limit == 0 {
            return;
        }
        for (name, value) in header_values(self) {
            headers.insert(name, value);
        }
    }

    fn refusal(&self, scope: &'static str) -> ApiError {
        header_values(self).into_iter().fold(
            ApiError::rate_limited(self.retry_after_secs, scope)
                .with_detail("too many requests; retry after Retry-After"),
            |error, (name, value)| error.with_header(name, value),
        )
    }

    fn enforce(self, scope: &'static str) -> Result<Decision, ApiError> {
        if self.allowed { Ok(self) } else { Err(self.refusal(scope)) }
    }
}

fn header_values(decision: &Decision) -> [(HeaderName, HeaderValue); 3] {
    let [limit, remaining, reset] = HEADERS;
    [
        (limit, HeaderValue::from(decision.limit)),
        (remaining, HeaderValue::from(decision.remaining)),
        (reset, HeaderValue::from(decision.reset_secs)),
    ]
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
