//! `GET /v1/elections/{id}/results`: live counts from Redis while voting
//! is open (as the election's visibility allows), nothing from the end
//! until every accepted ballot is recorded, then the final counts from
//! Postgres.

use axum::extract::State;
use serde::Serialize;
use tally_domain::election::Election;
use tally_domain::lifecycle::Status;
use tally_http::{ApiError, Json, Path};
use tally_platform::elections;
use tally_platform::tallies;
use time::OffsetDateTime;

use super::find;
use crate::ApiState;
use crate::openapi::Problem;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Results {
    pub election_id: i64,
    pub status: &'static str,
    /// Absent while counts are hidden (it counts commits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Absent while the visibility hides it, and from the end until final.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turnout: Option<i64>,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub posts: Vec<PostResult>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PostResult {
    pub post: String,
    pub runners: Vec<RunnerResult>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunnerResult {
    pub citizen_id: i64,
    pub full_name: String,
    /// Absent while the visibility hides counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub votes: Option<i64>,
}

#[utoipa::path(get, operation_id = "get_results", path = "/v1/elections/{id}/results", tag = "elections", params(("id" = i64, Path, description = "Election id")),
    responses((status = 200, description = "Live counts while open, final counts once closed and recorded", body = Results), (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem)))]
pub async fn results(State(state): State<ApiState>, Path(id): Path<i64>) -> Result<Json<Results>, ApiError> {
    let election = find(&state, id).await?;
    let status = election.status(OffsetDateTime::now_utc());
    let ended = matches!(status, Status::Closed | Status::Cancelled);
    // Final only once the workers say so; the counts are read after that
    // mark, so they are the final ones.
    let recorded = if ended {
        elections::load(&state.deps.db, id).await.map_err(|e| ApiError::unavailable(e, 1))?
    } else {
        None
    };
    let (version, turnout, counts, is_final) = match recorded {
        Some(recorded) => {
            let votes = recorded.runners.iter().map(|r| (r.citizen_id, r.total_votes)).collect();
            let is_final = recorded.is_final(status);
            (recorded.tally_version, recorded.turnout, votes, is_final)
        }
        None => {
            let snapshot = tallies::read(&state.deps.redis, &state.deps.keys, id)
                .await
                .map_err(|e| ApiError::unavailable(e, 1))?;
            (snapshot.version, snapshot.turnout, snapshot.votes, false)
        }
    };
    let shown = election.visibility.shown(status, is_final);
    Ok(Json(Results {
        election_id: id,
        status: status.as_str(),
        version: shown.version.then_some(version),
        turnout: shown.turnout.then_some(turnout),
        is_final,
        posts: posts(&election, |runner| shown.votes.then(|| counts.get(&runner).copied().unwrap_or(0))),
    }))
}

fn posts(election: &Election, votes: impl Fn(i64) -> Option<i64>) -> Vec<PostResult> {
    election
        .posts()
        .into_iter()
        .map(|(post, runners)| PostResult {
            post: post.to_string(),
            runners: runners
                .into_iter()
                .map(|r| RunnerResult {
                    citizen_id: r.citizen_id,
                    full_name: r.full_name.clone(),
                    votes: votes(r.citizen_id),
                })
                .collect(),
        })
        .collect()
}
