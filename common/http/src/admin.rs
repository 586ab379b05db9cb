//! The admin listener: `/healthz` (the process is alive), `/readyz` (every
//! dependency answers now) and `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tally_platform::readiness::Readiness;

use crate::middleware::json_status;

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn admin_router(readiness: Readiness) -> Router {
    let state = AdminState { readiness, metrics: tally_platform::telemetry::metrics_handle() };
    Router::new()
        .route(
            "/healthz",
            get(|| async { json_status(StatusCode::OK, serde_json::json!({"status": "alive"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let (ready, body) = state.readiness.check().await;
    json_status(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    tally_platform::process::record();
    // Keeps the `tally_dependency_up` gauges current for each scrape.
    let _ = state.readiness.check().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
