//! Sign-up, sessions and the caller's profile.

pub mod attempts;
pub mod me;
pub mod session;
pub mod signup;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiState;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(signup::signup))
        .routes(routes!(session::login))
        .routes(routes!(session::refresh))
        .routes(routes!(session::logout))
        .routes(routes!(session::logout_all))
        .routes(routes!(me::me))
}
