//! `GET /v1/me`: the caller's registry profile.

use axum::extract::State;
use serde::Serialize;
use tally_domain::citizen::age_on;
use tally_http::auth::AuthUser;
use tally_http::{ApiError, Json};
use time::OffsetDateTime;

use crate::ApiState;
use crate::openapi::Problem;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Profile {
    pub citizen_id: i64,
    pub full_name: String,
    pub province: String,
    pub age: i32,
    pub role: String,
}

#[utoipa::path(get, path = "/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "The caller's registry profile", body = Profile), (status = 401, description = "missing_token, invalid_token, token_expired or session_revoked", content_type = "application/problem+json", body = Problem)))]
pub async fn me(State(state): State<ApiState>, user: AuthUser) -> Result<Json<Profile>, ApiError> {
    let row: Option<(String, String, time::Date, String)> = sqlx::query_as(
        "SELECT c.full_name, c.province, c.dob, u.role
         FROM users u JOIN citizens c USING (citizen_id) WHERE u.citizen_id = $1",
    )
    .bind(user.citizen_id)
    .fetch_optional(&state.deps.db)
    .await?;
    let (full_name, province, dob, role) = row.ok_or_else(|| {
        ApiError::unauthorized("invalid_token").with_detail("this account no longer exists")
    })?;
    Ok(Json(Profile {
        citizen_id: user.citizen_id,
        full_name,
        province,
        age: age_on(dob, OffsetDateTime::now_utc().date()),
        role,
    }))
}
