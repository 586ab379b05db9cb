//! `GET /v1/audit`: administrators page through the audit log, newest
//! first, optionally for one election.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tally_http::auth::AdminUser;
use tally_http::error::FieldError;
use tally_http::{ApiError, Json, Query};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiState;
use crate::openapi::Problem;

const MAX_PAGE: i64 = 200;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub election_id: Option<i64>,
    /// Entries older than this id (the `next` of the previous page).
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub election_id: Option<i64>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next: Option<i64>,
}

#[utoipa::path(get, operation_id = "list_audit", path = "/v1/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, description = "Newest first", body = AuditPage), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 403, description = "forbidden: not an administrator", content_type = "application/problem+json", body = Problem), (status = 422, description = "validation_failed", content_type = "application/problem+json", body = Problem)))]
pub async fn list(
    State(state): State<ApiState>,
    _admin: AdminUser,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation(vec![FieldError {
            field: "limit".into(),
            message: format!("must be between 1 and {MAX_PAGE}"),
        }]));
    }
    let mut entries: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, actor, action, election_id, before, after, at FROM audit_log
         WHERE ($1::bigint IS NULL OR election_id = $1) AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(query.election_id)
    .bind(query.before)
    .bind(limit + 1)
    .fetch_all(&state.deps.db)
    .await?;
    let next = if entries.len() as i64 > limit {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(AuditPage { entries, next }))
}
