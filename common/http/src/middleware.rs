//! What every HTTP listener shares: request ids, a span per request named by
//! its route template, request metrics, body limits, timeouts, problem+json
//! for everything axum would answer in plain text, and graceful serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::error::{ApiError, Counted, Outcome};
use tally_platform::config::HttpSettings;
use tally_platform::proxies::TrustedProxies;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps a role's routes with the shared middleware.
pub fn public_stack(router: Router, settings: &HttpSettings) -> Router {
    router
        .fallback(|| async { ApiError::not_found("not_found").with_detail("no such resource") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        })
        .layer(axum::Extension(
            TrustedProxies::parse(&settings.trusted_proxies)
                .and_then(|t| t.with_ipv6_prefix(settings.ipv6_client_prefix))
                .unwrap_or_default(),
        ))
        .layer(default_header("content-security-policy", "default-src 'none'; frame-ancestors 'none'"))
        .layer(default_header("x-content-type-options", "nosniff"))
        .layer(default_header("referrer-policy", "no-referrer"))
        .layer(default_header("x-frame-options", "DENY"))
        .layer(cors(settings))
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(CatchPanicLayer::custom(|_panic| {
            // The panic message is printed by the panic hook, never sent.
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal").into_response()
        }))
        .layer(middleware::from_fn(record_outcome))
        .layer(middleware::from_fn_with_state(Duration::from_millis(settings.request_timeout_ms), time_limit))
        .layer(middleware::from_fn_with_state(Arc::new(Semaphore::new(settings.max_in_flight)), shed_load))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_request(())
                        .on_response(on_response)
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

/// A header every response carries unless its route set its own (the live
/// page and the API documentation have their own, looser CSP).
fn default_header(name: &'static str, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(HeaderName::from_static(name), HeaderValue::from_static(value))
}

/// What a client names a ballot by for safe retries (the api role reads it).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// CORS for the configured origins only; with none, no CORS headers at all.
fn cors(settings: &HttpSettings) -> CorsLayer {
    let origins: Vec<HeaderValue> =
        settings.cors_allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    if origins.is_empty() {
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID, IDEMPOTENCY_KEY])
        .expose_headers(
            [REQUEST_ID, header::RETRY_AFTER]
                .into_iter()
                .chain(crate::rate_limit::HEADERS)
                .collect::<Vec<_>>(),
        )
        .max_age(Duration::from_secs(600))
}

fn make_span(request: &Request) -> Span {
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
    let request_id =
        request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        request_id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

fn on_response(response: &Response, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    if response.status().is_server_error() {
        tracing::warn!("answered");
    } else {
        tracing::debug!("answered");
    }
}

/// The one place where answers are logged and counted: handlers and
/// extractors return errors as values (see `error`), and this layer,
/// inside the request's span, writes the cause of a failure to the log
/// and counts requests and refusals.
///
/// Counts are by route template, never by raw path, and by a known
/// method, never by whatever a client sends, so label values stay few.
async fn record_outcome(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // One allocation for the route, shared by both series' labels.
    let route: metrics::SharedString = match request.extensions().get::<MatchedPath>() {
        Some(path) => std::sync::Arc::<str>::from(path.as_str()).into(),
        None => "unmatched".into(),
    };
    let method = method_label(request.method());
    let response = next.run(request).await;
    if let Some(outcome) = response.extensions().get::<Outcome>() {
        report(outcome, response.status());
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("tally_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

fn report(outcome: &Outcome, status: StatusCode) {
    if let Some(cause) = &outcome.cause {
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(code = outcome.code, error = format!("{cause:#}"), "dependency unavailable");
        } else {
            tracing::error!(code = outcome.code, error = format!("{cause:#}"), "request failed");
        }
    }
    for counted in &outcome.counted {
        count(*counted);
    }
}

fn count(counted: Counted) {
    match counted {
        Counted::AuthFailure(reason) => {
            metrics::counter!("tally_auth_failures_total", "reason" => reason).increment(1);
        }
        Counted::RateLimited(scope) => {
            metrics::counter!("tally_rate_limited_total", "scope" => scope).increment(1);
        }
        Counted::BallotRefused(reason) => {
            metrics::counter!("tally_votes_refused_total", "reason" => reason).increment(1);
        }
        Counted::PublishFailed(kind) => {
            metrics::counter!("tally_publish_failures_total", "kind" => kind).increment(1);
        }
    }
}

/// The request methods this service answers; anything else is `_OTHER`
/// (OpenTelemetry's name for it), so invented methods add no series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

/// A request that takes longer than the limit is answered 503 so the client
/// can retry, instead of hanging on a stuck dependency.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout").with_retry_after(1).into_response()
        }
    }
}

/// Beyond the in-flight limit a request is refused at once: a quick 503
/// the client can retry beats a slow answer for everyone.
async fn shed_load(
    axum::extract::State(in_flight): axum::extract::State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match in_flight.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            metrics::counter!("tally_http_shed_total").increment(1);
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                .with_detail("too many requests in progress; retry after Retry-After")
                .with_retry_after(1)
                .into_response()
        }
    }
}

/// Binds a listener, naming the setting when the address is taken.
pub async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} (setting `{setting}`, env {}): {e}",
            tally_platform::config::env_var_for(setting)
        )
    })
}

/// Serves the admin listener (health, readiness, metrics): plain HTTP on
/// a private address, until `shutdown` fires. Public listeners use
/// `crate::serve::serve`.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

/// A JSON body for small handler answers such as `/healthz`.
pub fn json_status(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}
