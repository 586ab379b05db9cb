//! The client's address of a request, as per-address limits count it
//! (the rules are `tally_platform::proxies`).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use tally_platform::proxies::TrustedProxies;

use crate::error::ApiError;

/// The client address of a request, as limits count it (see the module's
/// doc).
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer =
            parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip()).ok_or_else(
                || ApiError::internal(anyhow::anyhow!("the listener does not record peer addresses")),
            )?;
        let trusted = parts.extensions.get::<TrustedProxies>().cloned().unwrap_or_default();
        // A line that is not text cannot be read as hops; it ends the walk.
        let lines: Vec<&str> =
            parts.headers.get_all("x-forwarded-for").iter().map(|v| v.to_str().unwrap_or("?")).collect();
        Ok(ClientIp(trusted.counted_as(trusted.client(peer, lines.into_iter()))))
    }
}
