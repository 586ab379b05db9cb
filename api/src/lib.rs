//! The api role: the public REST API. Thin by design: it checks who is
//! calling and what they may do, and hands ballots to JetStream.

pub mod audit;
pub mod auth;
pub mod ballots;
pub mod catalog_sync;
pub mod election_cache;
pub mod elections;
pub mod fences;
pub mod idempotency;
pub mod limits;
pub mod openapi;
pub mod state;

use axum::Router;
use axum::routing::{delete, get, post};
use tally_http::rate_limit;
use tally_platform::Deps;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use state::ApiState;

/// Routes whose handlers apply the per-client limit themselves: ballots
/// inside the Redis pipeline they send anyway (one round trip on the hot
/// path), receipts in the process (a Redis key would date each look-up).
const CHECKED_IN_HANDLER: &[(&str, &str)] =
    &[("POST", "/v1/elections/{id}/ballots"), ("GET", "/v1/receipts/{receipt}")];

pub fn router(state: ApiState) -> Router {
    let routes = Router::new()
        .route("/v1/auth/signup", post(auth::signup::signup))
        .route("/v1/auth/login", post(auth::session::login))
        .route("/v1/auth/refresh", post(auth::session::refresh))
        .route("/v1/auth/logout", post(auth::session::logout))
        .route("/v1/auth/logout-all", post(auth::session::logout_all))
        .route("/v1/me", get(auth::me::me))
        .route("/v1/audit", get(audit::list))
        .route("/v1/elections", get(elections::public::list).post(elections::admin::create))
        .route("/v1/elections/{id}", get(elections::public::get).patch(elections::admin::update))
        .route("/v1/elections/{id}/runners", post(elections::admin::add_runner))
        .route("/v1/elections/{id}/runners/{citizen_id}", delete(elections::admin::remove_runner))
        .route("/v1/elections/{id}/close", post(elections::admin::close))
        .route("/v1/elections/{id}/cancel", post(elections::admin::cancel))
        .route("/v1/elections/{id}/eligibility", get(elections::public::check_eligibility))
        .route("/v1/elections/{id}/results", get(elections::results::results))
        .route("/v1/elections/{id}/ballots", post(ballots::cast))
        .route("/v1/elections/{id}/ballot", get(ballots::mine))
        .route("/v1/receipts/{receipt}", get(ballots::receipt))
        .with_state(state.clone())
        .merge(openapi::routes());
    let routes = rate_limit::limit_per_client(routes, &state.deps, CHECKED_IN_HANDLER);
    tally_http::middleware::public_stack(routes, &state.deps.settings.http)
}

/// The api role's counters, at zero before the first event.
fn register_metrics() {
    use tally_platform::telemetry::zero_counters;
    metrics::counter!("tally_votes_accepted_total").increment(0);
    zero_counters(
        "tally_votes_refused_total",
        "reason",
        &[
            "election_not_open",
            "invalid_selection",
            "already_voted",
            "too_young",
            "wrong_province",
            "not_open",
            "cancelled",
        ],
    );
    zero_counters("tally_publish_failures_total", "kind", &["timeout", "refused"]);
    zero_counters(
        "tally_auth_failures_total",
        "reason",
        &[
            "missing",
            "malformed",
            "expired",
            "signature",
            "revoked",
            "invalid_credentials",
            "reused",
            "not_admin",
            "reenrollment_required",
            "invalid_enrollment_code",
        ],
    );
    zero_counters(
        "tally_rate_limited_total",
        "scope",
        &[
            "client",
            "receipts-client",
            "login-ip",
            "login-pair",
            "login-citizen",
            "signup-ip",
            "signup-pair",
            "signup-citizen",
            "refresh-citizen",
            "eligibility-citizen",
        ],
    );
    zero_counters("tally_attempts_slowed_total", "scope", &["login-citizen", "signup-citizen"]);
    metrics::counter!("tally_rate_limit_errors_total").increment(0);
}

pub async fn run(deps: Deps, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    register_metrics();
    let state = ApiState::new(deps)?;
    let redis = tally_platform::redis::client(&state.deps.settings.redis)?;
    let follower = tokio::spawn(state.elections.clone().follow(
        redis,
        state.deps.keys.elections_channel(),
        shutdown.clone(),
    ));
    // Revocations recorded while no API ran (a migration ending old
    // accounts' sessions, an admin command during an upgrade) reach Redis
    // now, not only when Redis is found empty.
    let verifier = state.verifier.clone();
    tokio::spawn(async move {
        if let Err(e) = verifier.restore().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "restoring revocations at start failed; Redis keeps its own"
            );
        }
    });
    let settings = state.deps.settings.clone();
    let served = tally_http::serve::serve(listener, router(state), &settings.http, shutdown).await;
    follower.abort();
    served
}
