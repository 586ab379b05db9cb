//! The broadcaster role: live tallies for viewers.

use tally_common::Deps;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn router(deps: Deps) -> axum::Router {
    let settings = deps.settings.clone();
    tally_common::http::public_stack(axum::Router::new(), &settings.http)
}

pub async fn run(deps: Deps, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    tally_common::http::serve(listener, router(deps), shutdown).await
}
