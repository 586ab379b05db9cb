//! `POST /v1/elections/{id}/ballots`: the steps of casting, in order.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tally_domain::ballot::VoteCommand;
use tally_domain::election::Election;
use tally_http::auth::{AuthUser, SignedUser, Verifier};
use tally_http::client_ip::ClientIp;
use tally_http::rate_limit::DecisionExt;
use tally_http::{ApiError, Json, Path};
use tally_platform::limits::Decision;
use tally_platform::nats::{PublishError, Stored};
use tally_platform::voters;
use time::OffsetDateTime;
use uuid::Uuid;

use super::admit::{admit, refused, second_ballot};
use super::enqueue::{enqueue, not_confirmed, note_pending};
use super::preflight::{Preflight, preflight};
use crate::ApiState;
use crate::election_cache::Cached;
use crate::idempotency::{self, Keyed, Match};
use crate::openapi::Problem;

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
    // Every outcome counts against the client's limit: a refusal too, or
    // refusals would be free to repeat. An accepted ballot is counted in
    // the preflight round trip, which the handler sends anyway.
    let mut counted = false;
    let now = OffsetDateTime::now_utc();
    let screened = screen(&state, client, &mut counted, signed, election_id, request, &headers, now);
    let Screened { voter, election, request, receipt, intent } = match screened.await {
        Ok(screened) => screened,
        Err(refusal) => {
            if !counted {
                state.per_client.check(client).await.map_err(|limited| limited.counting_also(&refusal))?;
            }
            return Err(refusal);
        }
    };
    let election_id = election.id;
    let keyed = intent != idempotency::KEYLESS;
    let Preflight { revocation, standing, client_limit } =
        preflight(&state, client, !counted, &voter, election_id, &intent, keyed).await?;
    let reserved_now = standing.reserved_now;
    // Gives up a reservation this request made, on a way out before its
    // ballot could be stored.
    let release = || async {
        if reserved_now {
            release(&state, election_id, voter.citizen_id, &intent).await;
        }
    };
    let shown = match client_limit {
        Ok(shown) => shown,
        Err(limited) => {
            release().await;
            return Err(limited);
        }
    };
    let revoked = state.verifier.settle(voter.session_id, revocation).await;
    if !matches!(revoked, Ok(false)) {
        release().await;
        return Err(revoked.err().unwrap_or_else(Verifier::revoked));
    }
    // Whether this is a retry of a keyed ballot reserved earlier.
    let retry = match (keyed, reserved_now, standing.held.is_empty(), standing.voted) {
        (false, _, true, false) | (true, true, _, _) => false,
        (false, ..) | (true, false, true, _) => return Err(second_ballot()),
        (true, false, false, voted) => match idempotency::compare(&standing.held, &intent) {
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
    let keyed_intent = keyed.then_some(intent.as_str());
    let (sequence, duplicate) = match enqueue(&state, &election, &command, keyed_intent).await {
        Ok(Stored::New(sequence)) => (sequence, false),
        // Under this key's own dedup id: a copy of this very ballot.
        Ok(Stored::Duplicate(sequence)) if keyed => (sequence, true),
        Ok(Stored::Duplicate(_)) => {
            return Err(
                refused("already_voted").with_detail("a ballot of yours for this election is already queued")
            );
        }
        Err(e) => {
            // Not stored: the reservation goes. Maybe stored: it stays, for
            // the retry with the same key.
            let stored_maybe = matches!(e, PublishError::Timeout);
            let answer = not_confirmed(e, keyed);
            if !stored_maybe {
                release().await;
            }
            return Err(answer);
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
        release().await;
        metrics::counter!("tally_votes_accepted_total").increment(1);
        return Ok(accepted(receipt, &shown));
    }
    if late {
        return Err(refused("election_not_open")
            .with_detail("the election closed before your ballot reached the queue; it does not count"));
    }
    note_pending(&state, &command);
    metrics::counter!("tally_votes_accepted_total").increment(1);
    Ok(accepted(receipt, &shown))
}

type Accepted = (StatusCode, HeaderMap, Json<BallotAccepted>);

/// A ballot admitted by the rules: who, where, what, and the receipt it
/// will get.
struct Screened {
    voter: AuthUser,
    election: std::sync::Arc<Election>,
    request: BallotRequest,
    receipt: Uuid,
    intent: String,
}

/// Everything before the Redis round trip: the request read, the election
/// found, the ballot admitted, the receipt derived. An election id memory
/// does not know is counted against the client's limit before Postgres is
/// asked, so an enumeration of ids cannot drain the pool; Postgres's
/// "none" is then remembered for a moment.
#[allow(clippy::too_many_arguments)]
async fn screen(
    state: &ApiState,
    client: IpAddr,
    counted: &mut bool,
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
            *counted = true;
            state.per_client.check(client).await?;
            state.elections.reload(election_id).await?
        }
    };
    let election = election
        .ok_or_else(|| ApiError::not_found("election_not_found").with_detail("no election with this id"))?;
    admit(&election, &voter, &request.selections, now)?;
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
    Ok(Screened { voter, election, request, receipt, intent })
}

fn accepted(receipt: Uuid, shown: &Decision) -> Accepted {
    let mut headers = HeaderMap::new();
    shown.write_headers(&mut headers);
    (StatusCode::ACCEPTED, headers, Json(BallotAccepted { receipt, status: "pending" }))
}

async fn release(state: &ApiState, election_id: i64, citizen_id: i64, intent: &str) {
    let keys = &state.deps.keys;
    if let Err(e) = voters::release(&state.deps.redis, keys, election_id, citizen_id, intent).await {
        tracing::warn!(error = %e, election_id, "a reservation stays in Redis; the voter may retry with the same key");
    }
}
