//! The rules a ballot must meet before anything is asked of Redis or the
//! queue: the election is open, the voter may vote in it, the selections
//! are valid. Pure: the same inputs give the same answer, and nothing is
//! read, written or counted here.

use axum::http::StatusCode;
use tally_domain::ballot::{SelectionError, check_selections};
use tally_domain::election::{Election, Ineligible, VoterFacts, eligibility};
use tally_domain::lifecycle::Status;
use tally_http::ApiError;
use tally_http::auth::AuthUser;
use tally_http::error::Counted;
use time::OffsetDateTime;

const MAX_SELECTIONS: usize = 64;

/// Why a ballot is not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotOpen(Status),
    NotEligible(Ineligible),
    TooManySelections,
    InvalidSelection(SelectionError),
}

#[tracing::instrument(level = "debug", skip_all, fields(election_id = election.id))]
pub fn admit(
    election: &Election,
    voter: &AuthUser,
    selections: &[i64],
    now: OffsetDateTime,
) -> Result<(), Refusal> {
    let status = election.status(now);
    if status != Status::Open {
        return Err(Refusal::NotOpen(status));
    }
    let facts = VoterFacts { province: &voter.province, dob: voter.dob };
    eligibility(&election.schedule, &election.restriction, election.min_age, &facts, now)
        .map_err(Refusal::NotEligible)?;
    if selections.len() > MAX_SELECTIONS {
        return Err(Refusal::TooManySelections);
    }
    check_selections(selections, &election.runners).map_err(Refusal::InvalidSelection)
}

/// The answer to a refusal, counted in `tally_votes_refused_total`.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::NotOpen(status) => refused("election_not_open")
                .with_detail(format!("this election is {}, not open", status.as_str())),
            Refusal::NotEligible(reason) => ApiError::forbidden("not_eligible")
                .with_reason(reason.as_str())
                .with_detail(reason.as_str())
                .counted(Counted::BallotRefused(reason.as_str())),
            Refusal::TooManySelections => refused("invalid_selection").with_detail("too many selections"),
            Refusal::InvalidSelection(why) => refused("invalid_selection").with_detail(why.to_string()),
        }
    }
}

/// A refusal under `code`, to be counted by the response layer.
pub(super) fn refused(code: &'static str) -> ApiError {
    let error = match code {
        "invalid_selection" => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code),
        _ => ApiError::conflict(code),
    };
    error.counted(Counted::BallotRefused(code))
}

/// This voter has a ballot already: voted, or reserved by another one.
pub(super) fn second_ballot() -> ApiError {
    refused("already_voted").with_detail("one ballot per citizen per election")
}
