//! `AuthUser` and `AdminUser`: extractors for protected routes, usable by
//! any role that serves HTTP. A token is refused when missing, malformed,
//! signed with another algorithm or an unknown key, expired, for another
//! issuer or audience, or when its session was revoked on any replica.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{ApiError, Counted};
use tally_domain::citizen::Role;
use tally_platform::auth::tokens::{Claims, TokenError, TokenKeys};
use tally_platform::redis::{Keys, Redis};

/// What the extractors need; a role's state provides it through `FromRef`.
///
/// Revocations are durable in Postgres (`sessions.revoked_at`); Redis is
/// the fast path every replica reads. Redis keeps nothing on disk, so each
/// check also asks whether this Redis holds the revocations at all; when
/// it does not (new, restarted, emptied or failed over to an empty
/// replica), the ones still in force are loaded from Postgres before the
/// answer is given.
#[derive(Clone)]
pub struct Verifier {
    pub tokens: Arc<TokenKeys>,
    pub redis: Redis,
    pub keys: Keys,
    pub db: PgPool,
    reloading: Arc<tokio::sync::Mutex<()>>,
}

/// A revocation check's reply: the session's mark, and this Redis's mark
/// that it holds every revocation.
pub type RevocationReply = (Option<i64>, Option<i64>);

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
    ApiError::unauthorized(code).counted(Counted::AuthFailure(reason))
}

impl Verifier {
    pub fn new(tokens: Arc<TokenKeys>, redis: Redis, keys: Keys, db: PgPool) -> Verifier {
        Verifier { tokens, redis, keys, db, reloading: Arc::default() }
    }

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

    /// Adds the revocation check for `session` to a pipeline; its reply
    /// (a [`RevocationReply`]) goes to [`Verifier::settle`].
    pub fn revocation_check(&self, pipe: &mut redis::Pipeline, session: Uuid) {
        pipe.cmd("MGET")
            .arg(self.keys.revoked_session(&session.to_string()))
            .arg(self.keys.revocations_loaded());
    }

    /// Whether `session` is revoked, from a [`Verifier::revocation_check`]
    /// reply. A Redis without the revocations is filled from Postgres
    /// first, and this session is judged by Postgres.
    pub async fn settle(&self, session: Uuid, reply: RevocationReply) -> Result<bool, ApiError> {
        match reply {
            (Some(_), _) => Ok(true),
            (None, Some(_)) => Ok(false),
            (None, None) => {
                self.reload().await.map_err(|e| ApiError::unavailable(e, 1))?;
                let revoked: Option<bool> =
                    sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM sessions WHERE session_id = $1")
                        .bind(session)
                        .fetch_optional(&self.db)
                        .await
                        .map_err(|e| ApiError::unavailable(anyhow::anyhow!("checking revocation: {e}"), 1))?;
                // As on the fast path, only a recorded revocation refuses: a
                // session with no row (a token minted straight from the signing key, as test tools do) is
                // judged the same with or without the reload.
                Ok(revoked.unwrap_or(false))
            }
        }
    }

    /// Copies every revocation still in force (younger than an access
    /// token's life) from Postgres into Redis, then marks Redis as
    /// holding them, in one transaction. One reload at a time per process.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _one = self.reloading.lock().await;
        let loaded: bool = redis::cmd("EXISTS")
            .arg(self.keys.revocations_loaded())
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| anyhow::anyhow!("checking revocations in Redis: {e}"))?;
        if loaded {
            return Ok(());
        }
        self.copy_from_postgres().await
    }

    /// Copies the revocations still in force into Redis whether or not it
    /// holds them already (adding is harmless): for a process starting.
    pub async fn restore(&self) -> anyhow::Result<()> {
        let _one = self.reloading.lock().await;
        self.copy_from_postgres().await
    }

    async fn copy_from_postgres(&self) -> anyhow::Result<()> {
        let mut redis = self.redis.clone();
        let ttl = self.revocation_ttl_secs();
        let revoked: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT session_id,
                    CEIL(EXTRACT(EPOCH FROM revoked_at + make_interval(secs => $1) - now()))::bigint
             FROM sessions WHERE revoked_at > now() - make_interval(secs => $1)",
        )
        .bind(ttl as f64)
        .fetch_all(&self.db)
        .await
        .map_err(|e| anyhow::anyhow!("reading revocations from Postgres: {e}"))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (session, left) in &revoked {
            pipe.cmd("SET")
                .arg(self.keys.revoked_session(&session.to_string()))
                .arg(1)
                .arg("EX")
                .arg(left.max(&1))
                .ignore();
        }
        pipe.cmd("SET").arg(self.keys.revocations_loaded()).arg(1).ignore();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|e| anyhow::anyhow!("restoring revocations: {e}"))?;
        tracing::info!(sessions = revoked.len(), "revocations restored to Redis from Postgres");
        Ok(())
    }

    /// How long a revocation matters: as long as an access token it could
    /// refuse may still be valid, with room for clock skew.
    fn revocation_ttl_secs(&self) -> u64 {
        self.tokens.access_ttl_secs + 120
    }

    /// The refusal for a revoked session, counted like the extractor's.
    pub fn revoked() -> ApiError {
        refuse("revoked", "session_revoked")
    }

    /// Revocations are read from Redis so every replica sees a logout at
    /// once. If Redis cannot answer we refuse (fail closed): a logged-out
    /// token must not work just because Redis is away.
    async fn is_revoked(&self, session: Uuid) -> Result<bool, ApiError> {
        let mut check = redis::pipe();
        self.revocation_check(&mut check, session);
        let (reply,): (RevocationReply,) = check
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| ApiError::unavailable(anyhow::anyhow!("checking revocation: {e}"), 1))?;
        self.settle(session, reply).await
    }

    /// Marks sessions revoked in Redis for as long as any of their access
    /// tokens can still be valid. Callers record the revocation in
    /// `sessions.revoked_at` first: that is the one that lasts.
    pub async fn revoke(&self, sessions: &[Uuid]) -> anyhow::Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ttl = self.revocation_ttl_secs();
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
            return Err(ApiError::forbidden("forbidden")
                .with_detail("this action needs an administrator")
                .counted(Counted::AuthFailure("not_admin")));
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
