//! What a voter may learn of a ballot afterwards: its receipt's fate, and
//! whether they have one in an election. Never what it chose.

use axum::extract::State;
use serde::Serialize;
use tally_http::auth::AuthUser;
use tally_http::client_ip::ClientIp;
use tally_http::{ApiError, Json, Path};
use tally_platform::voters;
use uuid::Uuid;

use crate::ApiState;
use crate::openapi::Problem;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReceiptStatus {
    pub receipt: Uuid,
    /// Known once the ballot is recorded or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_id: Option<i64>,
    /// pending, recorded or rejected
    #[schema(example = "recorded")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[utoipa::path(get, path = "/v1/receipts/{receipt}", tag = "ballots", params(("receipt" = Uuid, Path, description = "The receipt from casting")),
    responses(
        (status = 200, description = "What became of the ballot; never what it chose. Any well-formed receipt that is neither recorded nor rejected is pending.", body = ReceiptStatus),
        (status = 429, description = "rate_limited, with Retry-After", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn receipt(
    State(state): State<ApiState>,
    ClientIp(client): ClientIp,
    Path(receipt): Path<Uuid>,
) -> Result<Json<ReceiptStatus>, ApiError> {
    state.receipt_limit.admit(client)?;
    let recorded: Option<i64> =
        sqlx::query_scalar("SELECT election_id FROM recorded_receipts WHERE receipt = $1")
            .bind(receipt)
            .fetch_optional(&state.deps.db)
            .await?;
    if let Some(election_id) = recorded {
        return Ok(Json(ReceiptStatus {
            receipt,
            election_id: Some(election_id),
            status: "recorded",
            reason: None,
        }));
    }
    let rejected: Option<(i64, String)> =
        sqlx::query_as("SELECT election_id, reason FROM rejected_ballots WHERE receipt = $1")
            .bind(receipt)
            .fetch_optional(&state.deps.db)
            .await?;
    if let Some((election_id, reason)) = rejected {
        return Ok(Json(ReceiptStatus {
            receipt,
            election_id: Some(election_id),
            status: "rejected",
            reason: Some(reason),
        }));
    }
    // Held by a worker, still in the stream, or never issued: the answer is
    // the same, so it tells nobody which receipts exist.
    Ok(Json(ReceiptStatus { receipt, election_id: None, status: "pending", reason: None }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MyBallot {
    pub voted: bool,
}

#[utoipa::path(get, path = "/v1/elections/{id}/ballot", tag = "ballots", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Election id")),
    responses(
        (status = 200, description = "Whether the caller has a ballot in this election, recorded or pending", body = MyBallot),
        (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn mine(
    State(state): State<ApiState>,
    voter: AuthUser,
    Path(election_id): Path<i64>,
) -> Result<Json<MyBallot>, ApiError> {
    let recorded: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM voter_roll WHERE election_id = $1 AND citizen_id = $2)",
    )
    .bind(election_id)
    .bind(voter.citizen_id)
    .fetch_one(&state.deps.db)
    .await?;
    let voted = recorded
        || voters::has_voted(&state.deps.redis, &state.deps.keys, election_id, voter.citizen_id)
            .await
            .map_err(|e| ApiError::unavailable(anyhow::anyhow!("checking the voter set: {e}"), 1))?;
    Ok(Json(MyBallot { voted }))
}
