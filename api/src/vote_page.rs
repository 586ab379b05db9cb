//! The voter page at `/vote`: plain HTML, CSS and JavaScript compiled into
//! the binary. It calls this role's own REST routes from the same origin,
//! so its policy allows nothing else.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tally_platform::config::HttpSettings;

const PAGE: &str = include_str!("../static/vote.html");
const SCRIPT: &str = include_str!("../static/vote.js");
const STYLE: &str = include_str!("../static/vote.css");
/// Asks the record's checks (`tally_http::assets`) about the receipt shown.
const RECORD_CHECK: &str = include_str!("../static/vote-record.js");

/// Only our own files and our own API; no inline script or style, no
/// forms posted by the browser itself (the script sends them), no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn document(body: impl Into<axum::body::Body>, content_type: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn routes(http: &HttpSettings) -> Router {
    let page = PAGE.replace("{{LIVE_PAGE}}", &attribute(&live_page(http)));
    Router::new()
        .route(
            "/vote",
            get(move || {
                let page = page.clone();
                async move { document(page, "text/html; charset=utf-8") }
            }),
        )
        .route("/vote/vote.js", get(|| async { document(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/vote/vote.css", get(|| async { document(STYLE, "text/css; charset=utf-8") }))
        .route(
            "/vote/record.js",
            get(|| async { document(tally_http::assets::RECORD_SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/vote/vote-record.js",
            get(|| async { document(RECORD_CHECK, "text/javascript; charset=utf-8") }),
        )
}

/// Where the page links for live results: `http.live_page_url` if set,
/// otherwise `:PORT`, which the script reads as this host on the
/// broadcaster's port.
fn live_page(http: &HttpSettings) -> String {
    match &http.live_page_url {
        Some(url) => url.clone(),
        None => format!(":{}", http.broadcaster_addr.port()),
    }
}

/// The value escaped for a double-quoted HTML attribute.
fn attribute(value: &str) -> String {
    value.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_page_address_cannot_break_out_of_its_attribute() {
        let mut http = tally_platform::Settings::default().http;
        assert_eq!(live_page(&http), ":8081");
        http.live_page_url = Some("https://x.example/\"><script>".into());
        assert_eq!(attribute(&live_page(&http)), "https://x.example/&quot;&gt;&lt;script&gt;");
    }
}
