//! What every HTTP listener shares: the edge every public request passes
//! (request ids, a span per request named by its route template, request
//! metrics, the in-flight limit, deadlines, caught panics, security
//! headers; see `edge`), body limits, CORS, problem+json for everything
//! axum would answer in plain text, and the admin listener.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::edge::EdgeLayer;
use crate::error::{ApiError, Counted, Outcome};
use tally_platform::config::HttpSettings;
use tally_platform::proxies::TrustedProxies;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps a role's routes with the shared middleware: the edge (see
/// `edge`), the body limit, and CORS when origins are configured.
pub fn public_stack(router: Router, settings: &HttpSettings) -> Router {
    let proxies = TrustedProxies::parse(&settings.trusted_proxies)
        .and_then(|t| t.with_ipv6_prefix(settings.ipv6_client_prefix))
        .unwrap_or_default();
    let router = router
        .fallback(|| async { ApiError::not_found("not_found").with_detail("no such resource") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        });
    let router = match cors(settings) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(DefaultBodyLimit::max(settings.body_limit_bytes)).layer(EdgeLayer::new(
        settings.max_in_flight,
        Duration::from_millis(settings.request_timeout_ms),
        proxies,
    ))
}

/// What a client names a ballot by for safe retries (the api role reads it).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// CORS for the configured origins only; with none, no CORS layer at all.
fn cors(settings: &HttpSettings) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> =
        settings.cors_allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    if origins.is_empty() {
        return None;
    }
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID, IDEMPOTENCY_KEY])
        .expose_headers(
            [REQUEST_ID, header::RETRY_AFTER]
                .into_iter()
                .chain(crate::rate_limit::HEADERS)
                .collect::<Vec<_>>(),
        )
        .max_age(Duration::from_secs(600));
    Some(cors)
}

/// The one place where answers are logged and counted: handlers and
/// extractors return errors as values (see `error`), and the edge, inside
/// the request's span, has the cause of a failure written to the log and
/// the refusals counted here.
pub(crate) fn report_outcome(response: &Response) {
    if let Some(outcome) = response.extensions().get::<Outcome>() {
        report(outcome, response.status());
    }
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
