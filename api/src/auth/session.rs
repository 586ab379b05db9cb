//! Login, refresh-token rotation with reuse detection, and logout.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use tally_domain::citizen::Role;
use tally_http::auth::AuthUser;
use tally_http::client_ip::ClientIp;
use tally_http::error::Counted;
use tally_http::{ApiError, Json};
use tally_platform::auth::refresh;
use time::OffsetDateTime;
use uuid::Uuid;

use super::attempts::{self, Attempt};
use crate::ApiState;
use crate::openapi::Problem;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub citizen_id: i64,
    pub password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
}

/// The registry facts a token carries.
#[derive(sqlx::FromRow)]
struct Account {
    citizen_id: i64,
    role: String,
    province: String,
    dob: time::Date,
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 401, description = "invalid_credentials", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "reenrollment_required: the account predates enrollment codes; sign up again with one", content_type = "application/problem+json", body = Problem),
        (status = 429, description = "rate_limited, with Retry-After", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn login(
    State(state): State<ApiState>,
    ClientIp(client): ClientIp,
    Json(request): Json<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let auth = &state.deps.settings.auth;
    attempts::admit(&state, Attempt::Login, client, request.citizen_id).await?;

    let found: Option<(String, bool, Account)> =
        sqlx::query_as::<_, (String, bool, i64, String, String, time::Date)>(
            "SELECT u.password_hash, u.enrolled_at IS NOT NULL, u.citizen_id, u.role, c.province, c.dob
             FROM users u JOIN citizens c USING (citizen_id) WHERE u.citizen_id = $1",
        )
        .bind(request.citizen_id)
        .fetch_optional(&state.deps.db)
        .await?
        .map(|(hash, enrolled, citizen_id, role, province, dob)| {
            (hash, enrolled, Account { citizen_id, role, province, dob })
        });
    let (hash, enrolled, account) = match found {
        Some((hash, enrolled, account)) => (Some(hash), enrolled, Some(account)),
        None => (None, false, None),
    };
    let matched = state.passwords.verify(request.password, hash).await?;
    let account = match (matched, account) {
        // Only the password's holder learns that the account must re-enroll.
        (true, Some(_)) if !enrolled => {
            return Err(reenrollment_required());
        }
        (true, Some(account)) => account,
        _ => {
            return Err(ApiError::unauthorized("invalid_credentials")
                .with_detail("wrong citizen id or password")
                .counted(Counted::AuthFailure("invalid_credentials")));
        }
    };

    let session = Uuid::new_v4();
    let refresh_token = refresh::new_token()?;
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(auth.refresh_ttl_secs as i64);
    let mut tx = state.deps.db.begin().await?;
    sqlx::query("INSERT INTO sessions (session_id, citizen_id, expires_at) VALUES ($1, $2, $3)")
        .bind(session)
        .bind(account.citizen_id)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
    store_refresh(&mut tx, session, &refresh_token).await?;
    tx.commit().await?;
    metrics::counter!("tally_logins_total").increment(1);
    Ok(Json(issue(&state, &account, session, refresh_token)?))
}

/// A refresh token's session: id, citizen, rotated at, revoked at, expires
/// at, and whether the account must re-enroll.
type RefreshRow = (Uuid, i64, Option<OffsetDateTime>, Option<OffsetDateTime>, OffsetDateTime, bool);

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair; the presented refresh token stops working", body = TokenPair),
        (status = 401, description = "invalid_refresh_token (unknown, ended, or reused: the session is revoked)", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "reenrollment_required: the account predates enrollment codes; sign up again with one", content_type = "application/problem+json", body = Problem),
        (status = 429, description = "rate_limited, with Retry-After and RateLimit-* headers", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn refresh(
    State(state): State<ApiState>,
    Json(request): Json<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let presented = refresh::hash(&request.refresh_token);
    let mut tx = state.deps.db.begin().await?;
    // Row lock: two concurrent refreshes with one token cannot both rotate it.
    let row: Option<RefreshRow> = sqlx::query_as(
        "SELECT r.session_id, s.citizen_id, r.rotated_at, s.revoked_at, s.expires_at, u.enrolled_at IS NULL
         FROM refresh_tokens r JOIN sessions s USING (session_id) JOIN users u USING (citizen_id)
         WHERE r.token_hash = $1 FOR UPDATE OF r",
    )
    .bind(&presented)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((session, citizen_id, rotated_at, revoked_at, expires_at, must_reenroll)) = row else {
        return Err(refused("unknown"));
    };
    let per_minute = state.deps.settings.limits.refresh_per_citizen_per_minute;
    crate::limits::per_citizen(&state, "refresh-citizen", citizen_id, per_minute).await?;
    if must_reenroll {
        return Err(reenrollment_required());
    }
    if revoked_at.is_some() || expires_at <= OffsetDateTime::now_utc() {
        return Err(refused("session_ended"));
    }
    if let Some(rotated_at) = rotated_at {
        let grace = state.deps.settings.auth.refresh_reuse_grace_secs;
        if !is_retry(&mut tx, session, rotated_at, grace).await? {
            // A rotated token came back: whoever holds the chain, one of the
            // two parties stole it. End the session for both.
            sqlx::query("UPDATE sessions SET revoked_at = now() WHERE session_id = $1")
                .bind(session)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            state.verifier.revoke(&[session]).await.map_err(|e| ApiError::unavailable(e, 1))?;
            tracing::warn!(session = %session, "refresh token reused; session revoked");
            return Err(refused("reused"));
        }
        // The client never got the answer that rotated it. The successor
        // that answer carried is retired: if it ever comes back, someone
        // else had it, and that is reuse.
        sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = now() WHERE session_id = $1 AND rotated_at IS NULL",
        )
        .bind(session)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query("UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1")
            .bind(&presented)
            .execute(&mut *tx)
            .await?;
    }
    let next = refresh::new_token()?;
    store_refresh(&mut tx, session, &next).await?;
    let account: Account = sqlx::query_as(
        "SELECT u.citizen_id, u.role, c.province, c.dob
         FROM sessions s JOIN users u USING (citizen_id) JOIN citizens c USING (citizen_id)
         WHERE s.session_id = $1",
    )
    .bind(session)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(issue(&state, &account, session, next)?))
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "The session has ended on every replica"), (status = 401, description = "missing_token, invalid_token, token_expired or session_revoked", content_type = "application/problem+json", body = Problem)))]
pub async fn logout(State(state): State<ApiState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE session_id = $1 AND revoked_at IS NULL")
        .bind(user.session_id)
        .execute(&state.deps.db)
        .await?;
    state.verifier.revoke(&[user.session_id]).await.map_err(|e| ApiError::unavailable(e, 1))?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Every session of the user has ended"), (status = 401, description = "missing_token, invalid_token, token_expired or session_revoked", content_type = "application/problem+json", body = Problem)))]
pub async fn logout_all(State(state): State<ApiState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    let sessions: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = now()
         WHERE citizen_id = $1 AND (revoked_at IS NULL OR session_id = $2) RETURNING session_id",
    )
    .bind(user.citizen_id)
    .bind(user.session_id)
    .fetch_all(&state.deps.db)
    .await?;
    state.verifier.revoke(&sessions).await.map_err(|e| ApiError::unavailable(e, 1))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a rotated token presented again is a client's retry after a
/// lost answer rather than a second party: it comes back within the grace
/// period, and the successor it was rotated into has not been used.
async fn is_retry(
    tx: &mut Transaction<'_, Postgres>,
    session: Uuid,
    rotated_at: OffsetDateTime,
    grace_secs: u64,
) -> Result<bool, ApiError> {
    let retry: bool = sqlx::query_scalar(
        "SELECT $2::timestamptz > now() - make_interval(secs => $3::double precision)
            AND NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE session_id = $1 AND rotated_at > $2)",
    )
    .bind(session)
    .bind(rotated_at)
    .bind(grace_secs as f64)
    .fetch_one(&mut **tx)
    .await?;
    Ok(retry)
}

async fn store_refresh(tx: &mut Transaction<'_, Postgres>, session: Uuid, token: &str) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
        .bind(refresh::hash(token))
        .bind(session)
        .execute(&mut **tx)
        .await
        .context("storing a refresh token")?;
    Ok(())
}

fn issue(
    state: &ApiState,
    account: &Account,
    session: Uuid,
    refresh_token: String,
) -> Result<TokenPair, ApiError> {
    let claims = state.tokens.claims(
        account.citizen_id,
        session,
        Role::from_db(&account.role),
        &account.province,
        account.dob,
    );
    Ok(TokenPair {
        access_token: state.tokens.sign(&claims)?,
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl_secs,
        refresh_token,
    })
}

/// An account made before sign-up needed an enrollment code: anyone could
/// have made it, so its citizen must sign up again with a code.
pub fn reenrollment_required() -> ApiError {
    ApiError::forbidden("reenrollment_required")
        .with_detail(
            "this account predates enrollment codes; sign up again with the code the registry mailed you",
        )
        .counted(Counted::AuthFailure("reenrollment_required"))
}

fn refused(reason: &'static str) -> ApiError {
    ApiError::unauthorized("invalid_refresh_token")
        .with_detail("sign in again")
        .counted(Counted::AuthFailure(reason))
}
