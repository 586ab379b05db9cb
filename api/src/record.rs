//! The election record over REST: its files, the key that signs them, and
//! a voter's inclusion proof. All public: the record is for anyone to
//! check (docs/record.md). Files never change once built, so they are
//! served as immutable.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_domain::record::proof::parse_receipts;
use tally_domain::record::receipt_tree::ReceiptTree;
use tally_domain::record::{self as formats, CHECKPOINT, RECEIPTS};
use tally_http::client_ip::ClientIp;
use tally_http::{ApiError, Json, Path};
use tally_platform::records;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ApiState;
use crate::openapi::Problem;

/// Routes under the per-client limit layer.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(verifier_key)).routes(routes!(checkpoint)).routes(routes!(file))
}

/// The proof route counts its client itself, in the process, as the
/// receipt route does: a Redis key would date each look-up of a receipt.
pub fn routes_limited_in_handler() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(receipt_proof))
}

fn not_ready() -> ApiError {
    ApiError::conflict("record_not_ready")
        .with_detail("the election has no record yet: it is built once the election is final")
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[utoipa::path(get, path = "/v1/record/verifier-key", tag = "record",
    responses((status = 200, description = "The key every election's checkpoint and MANIFEST are signed with, as a C2SP signed-note verifier key: `<name>+<key id>+<base64>`. Get it from more than one place before trusting a record.", content_type = "text/plain", body = String)))]
pub async fn verifier_key(State(state): State<ApiState>) -> Response {
    text(format!("{}\n", state.record_key.encode()))
}

#[utoipa::path(get, path = "/v1/elections/{id}/record/checkpoint", tag = "record",
    params(("id" = i64, Path, description = "Election id")),
    responses(
        (status = 200, description = "The signed checkpoint (C2SP tlog-checkpoint in a signed note) over the sorted receipts", content_type = "text/plain", body = String),
        (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "record_not_ready: the election is not final yet, or its record is being built", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn checkpoint(State(state): State<ApiState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    served(&state, id, CHECKPOINT).await
}

#[utoipa::path(get, path = "/v1/elections/{id}/record/{file}", tag = "record",
    params(("id" = i64, Path, description = "Election id"),
           ("file" = String, Path, description = "election.json, ballots-<n>.csv, receipts.txt, totals.json, audit.jsonl, checkpoint or MANIFEST")),
    responses(
        (status = 200, description = "The file, as signed in MANIFEST", content_type = "text/plain", body = String),
        (status = 404, description = "election_not_found, or record_file_not_found for a name the record does not have", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "record_not_ready", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn file(
    State(state): State<ApiState>,
    Path((id, name)): Path<(i64, String)>,
) -> Result<Response, ApiError> {
    served(&state, id, &name).await
}

async fn served(state: &ApiState, id: i64, name: &str) -> Result<Response, ApiError> {
    let found =
        if formats::is_file_name(name) { records::file(&state.deps.db, id, name).await? } else { None };
    let Some(bytes) = found else {
        if records::built(&state.deps.db, id).await? {
            return Err(
                ApiError::not_found("record_file_not_found").with_detail("the record has no such file")
            );
        }
        crate::elections::find(state, id).await?;
        return Err(not_ready());
    };
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("jsonl") => "application/jsonl",
        Some("csv") => "text/csv; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    Ok(response)
}

/// A voter's proof that their receipt is a leaf of the election's tree.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReceiptProof {
    pub election_id: i64,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Base64 SHA-256 hashes, from the leaf's sibling up (RFC 6962 §2.1.1).
    pub audit_path: Vec<String>,
    /// The signed checkpoint the path leads to.
    pub checkpoint: String,
}

#[utoipa::path(get, path = "/v1/receipts/{receipt}/proof", tag = "record",
    params(("receipt" = Uuid, Path, description = "The receipt from casting")),
    responses(
        (status = 200, description = "The receipt's inclusion proof in its election's record. Check it offline too: `tally record prove` or any RFC 6962 verifier.", body = ReceiptProof),
        (status = 404, description = "receipt_not_found: not a recorded ballot's receipt (pending, rejected, or never issued)", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "record_not_ready: recorded, but the election's record is not built yet", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn receipt_proof(
    State(state): State<ApiState>,
    ClientIp(client): ClientIp,
    Path(receipt): Path<Uuid>,
) -> Result<Json<ReceiptProof>, ApiError> {
    state.receipt_limit.admit(client)?;
    let election: Option<i64> =
        sqlx::query_scalar("SELECT election_id FROM recorded_receipts WHERE receipt = $1")
            .bind(receipt)
            .fetch_optional(&state.deps.db)
            .await?;
    let Some(election) = election else {
        return Err(
            ApiError::not_found("receipt_not_found").with_detail("no recorded ballot has this receipt")
        );
    };
    let tree = state.receipt_trees.get_or_build(election, || receipt_tree(&state, election)).await?;
    let proof = tree.prove(&receipt.into_bytes()).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "election {election}: a recorded receipt is missing from its record"
        ))
    })?;
    Ok(Json(ReceiptProof {
        election_id: proof.election_id,
        leaf_index: proof.leaf_index,
        tree_size: proof.tree_size,
        audit_path: proof.audit_path,
        checkpoint: proof.checkpoint,
    }))
}

/// The election's receipt tree, hashed from its stored record: the one
/// pass over every receipt, made once per process (`ReceiptTrees`).
async fn receipt_tree(state: &ApiState, election: i64) -> Result<ReceiptTree, ApiError> {
    let (Some(receipts), Some(checkpoint)) = (
        records::file(&state.deps.db, election, RECEIPTS).await?,
        records::file(&state.deps.db, election, CHECKPOINT).await?,
    ) else {
        return Err(not_ready());
    };
    // Off the request threads: a million receipts hash for about a second.
    let tree = tokio::task::spawn_blocking(move || {
        let receipts = parse_receipts(&String::from_utf8_lossy(&receipts))?;
        Some(ReceiptTree::new(election, receipts, String::from_utf8_lossy(&checkpoint).into_owned()))
    })
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing a receipt tree: {e}")))?;
    tree.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("election {election}: receipts.txt does not parse"))
    })
}
