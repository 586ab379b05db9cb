//! Reads anyone may make, and a voter's eligibility.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tally_domain::election::{VoterFacts, eligibility};
use tally_domain::lifecycle::Status;
use tally_http::auth::AuthUser;
use tally_http::error::FieldError;
use tally_http::{ApiError, Json, Path, Query};
use tally_platform::elections;
use time::OffsetDateTime;

use super::find;
use super::view::ElectionView;
use crate::ApiState;
use crate::openapi::Problem;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub status: Option<String>,
    pub page: Option<u32>,
    pub per_page: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ElectionPage {
    pub elections: Vec<ElectionView>,
    pub page: u32,
    pub per_page: u32,
    pub total: usize,
}

#[utoipa::path(get, operation_id = "list_elections", path = "/v1/elections", tag = "elections", params(ListQuery),
    responses((status = 200, description = "Newest first", body = ElectionPage), (status = 422, description = "validation_failed", content_type = "application/problem+json", body = Problem)))]
pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ElectionPage>, ApiError> {
    let mut errors = Vec::new();
    let status = match query.status.as_deref().map(str::parse::<Status>) {
        Some(Err(())) => {
            errors.push(FieldError {
                field: "status".into(),
                message: "must be scheduled, open, closed or cancelled".into(),
            });
            None
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(20);
    if page == 0 {
        errors.push(FieldError { field: "page".into(), message: "starts at 1".into() });
    }
    if !(1..=100).contains(&per_page) {
        errors.push(FieldError { field: "per_page".into(), message: "must be between 1 and 100".into() });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let now = OffsetDateTime::now_utc();
    // The status is computed, not stored, so filtering happens here, with
    // the same rule every role uses.
    let matching: Vec<ElectionView> = elections::load_all(&state.deps.db)
        .await?
        .iter()
        .filter(|e| status.is_none_or(|s| e.status(now) == s))
        .rev()
        .map(|e| ElectionView::of(e, now))
        .collect();
    let total = matching.len();
    let elections = matching
        .into_iter()
        .skip((page - 1).saturating_mul(per_page) as usize)
        .take(per_page as usize)
        .collect();
    Ok(Json(ElectionPage { elections, page, per_page, total }))
}

#[utoipa::path(get, operation_id = "get_election", path = "/v1/elections/{id}", tag = "elections", params(("id" = i64, Path, description = "Election id")),
    responses((status = 200, description = "The election with its posts and runners", body = ElectionView), (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem)))]
pub async fn get(State(state): State<ApiState>, Path(id): Path<i64>) -> Result<Json<ElectionView>, ApiError> {
    let election = find(&state, id).await?;
    Ok(Json(ElectionView::of(&election, OffsetDateTime::now_utc())))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Eligibility {
    pub eligible: bool,
    pub reason: Option<&'static str>,
}

#[utoipa::path(get, path = "/v1/elections/{id}/eligibility", tag = "elections", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Election id")),
    responses((status = 200, description = "Whether the caller may vote, and if not why: too_young, wrong_province, not_open or cancelled", body = Eligibility), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem)))]
pub async fn check_eligibility(
    State(state): State<ApiState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<Json<Eligibility>, ApiError> {
    let per_minute = state.deps.settings.limits.eligibility_per_citizen_per_minute;
    crate::limits::per_citizen(&state, "eligibility-citizen", user.citizen_id, per_minute).await?;
    let election = find(&state, id).await?;
    let facts = VoterFacts { province: &user.province, dob: user.dob };
    let verdict = eligibility(
        &election.schedule,
        &election.restriction,
        election.min_age,
        &facts,
        OffsetDateTime::now_utc(),
    );
    Ok(Json(Eligibility { eligible: verdict.is_ok(), reason: verdict.err().map(|r| r.as_str()) }))
}
