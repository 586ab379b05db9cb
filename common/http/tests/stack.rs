//! The shared HTTP stack, driven in process with `oneshot`: no listener,
//! no Postgres, Redis or NATS.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use tally_http::error::{ApiError, Outcome};
use tally_http::middleware::public_stack;
use tally_http::{Json, Path};
use tally_platform::Settings;
use tower::ServiceExt;

#[derive(Deserialize)]
struct Ballot {
    #[allow(dead_code)]
    selections: Vec<i64>,
}

fn app() -> Router {
    let routes = Router::new()
        .route("/echo/{id}", get(|Path(id): Path<i64>| async move { id.to_string() }))
        .route("/ballots", post(|Json(_): Json<Ballot>| async { StatusCode::ACCEPTED }))
        .route(
            "/fails",
            get(|| async { Err::<(), _>(ApiError::internal(anyhow::anyhow!("password is hunter2"))) }),
        )
        .route(
            "/unreachable",
            get(|| async {
                let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                Err::<(), _>(ApiError::internal(sqlx::Error::Io(refused)))
            }),
        );
    public_stack(routes, &Settings::default().http)
}

async fn send(request: Request<Body>) -> (Response, serde_json::Value) {
    let response = app().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or_default();
    (Response::from_parts(parts, Body::empty()), json)
}

fn get_(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, content_type: &str, body: &'static str) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, content_type).body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn every_rejected_input_has_one_shape() {
    let cases = [
        (get_("/echo/not-a-number"), 400, "invalid_path", "path"),
        (post_json("/ballots", "text/plain", "{}"), 415, "unsupported_media_type", "header.content-type"),
        (post_json("/ballots", "application/json", "{"), 400, "malformed_json", "body"),
        (post_json("/ballots", "application/json", r#"{"selections": "x"}"#), 422, "invalid_body", "body"),
        (
            post_json("/ballots", "application/json", r#"{"selections": ["\u0000"]}"#),
            422,
            "invalid_body",
            "body",
        ),
    ];
    for (request, status, code, field) in cases {
        let (response, body) = send(request).await;
        assert_eq!(response.status().as_u16(), status, "{body}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(body["code"], code);
        assert_eq!(body["errors"][0]["field"], field, "{body}");
        assert!(body["errors"][0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn a_failure_hides_its_cause_from_the_client_and_leaves_it_for_the_log() {
    let response = app().oneshot(get_("/fails")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let outcome = response.extensions().get::<Outcome>().cloned().unwrap();
    assert!(format!("{:#}", outcome.cause.unwrap()).contains("hunter2"), "the cause reaches the log layer");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("hunter2"), "never the client");
}

#[tokio::test]
async fn an_unreachable_dependency_is_503_with_retry_after() {
    let (response, body) = send(get_("/unreachable")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(body["code"], "unavailable");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let (response, body) = send(get_("/nowhere")).await;
    assert_eq!((response.status().as_u16(), body["code"].as_str()), (404, Some("not_found")));
    let (response, body) = send(Request::delete("/ballots").body(Body::empty()).unwrap()).await;
    assert_eq!((response.status().as_u16(), body["code"].as_str()), (405, Some("method_not_allowed")));
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_the_security_headers() {
    let (response, _) = send(get_("/echo/7")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert!(headers.get("x-request-id").is_some_and(|id| !id.is_empty()));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let echoed = app()
        .oneshot(Request::get("/echo/7").header("x-request-id", "req-9").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-9");
}
