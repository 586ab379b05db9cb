//! The JSON shape of an election.

use serde::Serialize;
use tally_domain::election::Election;
use time::OffsetDateTime;

#[derive(Serialize, Clone, Debug, utoipa::ToSchema)]
pub struct ElectionView {
    pub election_id: i64,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub end_at: OffsetDateTime,
    pub vote_restriction: String,
    pub min_age: i16,
    #[schema(example = "live")]
    pub results_visibility: &'static str,
    /// Results move in steps of more than this many ballots.
    #[schema(example = 20)]
    pub anonymity_set: i32,
    #[schema(example = "open")]
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub cancelled_at: Option<OffsetDateTime>,
    pub posts: Vec<PostView>,
}

#[derive(Serialize, Clone, Debug, utoipa::ToSchema)]
pub struct PostView {
    pub post: String,
    pub runners: Vec<RunnerView>,
}

#[derive(Serialize, Clone, Debug, utoipa::ToSchema)]
pub struct RunnerView {
    pub citizen_id: i64,
    pub full_name: String,
}

impl ElectionView {
    pub fn of(election: &Election, now: OffsetDateTime) -> ElectionView {
        ElectionView {
            election_id: election.id,
            name: election.name.clone(),
            start_at: election.schedule.start_at,
            end_at: election.schedule.end_at,
            vote_restriction: election.restriction.to_string(),
            min_age: election.min_age,
            results_visibility: election.visibility.as_str(),
            anonymity_set: election.anonymity_set,
            status: election.status(now).as_str(),
            closed_at: election.schedule.closed_at,
            cancelled_at: election.schedule.cancelled_at,
            posts: election
                .posts()
                .into_iter()
                .map(|(post, runners)| PostView {
                    post: post.to_string(),
                    runners: runners
                        .into_iter()
                        .map(|r| RunnerView { citizen_id: r.citizen_id, full_name: r.full_name.clone() })
                        .collect(),
                })
                .collect(),
        }
    }

    /// For the audit log's before/after columns.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
