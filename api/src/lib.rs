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
pub mod receipt_trees;
pub mod record;
pub mod state;
pub mod vote_page;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use tally_platform::Deps;

use ballots::voter_notes::VoterNotes;
pub use state::ApiState;

/// The api role's router. Each route is registered once, with its OpenAPI
/// operation (`utoipa_axum::routes!`), so the served routes and the
/// document are the same list.
///
/// Which per-client limit a route gets is a matter of where it is
/// registered: the routes of [`limited_by_layer`] pass the `PerClient`
/// layer; those of [`ballots::routes_limited_in_handler`] count the client
/// themselves, and must not pass the layer too. Each kind of limit has one
/// enforcement point, so it fails one way: the shared limit (`client`)
/// goes through `PerClient::settle` (from the layer, or from the ballot's
/// preflight round trip), which lets a request through and counts it when
/// Redis cannot answer; receipts' limit (`receipts-client`) is kept in the
/// process by `PerAddress::admit`, and needs no Redis to answer.
pub fn router(state: ApiState) -> Router {
    let (limited, limited_paths) = limited_by_layer().split_for_parts();
    let (own, own_paths) =
        ballots::routes_limited_in_handler().merge(record::routes_limited_in_handler()).split_for_parts();
    let docs = openapi::routes(openapi::document(limited_paths.merge_from(own_paths)));
    let pages = docs.merge(vote_page::routes(&state.deps.settings.http));
    let limited = state.per_client.layer(limited.with_state(state.clone()).merge(pages));
    let routes = limited.merge(own.with_state(state.clone()));
    tally_http::middleware::public_stack(routes, &state.deps.settings.http)
}

fn limited_by_layer() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(audit::routes())
        .merge(elections::routes())
        .merge(ballots::routes())
        .merge(record::routes())
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
    let (voter_notes, notes_sending) = VoterNotes::start(deps.redis.clone(), deps.keys.clone());
    let state = ApiState::new(deps, voter_notes)?;
    let redis = tally_platform::redis::master(&state.deps.settings.redis)?;
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
    // Every request has been answered: the last notes go out now.
    notes_sending.finish().await;
    served
}
