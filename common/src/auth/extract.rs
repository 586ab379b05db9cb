//! `AuthUser` and `AdminUser`: extractors for protected routes, usable by
//! any role that serves HTTP. A token is refused when missing, malformed,
//! signed with another algorithm or an unknown key, expired, for another
//! issuer or audience, or when its session was revoked on any replica.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use super::tokens::{Claims, TokenError, TokenKeys};
use crate::domain::Role;
use crate::error::ApiError;
use crate::store::{Keys, Redis};

/// What the extractors need; a role's state provides it through `FromRef`.
#[derive(Clone)]
pub struct Verifier {
    pub tokens: Arc<TokenKeys>,
    pub redis: Redis,
    pub keys: Keys,
}

#[derive(Clone, Debug)]
pub struct AuthUser {
    pub citizen_id: i64,
    pub session_id: Uuid,
    pub role: Role,
    pub province: String,
    pub dob: time::Date,
}

#[derive(Clone, Debug)]
pub struct AdminUser(pub AuthUser);

fn refuse(reason: &'static str, code: &'static str) -> ApiError {
    metrics::counter!("tally_auth_failures_total", "reason" => reason).increment(1);
    ApiError::unauthorized(code)
}

impl Verifier {
    pub async fn authenticate(&self, parts: &Parts) -> Result<AuthUser, ApiError> {
        let user = self.signed_user(parts)?;
        if self.is_revoked(user.session_id).await? {
            return Err(refuse("revoked", "session_revoked"));
        }
        Ok(user)
    }

    /// The token's claims, checked for everything but revocation. Only for
    /// handlers that then call `check_revocation` themselves, folded into a
    /// round trip they make anyway.
    pub fn signed_user(&self, parts: &Parts) -> Result<AuthUser, ApiError> {
        user_from_header(&self.tokens, parts.headers.get(AUTHORIZATION))
    }

    /// Adds the revocation check for `session` to a pipeline.
    pub fn revocation_check(&self, pipe: &mut redis::Pipeline, session: Uuid) {
        pipe.cmd("EXISTS").arg(self.keys.revoked_session(&session.to_string()));
    }

    /// The refusal for a revoked session, counted like the extractor's.
    pub fn revoked() -> ApiError {
        refuse("revoked", "session_revoked")
    }

    /// Revocations live in Redis so every replica sees a logout at once.
    /// If Redis cannot answer we refuse (fail closed): a logged-out token
    /// must not work just because Redis is away.
    async fn is_revoked(&self, session: Uuid) -> Result<bool, ApiError> {
        let mut check = redis::pipe();
        self.revocation_check(&mut check, session);
        let (revoked,): (bool,) = check
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| ApiError::unavailable(anyhow::anyhow!("checking revocation: {e}"), 1))?;
        Ok(revoked)
    }

    /// Marks sessions revoked for as long as any of their access tokens
    /// can still be valid.
    pub async fn revoke(&self, sessions: &[Uuid]) -> anyhow::Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ttl = self.tokens.access_ttl_secs + 120;
        let mut pipe = redis::pipe();
        for session in sessions {
            pipe.cmd("SET")
                .arg(self.keys.revoked_session(&session.to_string()))
                .arg(1)
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await.map_err(|e| anyhow::anyhow!("recording revocation: {e}"))
    }
}

/// The user an `Authorization` header names, if its bearer token is valid
/// (revocation aside). Pure, so it can be fuzzed without a server.
pub fn user_from_header(tokens: &TokenKeys, header: Option<&HeaderValue>) -> Result<AuthUser, ApiError> {
    let header = header.ok_or_else(|| refuse("missing", "missing_token"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .ok_or_else(|| refuse("malformed", "invalid_token"))?;
    let claims = tokens.verify(token.trim()).map_err(|e| match e {
        TokenError::Expired => refuse("expired", "token_expired"),
        TokenError::Invalid(reason) => refuse(reason, "invalid_token"),
    })?;
    user_of(claims).ok_or_else(|| refuse("malformed", "invalid_token"))
}

fn user_of(claims: Claims) -> Option<AuthUser> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Some(AuthUser {
        citizen_id: claims.sub.parse().ok().filter(|id: &i64| *id > 0)?,
        session_id: claims.sid,
        role: claims.role,
        province: claims.prov,
        dob: time::Date::parse(&claims.dob, &format).ok()?,
    })
}

impl<S> FromRequestParts<S> for AuthUser
where
    Verifier: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = <Verifier as axum::extract::FromRef<S>>::from_ref(state);
        verifier.authenticate(parts).await
    }
}

impl<S> FromRequestParts<S> for AdminUser
where
    Verifier: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            metrics::counter!("tally_auth_failures_total", "reason" => "not_admin").increment(1);
            return Err(ApiError::forbidden("forbidden").with_detail("this action needs an administrator"));
        }
        Ok(AdminUser(user))
    }
}

/// Like `AuthUser`, but the session's revocation is not checked yet: the
/// handler must call `Verifier::revocation_check` in its own Redis round
/// trip and refuse with `Verifier::revoked()`.
#[derive(Clone, Debug)]
pub struct SignedUser(pub AuthUser);

impl<S> FromRequestParts<S> for SignedUser
where
    Verifier: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = <Verifier as axum::extract::FromRef<S>>::from_ref(state);
        verifier.signed_user(parts).map(SignedUser)
    }
}
