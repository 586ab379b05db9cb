//! Checking an election's settings, field by field, so the admin gets
//! every problem in one 422.

use serde::Deserialize;
use sqlx::PgPool;
use tally_domain::election::Restriction;
use tally_domain::visibility::Visibility;
use tally_http::error::FieldError;
use tally_platform::config::WorkerSettings;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "General election", "start_at": "2027-05-02T07:00:00Z", "end_at": "2027-05-02T19:00:00Z", "vote_restriction": "@everyone", "min_age": 18, "results_visibility": "live", "anonymity_set": 20}))]
pub struct ElectionInput {
    pub name: Option<String>,
    pub start_at: Option<String>,
    pub end_at: Option<String>,
    pub vote_restriction: Option<String>,
    pub min_age: Option<i64>,
    pub results_visibility: Option<String>,
    /// K: ballots are committed in groups of more than K, and the last K
    /// wait for the end (at least 2; default `workers.anonymity_set`).
    pub anonymity_set: Option<i64>,
}

/// An election's settings after validation.
#[derive(Clone, Debug)]
pub struct Draft {
    pub name: String,
    pub start_at: OffsetDateTime,
    pub end_at: OffsetDateTime,
    pub restriction: Restriction,
    pub min_age: i16,
    pub visibility: Visibility,
    pub anonymity_set: i32,
}

fn problem(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// Applies `input` over `base` (nothing, for a new election) and checks the
/// result. The start must lie in the future whenever it is set.
pub async fn validate(
    db: &PgPool,
    workers: &WorkerSettings,
    base: Option<(i64, &Draft)>,
    input: ElectionInput,
    now: OffsetDateTime,
) -> anyhow::Result<Result<Draft, Vec<FieldError>>> {
    let (id, base) = (base.map(|(id, _)| id), base.map(|(_, b)| b));
    let mut errors = Vec::new();
    let name = match (input.name, base) {
        (Some(n), _) => {
            let trimmed = n.trim().to_string();
            if !(1..=200).contains(&trimmed.chars().count()) {
                errors.push(problem("name", "must be 1 to 200 characters"));
            }
            trimmed
        }
        (None, Some(b)) => b.name.clone(),
        (None, None) => {
            errors.push(problem("name", "is required"));
            String::new()
        }
    };
    let mut time_field = |field: &str, raw: Option<String>, old: Option<OffsetDateTime>| match (raw, old) {
        (Some(raw), _) => match OffsetDateTime::parse(&raw, &Rfc3339) {
            Ok(t) => Some((t, true)),
            Err(_) => {
                errors.push(problem(field, "must be an RFC 3339 date-time such as 2026-06-01T08:00:00Z"));
                None
            }
        },
        (None, Some(old)) => Some((old, false)),
        (None, None) => {
            errors.push(problem(field, "is required"));
            None
        }
    };
    let start = time_field("start_at", input.start_at, base.map(|b| b.start_at));
    let end = time_field("end_at", input.end_at, base.map(|b| b.end_at));
    if let Some((start_at, changed)) = start
        && changed
        && start_at <= now
    {
        errors.push(problem("start_at", "must be in the future"));
    }
    if let (Some((start_at, _)), Some((end_at, _))) = (start, end)
        && end_at <= start_at
    {
        errors.push(problem("end_at", "must be after start_at"));
    }
    let restriction = match (input.vote_restriction, base) {
        (Some(raw), _) => match raw.parse::<Restriction>() {
            Ok(r) => Some(r),
            Err(why) => {
                errors.push(problem("vote_restriction", why));
                None
            }
        },
        (None, Some(b)) => Some(b.restriction.clone()),
        (None, None) => {
            errors.push(problem("vote_restriction", "is required"));
            None
        }
    };
    if let Some(Restriction::Provincial(province)) = &restriction {
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM citizens WHERE province = $1)")
            .bind(province)
            .fetch_one(db)
            .await?;
        if !known {
            errors
                .push(problem("vote_restriction", format!("no citizen of the registry lives in {province}")));
        }
    }
    let min_age = match input.min_age {
        Some(age) if (0..=150).contains(&age) => age as i16,
        Some(_) => {
            errors.push(problem("min_age", "must be between 0 and 150"));
            0
        }
        None => base.map_or(18, |b| b.min_age),
    };
    let visibility = match (input.results_visibility, base) {
        (Some(raw), _) => {
            raw.parse::<Visibility>().map_err(|why| errors.push(problem("results_visibility", why))).ok()
        }
        (None, Some(b)) => Some(b.visibility),
        (None, None) => Some(Visibility::Live),
    };
    let anonymity_set = match input.anonymity_set {
        Some(k) if (2..=10_000).contains(&k) => k as i32,
        Some(_) => {
            errors.push(problem("anonymity_set", "must be between 2 and 10000"));
            2
        }
        None => base.map_or(workers.anonymity_set, |b| b.anonymity_set),
    };
    // Workers hold up to 2K+1 ballots of every election still to end; the
    // consumer must be allowed that many un-acked messages at once.
    let others: Vec<i32> = sqlx::query_scalar(
        "SELECT anonymity_set FROM elections
         WHERE cancelled_at IS NULL AND closed_at IS NULL AND end_at > $1
           AND election_id IS DISTINCT FROM $2",
    )
    .bind(now)
    .bind(id)
    .fetch_all(db)
    .await?;
    if !workers.can_hold(others.into_iter().chain([anonymity_set])) {
        errors.push(problem(
            "anonymity_set",
            "workers cannot hold this many ballots for every election still to end; raise workers.max_ack_pending or lower K",
        ));
    }
    Ok(match (errors.is_empty(), start, end, restriction, visibility) {
        (true, Some((start_at, _)), Some((end_at, _)), Some(restriction), Some(visibility)) => {
            Ok(Draft { name, start_at, end_at, restriction, min_age, visibility, anonymity_set })
        }
        _ => Err(errors),
    })
}
