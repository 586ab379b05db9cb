//! The OpenAPI document: complete, valid 3.1, and rendered at /docs.

use crate::helpers::spawn_app;

/// A request path for `template`, each path parameter filled with a
/// value of its documented type.
fn concrete(template: &str, operation: &serde_json::Value) -> String {
    let mut path = template.to_string();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().unwrap();
        let value = if parameter["schema"]["format"] == "uuid" {
            uuid::Uuid::new_v4().to_string()
        } else {
            "1".into()
        };
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!path.contains('{'), "{template}: a path parameter is not documented");
    path
}

/// The router and the document are built from one list; this checks the
/// outcome: every documented operation reaches a handler, none gets the
/// router's own 404 (`not_found`) or 405.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = crate::helpers::spawn_app_with(tally::app::Roles::ALL, |s| {
        s.limits.per_client_per_minute = 0;
        s.limits.receipts_per_client_per_minute = 0;
    })
    .await;
    let doc = app.get_json("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    let mut served = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(operation) = item.get(method) else { continue };
            let path = concrete(template, operation);
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer =
                app.client.request(method.clone(), format!("{}{path}", app.api)).send().await.unwrap();
            let status = answer.status();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            assert!(
                status != 405 && !(status == 404 && body["code"] == "not_found"),
                "{method} {template} is documented but not served: {status} {body}"
            );
            served.push(format!("{method} {template}"));
        }
    }
    assert!(served.len() >= 20, "found the document's operations: {served:?}");
}

#[tokio::test]
async fn the_document_validates_as_openapi_3_1() {
    let app = spawn_app().await;
    let text = app.get_text("/openapi.json").await;
    let file = std::env::temp_dir().join(format!("{}-openapi.json", app.ns.id));
    std::fs::write(&file, text).unwrap();
    let validator = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/openapi-spec-validator");
    let output = std::process::Command::new(validator)
        .args(["--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{validator}: {e}; `make tools` installs it"));
    std::fs::remove_file(&file).ok();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_docs_page_renders_the_document() {
    let app = spawn_app().await;
    let page = app.client.get(format!("{}/docs/", app.api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let init = app.get_text("/docs/swagger-initializer.js").await;
    assert!(init.contains("/openapi.json"), "{init}");
}

/// Schemathesis generates requests from the document, valid and not, as
/// an admin (so every operation is reachable): no answer may be a 5xx,
/// and every answer must match its documented status, type and schema.
#[tokio::test]
async fn generated_requests_get_documented_answers() {
    // Over a thousand requests from one address in seconds: the per-client
    // limit would answer most of them 429 (documented, but not the point).
    let app = crate::helpers::spawn_app_with(tally::app::Roles::ALL, |s| {
        s.limits.per_client_per_minute = 0;
        s.limits.receipts_per_client_per_minute = 0;
    })
    .await;
    let admin = app.admin(6001).await;
    crate::helpers::insert_election(&app.db, crate::helpers::ElectionSpec::default()).await;
    let report = std::env::temp_dir().join(format!("{}-schemathesis", app.ns.id));
    let cli = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/schemathesis");
    // Asynchronous: the server under test runs on this same runtime.
    let output = tokio::process::Command::new(cli)
        .arg("run")
        .arg(format!("{}/openapi.json", app.api))
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance"])
        .args(["--checks", "response_schema_conformance"])
        .args(["--max-examples", "60", "--seed", "7", "--no-shrink", "--workers", "2"])
        // Logging out would end the admin session the run depends on.
        .args(["--exclude-path-regex", "^/v1/auth/logout"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {admin}"))
        .args(["--report", "har", "--report-dir"])
        .arg(&report)
        .output()
        .await
        .expect("schemathesis runs (make tools installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let har = std::fs::read_dir(&report)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("har"));
    let har: serde_json::Value =
        serde_json::from_slice(&std::fs::read(har.unwrap().path()).unwrap()).unwrap();
    let requests = har["log"]["entries"].as_array().map_or(0, Vec::len);
    assert!(requests >= 1000, "only {requests} requests were generated:\n{stdout}");
    std::fs::remove_dir_all(&report).ok();
}
