//! The one error type at the HTTP boundary, rendered as RFC 9457
//! `application/problem+json` with a stable machine `code`.
//!
//! An error is a value: building one logs nothing and counts nothing.
//! Its response carries an [`Outcome`] that one layer (`middleware`)
//! logs, with the cause, inside the request's span, and counts. The
//! client sees only a generic title for a server-side failure.
//!
//! A dependency that cannot answer (Postgres or Redis unreachable, a pool
//! with no free connection, a server restarting) is 503 with
//! `Retry-After`, whichever handler met it: [`ApiError::internal`] looks
//! through the cause. NATS failures are answered 503 where they are met
//! (publishing, stream counts), since their errors share no common type.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: Option<String>,
    /// Per-field problems for `validation_failed`.
    pub errors: Vec<FieldError>,
    /// A further machine-readable reason, e.g. `too_young` for `not_eligible`.
    pub reason: Option<&'static str>,
    headers: Vec<(HeaderName, HeaderValue)>,
    source: Option<anyhow::Error>,
    counted: Vec<Counted>,
}

/// A refusal the response layer counts, with its label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// `tally_auth_failures_total{reason}`
    AuthFailure(&'static str),
    /// `tally_rate_limited_total{scope}`
    RateLimited(&'static str),
    /// `tally_votes_refused_total{reason}`
    BallotRefused(&'static str),
    /// `tally_publish_failures_total{kind}`
    PublishFailed(&'static str),
}

/// What an error response leaves for the response layer, in its extensions.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub code: &'static str,
    pub cause: Option<std::sync::Arc<anyhow::Error>>,
    pub counted: Vec<Counted>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The body every error response carries.
#[derive(Serialize)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    pub code: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    pub errors: &'a [FieldError],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str) -> Self {
        ApiError {
            status,
            code,
            detail: None,
            errors: Vec::new(),
            reason: None,
            headers: Vec::new(),
            source: None,
            counted: Vec::new(),
        }
    }

    /// Marks the refusal for the response layer to count.
    pub fn counted(mut self, counted: Counted) -> Self {
        self.counted.push(counted);
        self
    }

    /// Also counts what `replaced` would have counted: an answer that
    /// takes the place of another refusal (a 429 over a 409) must not
    /// make that refusal vanish from the metrics.
    pub fn counting_also(mut self, replaced: &ApiError) -> Self {
        self.counted.extend(replaced.counted.iter().copied());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_retry_after(self, seconds: u64) -> Self {
        self.with_header(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))
    }

    /// A failure of ours, or of a dependency that cannot answer now (then
    /// 503, see [`is_unreachable`]). The cause is logged, never sent.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let source = source.into();
        if is_unreachable(&source) {
            return ApiError::unavailable(source, 1);
        }
        ApiError { source: Some(source), ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal") }
    }

    /// A dependency is down or saturated; the client may retry.
    pub fn unavailable(source: impl Into<anyhow::Error>, retry_after_secs: u64) -> Self {
        ApiError {
            source: Some(source.into()),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        .with_retry_after(retry_after_secs)
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        ApiError { errors, ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed") }
    }

    pub fn not_found(code: &'static str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code)
    }

    pub fn conflict(code: &'static str) -> Self {
        ApiError::new(StatusCode::CONFLICT, code)
    }

    pub fn unauthorized(code: &'static str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, code)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn forbidden(code: &'static str) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, code)
    }

    pub fn rate_limited(retry_after_secs: u64, scope: &'static str) -> Self {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            .with_retry_after(retry_after_secs)
            .counted(Counted::RateLimited(scope))
    }

    /// Input that cannot be taken as it is. Every such answer has one
    /// shape: its `code`, and `errors` naming where the problem is
    /// (`body`, `body.<field>`, `query`, `path`, `header.<name>`).
    pub fn rejected_input(
        status: StatusCode,
        code: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        ApiError {
            errors: vec![FieldError { field: field.to_owned(), message: message.clone() }],
            ..ApiError::new(status, code)
        }
        .with_detail(message)
    }

    fn title(&self) -> &'static str {
        match self.status {
            s if s.is_server_error() && s != StatusCode::SERVICE_UNAVAILABLE => "Internal server error",
            s => s.canonical_reason().unwrap_or("Error"),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e)
    }
}

/// Whether a failure means a dependency cannot answer now, rather than a
/// fault of ours: a connection refused, reset or timed out, a pool with
/// no free connection, a server that is shutting down or no longer the
/// primary.
pub fn is_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return matches!(
                e,
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    // A conversation cut short: what a balancer with no
                    // server behind it gives, or a connection dropped
                    // mid-reply. sqlx also reports a few faults of ours
                    // this way (a statement with too many binds); those
                    // are still logged with their cause, at warn.
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::WorkerCrashed
            ) || e.as_database_error().and_then(|d| d.code()).is_some_and(|code| {
                // connection exceptions (08…), admin_shutdown, crash_shutdown,
                // cannot_connect_now, read_only_sql_transaction (a primary
                // that became a standby)
                code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "25006")
            });
        }
        if let Some(e) = cause.downcast_ref::<redis::RedisError>() {
            return e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || matches!(
                    e.kind(),
                    redis::ErrorKind::ReadOnly
                        | redis::ErrorKind::BusyLoadingError
                        | redis::ErrorKind::MasterDown
                        | redis::ErrorKind::TryAgain
                        | redis::ErrorKind::ClusterDown
                );
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                e.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | BrokenPipe
                    | TimedOut
                    | UnexpectedEof
            );
        }
        cause.downcast_ref::<tokio::time::error::Elapsed>().is_some()
    })
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<tally_platform::auth::HashError> for ApiError {
    fn from(e: tally_platform::auth::HashError) -> Self {
        match e {
            tally_platform::auth::HashError::Busy(_) => ApiError::unavailable(e, 1),
            tally_platform::auth::HashError::Failed(cause) => ApiError::internal(cause),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("/problems/{}", self.code),
            title: self.title(),
            status: self.status.as_u16(),
            detail: if self.status.is_server_error() { None } else { self.detail.as_deref() },
            code: self.code,
            errors: &self.errors,
            reason: self.reason,
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (self.status, [(header::CONTENT_TYPE, PROBLEM_JSON)], json).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response.extensions_mut().insert(Outcome {
            code: self.code,
            cause: self.source.map(std::sync::Arc::new),
            counted: self.counted,
        });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn client_errors_carry_their_detail() {
        let response =
            ApiError::conflict("already_voted").with_detail("one ballot per election").into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = body_of(response).await;
        assert_eq!(body["code"], "already_voted");
        assert_eq!(body["type"], "/problems/already_voted");
        assert_eq!(body["detail"], "one ballot per election");
        assert_eq!(body["status"], 409);
    }

    #[tokio::test]
    async fn server_errors_hide_their_cause() {
        let response = ApiError::internal(anyhow::anyhow!("password for db is hunter2")).into_response();
        let body = body_of(response).await;
        assert_eq!(body["code"], "internal");
        assert!(!body.to_string().contains("hunter2"));
    }

    #[test]
    fn a_429_in_place_of_a_refusal_counts_both() {
        let refusal = ApiError::conflict("already_voted").counted(Counted::BallotRefused("already_voted"));
        let response = ApiError::rate_limited(3, "client").counting_also(&refusal).into_response();
        let outcome = response.extensions().get::<Outcome>().cloned().expect("an outcome");
        assert_eq!(outcome.code, "rate_limited");
        assert_eq!(
            outcome.counted,
            [Counted::RateLimited("client"), Counted::BallotRefused("already_voted")]
        );
    }

    #[tokio::test]
    async fn unauthorized_asks_for_a_bearer_token() {
        let response = ApiError::unauthorized("invalid_token").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
