//! Casting a ballot, and what a voter may learn of it afterwards.
//!
//! The hot path reads no database: the election comes from memory,
//! eligibility from the token's claims, and "already voted" from a Redis
//! set. The ballot is acknowledged (202) only once JetStream has stored it.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tally_domain::ballot::{VoteCommand, check_selections};
use tally_domain::election::{Status, VoterFacts, eligibility};
use tally_http::auth::{AuthUser, SignedUser};
use tally_http::client_ip::ClientIp;
use tally_http::rate_limit;
use tally_http::rate_limit::DecisionExt;
use tally_http::{ApiError, Json, Path};
use tally_platform::limits;
use tally_platform::limits::Quota;
use tally_platform::nats::{self, PublishError, Stored};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ApiState;
use crate::election_cache::Cached;
use crate::idempotency::{self, Keyed, Match};
#[allow(unused_imports)]
use crate::openapi::Problem;

const MAX_SELECTIONS: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"selections": [9001, 9003]}))]
pub struct BallotRequest {
    /// Runner citizen ids: at least one, at most one per post.
    pub selections: Vec<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BallotAccepted {
    /// A random 128-bit id to look the ballot up by; it says nothing of the voter.
    pub receipt: Uuid,
    #[schema(example = "pending")]
    pub status: &'static str,
}

#[utoipa::path(post, path = "/v1/elections/{id}/ballots", tag = "ballots", security(("bearer" = [])),
    request_body = BallotRequest,
    params(
        ("id" = i64, Path, description = "Election id"),
        ("Idempotency-Key" = Option<Uuid>, Header, description = "A UUID the client chooses for this ballot. A retry with the same key and selections (after a timeout, a 503 or a lost connection) gets the same 202 and receipt; the ballot counts once."),
    ),
    responses(
        (status = 202, description = "Stored in the queue before the election's close; it will be counted exactly once, or rejected with a reason shown on the receipt", body = BallotAccepted),
        (status = 400, description = "invalid_idempotency_key: not a UUID", content_type = "application/problem+json", body = Problem),
        (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "not_eligible, with a reason", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "election_not_open (also when the ballot reached the queue after the close: it does not count) or already_voted", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "invalid_selection, or idempotency_key_mismatch: the key was used for other selections", content_type = "application/problem+json", body = Problem),
        (status = 429, description = "rate_limited, with Retry-After and RateLimit-* headers", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "unavailable; the detail says whether the ballot may have been stored. Retry after Retry-After, with the same Idempotency-Key", content_type = "application/problem+json", body = Problem),
    ))]
pub async fn cast(
    State(state): State<ApiState>,
    ClientIp(client): ClientIp,
    signed: Result<SignedUser, ApiError>,
    election_id: Result<Path<i64>, ApiError>,
    headers: HeaderMap,
    request: Result<Json<BallotRequest>, ApiError>,
) -> Result<Accepted, ApiError> {
    let quota = Quota::per_minute(state.deps.settings.limits.per_client_per_minute);
    // Every outcome counts against the client's limit: a refusal too, or
    // refusals would be free to repeat. An accepted ballot is counted in
    // the pipeline below, which the handler sends anyway.
    let mut charged = false;
    let now = OffsetDateTime::now_utc();
    let screened = screen(&state, client, quota, &mut charged, signed, election_id, request, &headers, now);
    let Screened { voter, election, election_id, request, receipt, intent } = match screened.await {
        Ok(screened) => screened,
        Err(refusal) => {
            if !charged {
                charge(&state, client, quota).await?;
            }
            return Err(refusal);
        }
    };
    let keyed = intent != idempotency::KEYLESS;
    // One round trip: the per-address limit, whether the session is still
    // valid, and the voter's reservation (see `idempotency`). No limit is
    // keyed by the citizen: its timestamp would date this ballot in Redis,
    // and one ballot per citizen is enforced anyway.
    let mut checks = redis::pipe();
    state.verifier.revocation_check(&mut checks, voter.session_id);
    checks.invoke_script(
        RESERVE_SCRIPT
            .key(state.deps.keys.voters(election_id))
            .key(state.deps.keys.intents(election_id))
            .arg(voter.citizen_id)
            .arg(&intent)
            .arg(if keyed { "1" } else { "0" }),
    );
    if !quota.is_off() && !charged {
        limits::add_to(&mut checks, &state.deps.keys.rate_limit("client", &client.to_string()), quota);
    }
    let unavailable = |e: redis::RedisError| {
        ApiError::unavailable(anyhow::anyhow!("checking session and voter set: {e}"), 1)
    };
    let mut redis = state.deps.redis.clone();
    let replies: Vec<redis::Value> = match checks.query_async(&mut redis).await {
        // Redis restarted and forgot the script: load it, then once more.
        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
            RESERVE_SCRIPT.load_async(&mut redis).await.map_err(unavailable)?;
            checks.query_async(&mut redis).await.map_err(unavailable)?
        }
        replies => replies.map_err(unavailable)?,
    };
    let revocation: tally_http::auth::RevocationReply =
        redis::from_redis_value(&replies[0]).map_err(unavailable)?;
    let (voted, held, reserved_now): (bool, String, bool) =
        redis::from_redis_value(&replies[1]).map_err(unavailable)?;
    let shown = match replies.get(2) {
        Some(reply) => {
            let decision = limits::read(quota, redis::from_redis_value(reply).map_err(unavailable)?);
            match decision.enforce("client") {
                Ok(shown) => shown,
                Err(limited) => {
                    if reserved_now {
                        release(&state, election_id, voter.citizen_id, &intent).await;
                    }
                    return Err(limited);
                }
            }
        }
        None => limits::Decision::unlimited(),
    };
    let revoked = state.verifier.settle(voter.session_id, revocation).await;
    if !matches!(revoked, Ok(false)) {
        if reserved_now {
            release(&state, election_id, voter.citizen_id, &intent).await;
        }
        return Err(revoked.err().unwrap_or_else(tally_http::auth::Verifier::revoked));
    }
    // Whether this is a retry of a keyed ballot reserved earlier.
    let retry = match (keyed, reserved_now, held.is_empty(), voted) {
        (false, _, true, false) | (true, true, _, _) => false,
        (false, ..) | (true, false, true, _) => return Err(second_ballot()),
        (true, false, false, _) => match idempotency::compare(&held, &intent) {
            Match::OtherBallot => return Err(second_ballot()),
            Match::OtherSelections => {
                return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch")
                    .with_detail("this Idempotency-Key was used for other selections"));
            }
            // Stored before the close and noted: the same answer again.
            Match::Same if voted => return Ok(accepted(receipt, &shown)),
            // Its first attempt's fate is unknown: publish again; the
            // broker's dedup, or the workers past it, keep one copy.
            Match::Same => true,
        },
    };

    let command = VoteCommand {
        receipt,
        election_id,
        citizen_id: voter.citizen_id,
        selections: request.selections,
        accepted_at: now,
    };
    let settings = &state.deps.settings.nats;
    let started = std::time::Instant::now();
    let mut sealed = command.seal(&state.sealer, election.ballot_slots());
    if keyed {
        // The broker's dedup then joins the copies of this ballot only: a
        // voter freed by a rejection may cast anew under another key.
        let id = format!("{}:{}", command.msg_id(), idempotency::key_tag(&intent));
        sealed.headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    }
    let stored = nats::publish_acked(
        &state.deps.jetstream,
        nats::ballot_subject(settings, election_id),
        sealed.headers,
        sealed.payload,
        Duration::from_millis(settings.publish_timeout_ms),
    )
    .await;
    metrics::histogram!("tally_publish_duration_seconds").record(started.elapsed().as_secs_f64());
    let (sequence, duplicate) = match stored {
        Ok(Stored::New(sequence)) => (sequence, false),
        // Under this key's own dedup id: a copy of this very ballot.
        Ok(Stored::Duplicate(sequence)) if keyed => (sequence, true),
        Ok(Stored::Duplicate(_)) => {
            return Err(
                refused("already_voted").with_detail("a ballot of yours for this election is already queued")
            );
        }
        Err(e) => {
            let kind = if matches!(e, PublishError::Timeout) { "timeout" } else { "refused" };
            metrics::counter!("tally_publish_failures_total", "kind" => kind).increment(1);
            let detail = match (&e, keyed) {
                (PublishError::Refused(_), _) => "the queue refused the ballot; it was not stored",
                (PublishError::Timeout, true) => {
                    "the queue did not confirm in time; send the ballot again with the same \
                     Idempotency-Key to learn whether it was stored"
                }
                (PublishError::Timeout, false) => {
                    "the queue did not confirm in time; the ballot may have been stored. Sending it \
                     again is safe: one ballot per voter counts (an Idempotency-Key keeps the receipt)"
                }
            };
            // Not stored: the reservation goes. Maybe stored: it stays, for
            // the retry with the same key.
            if reserved_now && matches!(e, PublishError::Refused(_)) {
                release(&state, election_id, voter.citizen_id, &intent).await;
            }
            return Err(ApiError::unavailable(e, 1).with_detail(detail));
        }
    };
    // The close is the election's fence in the stream: a ballot stored
    // after it does not count, so its voter hears so now, not later.
    let late = match state.fences.is_late(&state.deps, election_id, sequence).await {
        Ok(late) => late,
        Err(e) => {
            return Err(ApiError::unavailable(e, 1).with_detail(
                "the ballot was stored, but whether before the close is not known yet; \
                 see GET /v1/elections/{id}/ballot and the receipt route",
            ));
        }
    };
    // A copy of a ballot whose earlier attempt may be stored, before the
    // close or since rejected: its receipt tells which, so it gets that
    // receipt; the voter set is left to the workers, who know.
    if retry && late || reserved_now && duplicate {
        if reserved_now {
            release(&state, election_id, voter.citizen_id, &intent).await;
        }
        metrics::counter!("tally_votes_accepted_total").increment(1);
        return Ok(accepted(receipt, &shown));
    }
    if late {
        return Err(refused("election_not_open")
            .with_detail("the election closed before your ballot reached the queue; it does not count"));
    }
    // Before answering, so a second ballot is refused at once.
    remember_voter(&state, &command).await;
    metrics::counter!("tally_votes_accepted_total").increment(1);
    Ok(accepted(receipt, &shown))
}

type Accepted = (StatusCode, HeaderMap, Json<BallotAccepted>);

/// A ballot that passed every check needing no Redis: who, where, what,
/// and the receipt it will get.
struct Screened {
    voter: tally_http::auth::AuthUser,
    election: std::sync::Arc<tally_domain::election::Election>,
    election_id: i64,
    request: BallotRequest,
    receipt: Uuid,
    intent: String,
}

/// The checks before the Redis round trip. An election id memory does not
/// know is charged to the client's limit before Postgres is asked, so an
/// enumeration of ids cannot drain the pool; Postgres's "none" is then
/// remembered for a moment.
#[allow(clippy::too_many_arguments)]
async fn screen(
    state: &ApiState,
    client: IpAddr,
    quota: Quota,
    charged: &mut bool,
    signed: Result<SignedUser, ApiError>,
    election_id: Result<Path<i64>, ApiError>,
    request: Result<Json<BallotRequest>, ApiError>,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Result<Screened, ApiError> {
    let SignedUser(voter) = signed?;
    let Path(election_id) = election_id?;
    let Json(request) = request?;
    let election = match state.elections.cached(election_id) {
        Cached::Found(election) => Some(election),
        Cached::Missing => None,
        Cached::Unknown => {
            *charged = true;
            charge(state, client, quota).await?;
            state.elections.reload(election_id).await?
        }
    };
    let election = election
        .ok_or_else(|| ApiError::not_found("election_not_found").with_detail("no election with this id"))?;
    let status = election.status(now);
    if status != Status::Open {
        return Err(refused("election_not_open")
            .with_detail(format!("this election is {}, not open", status.as_str())));
    }
    let facts = VoterFacts { province: &voter.province, dob: voter.dob };
    if let Err(reason) = eligibility(&election.schedule, &election.restriction, election.min_age, &facts, now)
    {
        metrics::counter!("tally_votes_refused_total", "reason" => reason.as_str()).increment(1);
        return Err(ApiError::forbidden("not_eligible")
            .with_reason(reason.as_str())
            .with_detail(reason.as_str()));
    }
    if request.selections.len() > MAX_SELECTIONS {
        return Err(refused("invalid_selection").with_detail("too many selections"));
    }
    check_selections(&request.selections, &election.runners)
        .map_err(|why| refused("invalid_selection").with_detail(why.to_string()))?;
    let (receipt, intent) = match idempotency::key(headers)? {
        Some(key) => {
            let keyed = Keyed::new(
                state.receipt_key.as_ref(),
                election_id,
                voter.citizen_id,
                key,
                &request.selections,
            );
            (keyed.receipt, keyed.intent)
        }
        None => (Uuid::new_v4(), idempotency::KEYLESS.to_string()),
    };
    Ok(Screened { voter, election, election_id, request, receipt, intent })
}

/// Counts this request against the client's limit on a round trip of its
/// own, for outcomes that never reach the pipeline.
async fn charge(state: &ApiState, client: IpAddr, quota: Quota) -> Result<(), ApiError> {
    if quota.is_off() {
        return Ok(());
    }
    let key = state.deps.keys.rate_limit("client", &client.to_string());
    rate_limit::enforce_or_let_through(&state.deps.redis, &key, quota, "client").await.map(drop)
}

fn accepted(receipt: Uuid, shown: &limits::Decision) -> Accepted {
    let mut headers = HeaderMap::new();
    shown.write_headers(&mut headers);
    (StatusCode::ACCEPTED, headers, Json(BallotAccepted { receipt, status: "pending" }))
}

static RESERVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(idempotency::RESERVE));

/// Gives up a reservation this request made, when its ballot was refused
/// before it could be stored.
async fn release(state: &ApiState, election_id: i64, citizen_id: i64, intent: &str) {
    static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(idempotency::RELEASE));
    let released = SCRIPT
        .key(state.deps.keys.intents(election_id))
        .arg(citizen_id)
        .arg(intent)
        .invoke_async::<i64>(&mut state.deps.redis.clone())
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "a reservation stays in Redis; the voter may retry with the same key");
    }
}

/// This voter has a ballot already: voted, or reserved by another one.
fn second_ballot() -> ApiError {
    refused("already_voted").with_detail("one ballot per citizen per election")
}

fn refused(code: &'static str) -> ApiError {
    metrics::counter!("tally_votes_refused_total", "reason" => code).increment(1);
    match code {
        "invalid_selection" => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code),
        _ => ApiError::conflict(code),
    }
}

async fn already_voted(state: &ApiState, election_id: i64, citizen_id: i64) -> Result<bool, ApiError> {
    let mut redis = state.deps.redis.clone();
    redis::cmd("SISMEMBER")
        .arg(state.deps.keys.voters(election_id))
        .arg(citizen_id)
        .query_async::<bool>(&mut redis)
        .await
        .map_err(|e| ApiError::unavailable(anyhow::anyhow!("checking the voter set: {e}"), 1))
}

/// Marks the voter as having voted, so a second ballot is refused at
/// once. Nothing here names the receipt: a Redis reader must not pair the
/// two. The ballot is already safe in the stream, so a failure here is
/// only logged.
async fn remember_voter(state: &ApiState, command: &VoteCommand) {
    let written = redis::cmd("SADD")
        .arg(state.deps.keys.voters(command.election_id))
        .arg(command.citizen_id)
        .query_async::<()>(&mut state.deps.redis.clone())
        .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "could not note a voter in Redis");
    }
}

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
    let voted = recorded || already_voted(&state, election_id, voter.citizen_id).await?;
    Ok(Json(MyBallot { voted }))
}
