//! `POST /v1/auth/signup`: a registry citizen becomes a user, proving who
//! they are with the one-time enrollment code the registry mailed them.
//! The same request re-enrolls an account made before codes existed.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tally_domain::citizen::{CitizenId, NewPassword, Phone};
use tally_http::client_ip::ClientIp;
use tally_http::error::Counted;
use tally_http::{ApiError, Json};
use tally_platform::postgres::violated_constraint;
use uuid::Uuid;

use super::attempts::{self, Attempt};
use crate::ApiState;
use crate::openapi::Problem;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"citizen_id": 42, "password": "correct horse battery staple", "phone": "+15550000042", "enrollment_code": "7K3M-Q9ZD-0RTW-H4NB"}))]
pub struct SignupRequest {
    pub citizen_id: i64,
    pub password: String,
    pub phone: String,
    /// The one-time code the registry mailed to the citizen (case, dashes
    /// and spaces do not matter). Missing counts as wrong.
    #[serde(default)]
    pub enrollment_code: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SignupResponse {
    pub citizen_id: i64,
}

#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
    responses(
        (status = 201, description = "The citizen now has an account (or, for an account that predates enrollment codes, new credentials)", body = SignupResponse),
        (status = 403, description = "invalid_enrollment_code: missing, wrong, already used or replaced", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "citizen_not_found", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "user_exists or phone_taken", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "invalid_phone, weak_password or invalid_body", content_type = "application/problem+json", body = Problem),
        (status = 429, description = "rate_limited, with Retry-After", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn signup(
    State(state): State<ApiState>,
    ClientIp(client): ClientIp,
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
    attempts::admit(&state, Attempt::Signup, client, citizen_id.get()).await?;
    let code_hash =
        request.enrollment_code.as_deref().and_then(|code| state.enrollment.hash(citizen_id.get(), code));

    // Cheap checks first, so nobody can make us hash for an impossible
    // sign-up. The statements below still decide when two requests race.
    let (citizen, code_matches, enrolled): (bool, bool, Option<bool>) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM citizens WHERE citizen_id = $1),
                EXISTS (SELECT 1 FROM enrollment_codes WHERE citizen_id = $1 AND code_hash = $2),
                (SELECT enrolled_at IS NOT NULL FROM users WHERE citizen_id = $1)",
    )
    .bind(citizen_id.get())
    .bind(code_hash.as_deref())
    .fetch_one(&state.deps.db)
    .await?;
    if !citizen {
        return Err(not_in_registry());
    }
    let Some(code_hash) = code_hash.filter(|_| code_matches) else {
        return Err(invalid_code());
    };
    if enrolled == Some(true) {
        return Err(user_exists());
    }

    let hash = state.passwords.hash(password.expose().to_string()).await?;
    let ended = match enroll(&state, citizen_id.get(), &hash, phone.as_str(), &code_hash).await {
        Ok(ended) => ended,
        Err(Refused::Api(e)) => return Err(e),
        Err(Refused::Db(e)) => {
            return Err(match violated_constraint(&e) {
                Some("users_phone_key") => {
                    ApiError::conflict("phone_taken").with_detail("another account uses this phone number")
                }
                Some("users_citizen_fkey") => not_in_registry(),
                _ => ApiError::internal(e),
            });
        }
    };
    if enrolled == Some(false) {
        state.verifier.revoke(&ended).await.map_err(|e| ApiError::unavailable(e, 1))?;
        // Who re-enrolled is in the database; the log learns only that one did.
        tracing::info!("an account made before enrollment codes re-enrolled");
    }
    metrics::counter!("tally_signups_total").increment(1);
    Ok((StatusCode::CREATED, Json(SignupResponse { citizen_id: citizen_id.get() })))
}

enum Refused {
    Api(ApiError),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Refused::Db(e)
    }
}

/// In one transaction: creates the account, or gives a marked one new
/// credentials, and consumes the code. Returns the sessions it ended.
async fn enroll(
    state: &ApiState,
    citizen_id: i64,
    password_hash: &str,
    phone: &str,
    code_hash: &[u8],
) -> Result<Vec<Uuid>, Refused> {
    let mut tx = state.deps.db.begin().await?;
    // The row lock on the account decides races: a second sign-up waits,
    // then finds the account enrolled.
    let written: Option<i64> = sqlx::query_scalar(
        "INSERT INTO users (citizen_id, password_hash, phone) VALUES ($1, $2, $3)
         ON CONFLICT (citizen_id) DO UPDATE
           SET password_hash = EXCLUDED.password_hash, phone = EXCLUDED.phone,
               enrolled_at = now(), updated_at = now()
           WHERE users.enrolled_at IS NULL
         RETURNING citizen_id",
    )
    .bind(citizen_id)
    .bind(password_hash)
    .bind(phone)
    .fetch_optional(&mut *tx)
    .await?;
    if written.is_none() {
        return Err(Refused::Api(user_exists()));
    }
    let consumed = sqlx::query("DELETE FROM enrollment_codes WHERE citizen_id = $1 AND code_hash = $2")
        .bind(citizen_id)
        .bind(code_hash)
        .execute(&mut *tx)
        .await?;
    if consumed.rows_affected() == 0 {
        // Used or replaced since the check above; nothing is written.
        return Err(Refused::Api(invalid_code()));
    }
    let ended: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = now()
         WHERE citizen_id = $1 AND revoked_at IS NULL RETURNING session_id",
    )
    .bind(citizen_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ended)
}

fn invalid_code() -> ApiError {
    ApiError::forbidden("invalid_enrollment_code")
        .with_detail("the enrollment code is missing, wrong, already used or replaced by a newer one")
        .counted(Counted::AuthFailure("invalid_enrollment_code"))
}

fn not_in_registry() -> ApiError {
    ApiError::not_found("citizen_not_found").with_detail("no citizen with this id in the national registry")
}

fn user_exists() -> ApiError {
    ApiError::conflict("user_exists").with_detail("this citizen already has an account")
}
