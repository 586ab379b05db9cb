//! The live results page: plain HTML, CSS and JavaScript compiled into the
//! binary, plus the small JSON list it starts from.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_domain::lifecycle::Status;
use tally_http::{ApiError, Json, Path};
use tally_platform::elections;
use time::OffsetDateTime;

use crate::BroadcasterState;

const INDEX: &str = include_str!("../static/index.html");
const ELECTION: &str = include_str!("../static/election.html");
const SCRIPT: &str = include_str!("../static/live.js");
const STYLE: &str = include_str!("../static/live.css");

/// Only our own files; the socket goes back to where the page came from.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn document(body: &'static str, content_type: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

pub async fn index() -> Response {
    document(INDEX, "text/html; charset=utf-8")
}

pub async fn election(Path(_id): Path<i64>) -> Response {
    document(ELECTION, "text/html; charset=utf-8")
}

pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "live.js" => Ok(document(SCRIPT, "text/javascript; charset=utf-8")),
        "record.js" => Ok(document(tally_http::assets::RECORD_SCRIPT, "text/javascript; charset=utf-8")),
        "live.css" => Ok(document(STYLE, "text/css; charset=utf-8")),
        _ => Err(ApiError::not_found("not_found")),
    }
}

#[derive(Serialize)]
pub struct Listed {
    election_id: i64,
    name: String,
    status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    end_at: OffsetDateTime,
}

/// Open elections, then the most recently ended, for the index page.
pub async fn elections(State(state): State<BroadcasterState>) -> Result<Json<Vec<Listed>>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut listed: Vec<Listed> = elections::load_all(&state.hub.deps().db)
        .await?
        .into_iter()
        .filter_map(|e| {
            let status = e.status(now);
            (status != Status::Scheduled).then(|| Listed {
                election_id: e.id,
                name: e.name.clone(),
                status: status.as_str(),
                end_at: e.schedule.voting_ends(),
            })
        })
        .collect();
    listed.sort_by_key(|l| (l.status != "open", std::cmp::Reverse(l.end_at)));
    listed.truncate(50);
    Ok(Json(listed))
}
