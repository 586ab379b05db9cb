//! The WebSocket opening handshake (RFC 6455, section 4.2) on hyper's own
//! upgrade. Answering it here keeps tungstenite, which axum's `ws` brings,
//! out of the product; tokio-websockets then speaks the protocol.

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, request::Parts};
use axum::response::Response;
use base64::Engine;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tally_http::ApiError;
use tokio_websockets::{Limits, ServerBuilder, WebSocketStream};

/// A viewer's connection once the handshake is answered.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A request to watch over WebSocket, checked but not yet answered.
pub struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let asks = parts.method == Method::GET
            && has_token(headers, header::CONNECTION, "upgrade")
            && has_token(headers, header::UPGRADE, "websocket")
            && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
        let key = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| asks);
        match (key.map(|k| accept(k.as_bytes())), parts.extensions.remove::<OnUpgrade>()) {
            (Some(accept), Some(on_upgrade)) => Ok(Handshake { accept, on_upgrade }),
            _ => Err(ApiError::new(StatusCode::UPGRADE_REQUIRED, "websocket_required")
                .with_detail("connect with a WebSocket client, or use /events for Server-Sent Events")),
        }
    }
}

impl Handshake {
    /// The 101 answer, and the viewer's socket once hyper has sent it (none
    /// if the connection went away first). Frames from the viewer over
    /// `max_frame` bytes are refused from their header, before any payload
    /// is buffered. A socket holds one 8 KiB read buffer and no write
    /// buffer: frames go out from the bytes every viewer shares.
    pub fn accept(self, max_frame: usize) -> (Response, impl Future<Output = Option<Socket>> + Send) {
        let Handshake { accept, on_upgrade } = self;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        let limits = Limits::default().max_payload_len(Some(max_frame));
        let socket = async move {
            let upgraded = on_upgrade.await.ok()?;
            Some(ServerBuilder::new().limits(limits).serve(TokioIo::new(upgraded)))
        };
        (response, socket)
    }
}

/// Whether a comma-separated header lists `token`, in any case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Proves to the client that this server read its key, so a cache or a
/// server that does not speak WebSocket cannot pass for one.
fn accept(key: &[u8]) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key);
    sha1.update(GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finish());
    HeaderValue::try_from(encoded).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_the_one_in_rfc_6455() {
        assert_eq!(accept(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn tokens_are_found_in_lists_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::UPGRADE, "websocket"));
    }
}
