//! Extractors whose rejections are problem+json, not axum's plain
//! text: bad syntax 400, wrong shape 422, wrong content type 415, too big
//! 413. Each has the one shape of rejected input
//! ([`ApiError::rejected_input`]): a code, and `errors` naming the place.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::rejected_input(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "header.content-type",
                "expected `Content-Type: application/json`",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::rejected_input(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "body",
                    "the body is too large",
                )
            } else {
                ApiError::rejected_input(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    "body",
                    "the body could not be read",
                )
            }
        })?;
        // Postgres text cannot hold NUL, and no field has a use for it.
        if body.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
            return Err(ApiError::rejected_input(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "body",
                "text may not contain NUL (\\u0000) characters",
            ));
        }
        // Nesting deeper than 128 levels is a syntax error (serde_json's
        // recursion limit), so a deep document cannot exhaust the stack.
        axum::Json::<T>::from_bytes(&body).map(|axum::Json(value)| Json(value)).map_err(reject)
    }
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn reject(rejection: JsonRejection) -> ApiError {
    let (status, code) = match &rejection {
        JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
        JsonRejection::MissingJsonContentType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        }
        _ => (StatusCode::BAD_REQUEST, "unreadable_body"),
    };
    ApiError::rejected_input(status, code, "body", rejection.body_text())
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A `Query` extractor whose rejections are problem+json too.
pub struct Query<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| {
                ApiError::rejected_input(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "query",
                    rejection.body_text(),
                )
            })
    }
}

/// A `Path` extractor whose rejections are problem+json too: an id that is
/// not a number is a 400, not a plain-text answer.
pub struct Path<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| {
                ApiError::rejected_input(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    "path",
                    rejection.body_text(),
                )
            })
    }
}
