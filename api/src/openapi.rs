//! The OpenAPI 3.1 document and the interactive documentation that renders
//! it. Its paths come from the router itself (`crate::router`): a route is
//! registered once, and is documented by being registered.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

/// Every error response: RFC 9457 problem details with a stable `code`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// `/problems/<code>`
    #[schema(rename = "type", example = "/problems/user_exists")]
    kind: String,
    #[schema(example = "Conflict")]
    title: String,
    #[schema(example = 409)]
    status: u16,
    #[schema(example = "this citizen already has an account")]
    detail: Option<String>,
    /// Stable and machine-readable, e.g. `already_voted`.
    #[schema(example = "user_exists")]
    code: String,
    /// Per-field problems, for `validation_failed`.
    errors: Option<Vec<FieldProblem>>,
    /// A further reason, e.g. `too_young` for `not_eligible`.
    reason: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldProblem {
    field: String,
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally API", description = "Sign up, sign in, elections and results. Errors are application/problem+json."),
    components(schemas(Problem, FieldProblem)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "elections", description = "Elections, eligibility and results"),
        (name = "ballots", description = "Casting a ballot and following its receipt"),
        (name = "admin", description = "Administration; needs an administrator's token"),
        (name = "record", description = "The signed election record, and a voter's proof that their receipt is in it"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}

/// Answers any operation can give, documented once here rather than on
/// every handler: unreadable input, and a process that cannot serve now.
/// Applied to the finished document, once the routes have added their paths.
struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let always = [
            ("400", "malformed_json, invalid_path or invalid_query: the request cannot be read"),
            ("429", "rate_limited: too many requests from this client; see Retry-After and RateLimit-*"),
            ("503", "unavailable, timeout or overloaded: retry after Retry-After"),
        ];
        let with_body = [
            ("413", "payload_too_large: the body is over http.body_limit_bytes"),
            ("415", "unsupported_media_type: the body must be application/json"),
            ("422", "invalid_body: the JSON does not have the documented shape"),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations =
                [&mut item.get, &mut item.post, &mut item.patch, &mut item.put, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                let extra = if operation.request_body.is_some() { &with_body[..] } else { &[] };
                for (status, description) in always.iter().chain(extra) {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| problem(description));
                }
            }
        }
    }
}

fn problem(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    RefOr::T(
        ResponseBuilder::new().description(description).content("application/problem+json", content).build(),
    )
}

/// The document for `paths`: the description, the security scheme and the
/// answers every operation shares, around what the routes declared.
pub fn document(paths: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi().merge_from(paths);
    CommonProblems.modify(&mut document);
    document
}

/// `/openapi.json` and the interactive UI at `/docs`.
pub fn routes(document: utoipa::openapi::OpenApi) -> Router {
    // Swagger UI runs its own scripts and inline styles, from this origin only.
    let csp =
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", document)).layer(
        tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::header::CONTENT_SECURITY_POLICY,
            axum::http::HeaderValue::from_static(csp),
        ),
    )
}
