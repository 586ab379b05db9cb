//! Rate limits at the HTTP edge: the `RateLimit-*` headers, the 429, and
//! the per-client limit on a listener's routes. The counting itself (GCRA
//! in Redis) lives in `tally_platform::limits`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_platform::Deps;
use tally_platform::limits::{self, Decision, Quota, check};
use tally_platform::redis::{Keys, Redis};
use tally_platform::round_trip::{Reply, RoundTrip};

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

/// The per-client limit: one budget per client address, shared by every
/// replica through Redis, counted by GCRA under the scope `client`.
///
/// It is enforced in one way wherever it is counted: [`PerClient::settle`]
/// turns the outcome of a check into an answer. A check that Redis cannot
/// answer lets the request through and is counted in
/// `tally_rate_limit_errors_total` (fail open): this limit protects
/// capacity, and refusing every request while Redis restarts would do more
/// harm than the abuse it stops. Logins fail closed instead (see
/// `auth::session`).
///
/// Most routes get it from [`PerClient::layer`]. A route whose handler
/// sends a Redis round trip anyway may count it there instead (one round
/// trip on the hot path) by being left out of the layered router and
/// calling [`PerClient::ask`] and [`PerClient::settle`]: which routes do is
/// decided by how the router is built, not by a list of exceptions here.
#[derive(Clone)]
pub struct PerClient {
    redis: Redis,
    keys: Keys,
    quota: Quota,
}

/// The raw reply of a GCRA check queued in a round trip.
pub type GcraReply = (i64, i64, i64, i64);

impl PerClient {
    /// The limit of `limits.per_client_per_minute`.
    pub fn new(deps: &Deps) -> PerClient {
        PerClient {
            redis: deps.redis.clone(),
            keys: deps.keys.clone(),
            quota: Quota::per_minute(deps.settings.limits.per_client_per_minute),
        }
    }

    /// `routes`, each request counted against its client's budget.
    pub fn layer<S: Clone + Send + Sync + 'static>(&self, routes: axum::Router<S>) -> axum::Router<S> {
        routes.layer(axum::middleware::from_fn_with_state(Arc::new(self.clone()), per_client))
    }

    /// Queues this client's check in a round trip the caller sends anyway;
    /// `None` when the limit is off. Its reply goes to [`PerClient::settle`].
    pub fn ask(&self, trip: &mut RoundTrip, client: IpAddr) -> Option<Reply<GcraReply>> {
        if self.quota.is_off() {
            return None;
        }
        let key = self.key(client);
        Some(limits::ask(trip, "the per-client limit", &key, self.quota))
    }

    /// Counts one request of `client` on a round trip of its own.
    pub async fn check(&self, client: IpAddr) -> Result<Decision, ApiError> {
        self.settle(limits::check(&self.redis, &self.key(client), self.quota).await)
    }

    /// The answer to one check: the decision when allowed, 429 when
    /// refused, and when Redis could not answer, through and counted.
    pub fn settle(&self, checked: anyhow::Result<Decision>) -> Result<Decision, ApiError> {
        let_through_when_away(checked, SCOPE)
    }

    /// The decision in a reply from [`PerClient::ask`].
    pub fn read(&self, reply: GcraReply) -> Decision {
        limits::read(self.quota, reply)
    }

    fn key(&self, client: IpAddr) -> String {
        self.keys.rate_limit(SCOPE, &client.to_string())
    }
}

const SCOPE: &str = "client";

/// Middleware for [`PerClient::layer`].
async fn per_client(
    State(limiter): State<Arc<PerClient>>,
    ClientIp(client): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    match limiter.check(client).await {
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
    let_through_when_away(check(redis, key, quota).await, scope)
}

fn let_through_when_away(
    checked: anyhow::Result<Decision>,
    scope: &'static str,
) -> Result<Decision, ApiError> {
    match checked {
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
