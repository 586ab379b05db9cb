//! The one layer every public request passes on its way in and out: the
//! in-flight limit, the deadline, a caught panic, the request id and span,
//! the answer logged and counted, and the headers every answer carries.
//!
//! One hand-written service instead of a stack of ten: each tower layer
//! costs a clone, a boxed or wrapped future and a poll on every request,
//! and at full load the stack cost more CPU than the ballot handler
//! (docs/performance.md). Its order is what the stack's was, with these
//! changes: answers the edge itself gives (shed, timed out, a panic's 500)
//! are counted and carry the security headers too (a shed answer is kept
//! out of the duration histogram); a caller's request id is kept only when
//! short and plain; with no CORS origins configured, a preflight is
//! answered 405 like any other unrouted method.

mod counters;

use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use tracing::Instrument;

use self::counters::Counters;
use crate::error::ApiError;
use crate::middleware::REQUEST_ID;
use tally_platform::proxies::TrustedProxies;

/// Headers every answer carries unless its route set its own (the live
/// page and the API documentation have their own, looser CSP).
const DEFAULT_HEADERS: [(HeaderName, HeaderValue); 4] = [
    (
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ),
    (HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")),
    (HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer")),
    (HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY")),
];

/// The longest request id a caller may choose.
const MAX_GIVEN_ID: usize = 64;

#[derive(Clone)]
pub struct EdgeLayer {
    edge: Arc<Edge>,
}

impl EdgeLayer {
    pub fn new(max_in_flight: usize, time_limit: Duration, proxies: TrustedProxies) -> EdgeLayer {
        EdgeLayer {
            edge: Arc::new(Edge {
                in_flight: Semaphore::new(max_in_flight),
                time_limit,
                proxies,
                ids: RequestIds::new(),
                counters: Counters::default(),
            }),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService { inner, edge: self.edge.clone() }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    edge: Arc<Edge>,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was made ready serves this request (tower's rule).
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let edge = self.edge.clone();
        Box::pin(async move { Ok(edge.serve(inner, request).await) })
    }
}

struct Edge {
    in_flight: Semaphore,
    time_limit: Duration,
    proxies: TrustedProxies,
    ids: RequestIds,
    counters: Counters,
}

impl Edge {
    async fn serve<S>(&self, inner: S, mut request: Request) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let started = Instant::now();
        let given = request.headers().get(REQUEST_ID).filter(|id| acceptable_id(id.as_bytes()));
        let id = match given {
            Some(given) => given.clone(),
            None => {
                let made = self.ids.next();
                request.headers_mut().insert(REQUEST_ID, made.clone());
                made
            }
        };
        let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
        let counted = self.counters.route(route, request.method());
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            route,
            request_id = id.to_str().unwrap_or("-"),
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        request.extensions_mut().insert(self.proxies.clone());
        let (mut response, routed) = self.answer(inner, request).instrument(span.clone()).await;
        let latency = started.elapsed();
        let status = response.status();
        {
            let _entered = span.enter();
            crate::middleware::report_outcome(&response);
            span.record("status", status.as_u16());
            span.record("latency_ms", latency.as_secs_f64() * 1000.0);
            if status.is_server_error() {
                tracing::warn!("answered");
            } else {
                tracing::debug!("answered");
            }
        }
        // A shed answer takes no time and says nothing of the route's
        // latency: counted, but kept out of the duration histogram.
        counted.answered(status, routed.then_some(latency));
        set_default_headers(response.headers_mut());
        response.headers_mut().insert(REQUEST_ID, id);
        response
    }

    /// The route's answer, or the edge's own: 503 beyond the in-flight
    /// limit (then `false`: the route never ran) or past the deadline, 500
    /// for a panic (its message goes to the panic hook's output, never to
    /// the client).
    async fn answer<S>(&self, mut inner: S, request: Request) -> (Response, bool)
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            metrics::counter!("tally_http_shed_total").increment(1);
            let shed = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                .with_detail("too many requests in progress; retry after Retry-After")
                .with_retry_after(1);
            return (shed.into_response(), false);
        };
        // `call` inside the future, so a panic in it is caught too.
        let routed = AssertUnwindSafe(async move { inner.call(request).await }).catch_unwind();
        let response = match tokio::time::timeout(self.time_limit, routed).await {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(never))) => match never {},
            Ok(Err(_panic)) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal").into_response(),
            Err(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout").with_retry_after(1).into_response()
            }
        };
        (response, true)
    }
}

/// A caller's own request id, written into every log line of the request:
/// kept only when short and made of letters, digits and `.-_:`.
fn acceptable_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_GIVEN_ID
        && id.iter().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(b))
}

fn set_default_headers(headers: &mut HeaderMap) {
    for (name, value) in DEFAULT_HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
}

/// Request ids for requests that came without one: a counter under two
/// keyed hashes (SipHash, keys drawn at start), in the UUID's text form.
/// Unique in practice, made without a system call per request, and they
/// say nothing of how many requests came between two of a client's own.
struct RequestIds {
    keys: (RandomState, RandomState),
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        RequestIds { keys: (RandomState::new(), RandomState::new()), next: AtomicU64::new(0) }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = uuid::Uuid::from_u64_pair(self.keys.0.hash_one(n), self.keys.1.hash_one(n));
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn routes(max_in_flight: usize) -> Router {
        Router::new()
            .route("/fine", get(|| async { "fine" }))
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }))
            .route("/broken", get(broken))
            .layer(EdgeLayer::new(max_in_flight, Duration::from_millis(100), TrustedProxies::default()))
    }

    async fn broken() -> &'static str {
        panic!("a bug")
    }

    async fn get_from(router: Router, path: &str) -> Response {
        router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    fn code(response: &Response) -> &'static str {
        response.extensions().get::<crate::error::Outcome>().map_or("", |o| o.code)
    }

    #[tokio::test]
    async fn every_answer_carries_a_request_id_and_the_security_headers() {
        for (path, status) in [
            ("/fine", StatusCode::OK),
            ("/slow", StatusCode::SERVICE_UNAVAILABLE),
            ("/broken", StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            let response = get_from(routes(8), path).await;
            assert_eq!(response.status(), status, "{path}");
            assert!(response.headers().contains_key(REQUEST_ID), "{path}");
            for (name, value) in DEFAULT_HEADERS {
                assert_eq!(response.headers().get(&name), Some(&value), "{path}: {name}");
            }
        }
    }

    #[tokio::test]
    async fn a_request_past_the_deadline_is_told_to_retry() {
        let response = get_from(routes(8), "/slow").await;
        assert_eq!(code(&response), "timeout");
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[tokio::test]
    async fn a_panic_is_answered_without_its_message() {
        let response = get_from(routes(8), "/broken").await;
        assert_eq!(code(&response), "internal");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("a bug"));
    }

    #[tokio::test]
    async fn beyond_the_in_flight_limit_requests_are_shed_at_once() {
        let router = routes(1);
        let slow = tokio::spawn(get_from(router.clone(), "/slow"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let shed = get_from(router, "/fine").await;
        assert_eq!((shed.status(), code(&shed)), (StatusCode::SERVICE_UNAVAILABLE, "overloaded"));
        assert_eq!(code(&slow.await.unwrap()), "timeout");
    }

    #[tokio::test]
    async fn a_callers_request_id_is_kept_only_when_short_and_plain() {
        let long = "x".repeat(MAX_GIVEN_ID + 1);
        for (given, kept) in [("req-123", true), ("a\"b c", false), (long.as_str(), false)] {
            let request = Request::get("/fine").header(REQUEST_ID, given).body(Body::empty()).unwrap();
            let response = routes(8).oneshot(request).await.unwrap();
            assert_eq!(response.headers()[REQUEST_ID] == given, kept, "{given}");
        }
    }

    #[test]
    fn request_ids_differ_and_read_as_uuids() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        for id in [a, b] {
            uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
        }
    }
}
