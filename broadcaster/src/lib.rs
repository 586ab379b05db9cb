//! The broadcaster role: live tallies for viewers over WebSocket and
//! Server-Sent Events, and the live results page.

pub mod frame;
pub mod handshake;
pub mod hub;
pub mod limit;
pub mod page;
pub mod source;
pub mod sse;
pub mod viewer;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tally_http::client_ip::ClientIp;
use tally_http::rate_limit;
use tally_http::{ApiError, Path};
use tally_platform::Deps;
use tally_platform::limits::Quota;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handshake::Handshake;
use crate::hub::Hub;
use crate::limit::PerAddress;
use crate::viewer::Pace;

#[derive(Clone)]
pub struct BroadcasterState {
    hub: Hub,
    viewers: PerAddress,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl BroadcasterState {
    fn pace(&self) -> Pace {
        let settings = &self.hub.deps().settings.broadcaster;
        Pace {
            min_gap: Duration::from_secs(1) / settings.max_updates_per_sec,
            ping_every: Duration::from_secs(settings.ping_interval_secs),
            send_timeout: Duration::from_millis(settings.slow_viewer_timeout_ms),
        }
    }
}

pub fn router(state: BroadcasterState) -> Router {
    let settings = state.hub.deps().settings.clone();
    let routes = Router::new()
        .route("/v1/elections/{id}/live", get(live))
        .route("/v1/elections/{id}/events", get(events))
        .route("/v1/live/elections", get(page::elections))
        .route("/", get(page::index))
        .route("/elections/{id}", get(page::election))
        .route("/assets/{file}", get(page::asset))
        .with_state(state.clone());
    let routes = rate_limit::PerClient::new(state.hub.deps()).layer(routes);
    tally_http::middleware::public_stack(routes, &settings.http)
}

/// The broadcaster's series, at zero before the first viewer.
fn register_metrics() {
    use tally_platform::telemetry::zero_counters;
    for transport in ["websocket", "sse"] {
        metrics::gauge!("tally_viewers", "transport" => transport).increment(0.0);
    }
    zero_counters("tally_broadcast_messages_total", "transport", &["websocket", "sse"]);
    zero_counters("tally_broadcast_coalesced_total", "transport", &["websocket", "sse"]);
    zero_counters("tally_broadcast_dropped_total", "reason", &["send_timeout", "no_pong", "frame_too_big"]);
    zero_counters("tally_rate_limited_total", "scope", &["viewers_per_ip", "client", "live-connects"]);
}

pub async fn run(deps: Deps, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    register_metrics();
    let hub = Hub::new(deps.clone(), shutdown.clone());
    let redis = tally_platform::redis::master(&deps.settings.redis)?;
    let source = tokio::spawn(source::follow(hub.clone(), redis, shutdown.clone()));
    let tracker = TaskTracker::new();
    let viewers = PerAddress::new(deps.settings.broadcaster.max_viewers_per_ip);
    let state = BroadcasterState { hub, viewers, tracker: tracker.clone(), shutdown: shutdown.clone() };
    let settings = state.hub.deps().settings.clone();
    // An SSE viewer that stops reading is noticed only by its socket: its
    // writes stop making progress. WebSocket viewers time out their own sends.
    let stall_limit = Some(Duration::from_millis(settings.broadcaster.slow_viewer_timeout_ms));
    let served = tally_http::serve::serve_with_stall_limit(
        listener,
        router(state),
        &settings.http,
        stall_limit,
        shutdown,
    )
    .await;
    // Viewers got a close frame when shutdown fired; wait for them to go.
    tracker.close();
    tracker.wait().await;
    source.abort();
    served
}

/// Checks the election and the caller's address before any upgrade, so a
/// refusal is an ordinary HTTP answer.
async fn admit(
    state: &BroadcasterState,
    election_id: i64,
    client: std::net::IpAddr,
) -> Result<(std::sync::Arc<hub::Feed>, limit::Slot), ApiError> {
    let deps = state.hub.deps();
    let quota = Quota::per_minute(deps.settings.limits.live_connects_per_client_per_minute);
    let key = deps.keys.rate_limit("live-connects", &client.to_string());
    // Fails open like every capacity limit; the per-address cap on open
    // connections below still holds.
    rate_limit::enforce_or_let_through(&deps.redis, &key, quota, "live-connects").await?;
    let slot = state.viewers.admit(client).ok_or_else(|| {
        ApiError::rate_limited(5, "viewers_per_ip").with_detail("too many live connections from this address")
    })?;
    let feed =
        state.hub.feed(election_id).await.map_err(|e| ApiError::unavailable(e, 1))?.ok_or_else(|| {
            ApiError::not_found("election_not_found").with_detail("no election with this id")
        })?;
    Ok((feed, slot))
}

async fn live(
    State(state): State<BroadcasterState>,
    ClientIp(client): ClientIp,
    Path(election_id): Path<i64>,
    handshake: Result<Handshake, ApiError>,
) -> Result<Response, ApiError> {
    let (feed, slot) = admit(&state, election_id, client).await?;
    let handshake = handshake?;
    let frames = feed.subscribe();
    let pace = state.pace();
    let shutdown = state.shutdown.clone();
    // Viewers only ever send pongs and a close, and frames are small.
    let max_frame = state.hub.deps().settings.broadcaster.max_frame_bytes;
    let (switching, socket) = handshake.accept(max_frame);
    state.tracker.spawn(async move {
        let Some(socket) = socket.await else { return };
        let _viewer = limit::Gauge::viewer("websocket");
        viewer::serve(socket, frames, pace, shutdown).await;
        drop(slot);
    });
    Ok(switching)
}

async fn events(
    State(state): State<BroadcasterState>,
    ClientIp(client): ClientIp,
    Path(election_id): Path<i64>,
) -> Result<Response, ApiError> {
    let (feed, slot) = admit(&state, election_id, client).await?;
    // The slot and gauge live as long as the response body streams.
    let held = Box::new((slot, limit::Gauge::viewer("sse")));
    Ok(sse::events(feed.subscribe(), state.pace(), state.shutdown.clone(), held).into_response())
}
