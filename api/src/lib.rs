//! The api role: the public REST API. Thin by design: it checks who is
//! calling and what they may do, and hands ballots to JetStream.

pub mod audit;
pub mod auth;
pub mod state;

use axum::Router;
use axum::routing::{get, post};
use tally_common::Deps;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use state::ApiState;

pub fn router(state: ApiState) -> Router {
    let routes = Router::new()
        .route("/v1/auth/signup", post(auth::signup::signup))
        .route("/v1/auth/login", post(auth::session::login))
        .route("/v1/auth/refresh", post(auth::session::refresh))
        .route("/v1/auth/logout", post(auth::session::logout))
        .route("/v1/auth/logout-all", post(auth::session::logout_all))
        .route("/v1/me", get(auth::me::me))
        .route("/v1/audit", get(audit::list))
        .with_state(state.clone());
    tally_common::http::public_stack(routes, &state.deps.settings.http)
}

pub async fn run(deps: Deps, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = ApiState::new(deps)?;
    tally_common::http::serve(listener, router(state), shutdown).await
}
