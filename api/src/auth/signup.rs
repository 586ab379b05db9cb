//! `POST /v1/auth/signup`: a registry citizen becomes a user.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tally_common::db::violated_constraint;
use tally_common::domain::{CitizenId, NewPassword, Phone};
use tally_common::{ApiError, Json};

use crate::ApiState;
#[allow(unused_imports)]
use crate::openapi::Problem;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"citizen_id": 42, "password": "correct horse battery staple", "phone": "+15550000042"}))]
pub struct SignupRequest {
    pub citizen_id: i64,
    pub password: String,
    pub phone: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SignupResponse {
    pub citizen_id: i64,
}

#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
    responses(
        (status = 201, description = "The citizen now has an account", body = SignupResponse),
        (status = 404, description = "citizen_not_found", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "user_exists or phone_taken", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "invalid_phone, weak_password or invalid_body", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn signup(
    State(state): State<ApiState>,
    Json(request): Json<SignupRequest>,
) -> Result<(StatusCode, Json<SignupResponse>), ApiError> {
    let citizen_id = CitizenId::parse(request.citizen_id)
        .map_err(|why| ApiError::not_found("citizen_not_found").with_detail(format!("citizen_id {why}")))?;
    let phone = Phone::parse(request.phone.trim()).map_err(|why| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_phone").with_detail(format!("phone {why}"))
    })?;
    let password = NewPassword::parse(&request.password, citizen_id, phone.as_str()).map_err(|why| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "weak_password")
            .with_detail(format!("password {why}"))
    })?;

    // Cheap checks first, so nobody can make us hash for an impossible
    // sign-up. The keys below still decide when two requests race.
    let (citizen, user): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM citizens WHERE citizen_id = $1),
                EXISTS (SELECT 1 FROM users WHERE citizen_id = $1)",
    )
    .bind(citizen_id.get())
    .fetch_one(&state.deps.db)
    .await?;
    if !citizen {
        return Err(not_in_registry());
    }
    if user {
        return Err(user_exists());
    }

    let hash = state.passwords.hash(password.expose().to_string()).await?;
    let inserted = sqlx::query("INSERT INTO users (citizen_id, password_hash, phone) VALUES ($1, $2, $3)")
        .bind(citizen_id.get())
        .bind(&hash)
        .bind(phone.as_str())
        .execute(&state.deps.db)
        .await;
    match inserted {
        Ok(_) => {
            metrics::counter!("tally_signups_total").increment(1);
            Ok((StatusCode::CREATED, Json(SignupResponse { citizen_id: citizen_id.get() })))
        }
        Err(e) => Err(match violated_constraint(&e) {
            Some("users_pkey") => user_exists(),
            Some("users_phone_key") => {
                ApiError::conflict("phone_taken").with_detail("another account uses this phone number")
            }
            Some("users_citizen_fkey") => not_in_registry(),
            _ => ApiError::internal(e),
        }),
    }
}

fn not_in_registry() -> ApiError {
    ApiError::not_found("citizen_not_found").with_detail("no citizen with this id in the national registry")
}

fn user_exists() -> ApiError {
    ApiError::conflict("user_exists").with_detail("this citizen already has an account")
}
