//! Elections: administration, public reads, eligibility and results.

pub mod admin;
pub mod draft;
pub mod public;
pub mod results;
pub mod view;

use tally_domain::election::Election;
use tally_http::ApiError;
use tally_platform::elections;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiState;

/// One `routes!` per path: the operations of a path share its router.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(public::list, admin::create))
        .routes(routes!(public::get, admin::update))
        .routes(routes!(admin::add_runner))
        .routes(routes!(admin::remove_runner))
        .routes(routes!(admin::close))
        .routes(routes!(admin::cancel))
        .routes(routes!(public::check_eligibility))
        .routes(routes!(results::results))
}

pub(crate) async fn find(state: &ApiState, election_id: i64) -> Result<Election, ApiError> {
    elections::load(&state.deps.db, election_id).await?.ok_or_else(not_found)
}

pub(crate) fn not_found() -> ApiError {
    ApiError::not_found("election_not_found").with_detail("no election with this id")
}
