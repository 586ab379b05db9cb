//! The one error type at the HTTP boundary, rendered as RFC 9457
//! `application/problem+json` with a stable machine `code`.
//!
//! Server-side failures keep their cause for the log (written inside the
//! request's span) and show the client only a generic title.

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
        }
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

    /// A failure of ours. The cause is logged, never sent.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        ApiError {
            source: Some(source.into()),
            ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
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

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited").with_retry_after(retry_after_secs)
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
        if let Some(source) = &self.source {
            // Runs inside the handler, hence inside the request span.
            if self.status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(code = self.code, error = format!("{source:#}"), "dependency unavailable");
            } else {
                tracing::error!(code = self.code, error = format!("{source:#}"), "request failed");
            }
        }
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

    #[tokio::test]
    async fn unauthorized_asks_for_a_bearer_token() {
        let response = ApiError::unauthorized("invalid_token").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
