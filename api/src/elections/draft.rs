//! Checking an election's settings, field by field, so the admin gets
//! every problem in one 422.

use serde::Deserialize;
use sqlx::PgPool;
use tally_common::election::{Restriction, Visibility};
use tally_common::error::FieldError;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "General election", "start_at": "2027-05-02T07:00:00Z", "end_at": "2027-05-02T19:00:00Z", "vote_restriction": "@everyone", "min_age": 18, "results_visibility": "live"}))]
pub struct ElectionInput {
    pub name: Option<String>,
    pub start_at: Option<String>,
    pub end_at: Option<String>,
    pub vote_restriction: Option<String>,
    pub min_age: Option<i64>,
    pub results_visibility: Option<String>,
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
}

fn problem(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// Applies `input` over `base` (nothing, for a new election) and checks the
/// result. The start must lie in the future whenever it is set.
pub async fn validate(
    db: &PgPool,
    base: Option<&Draft>,
    input: ElectionInput,
    now: OffsetDateTime,
) -> anyhow::Result<Result<Draft, Vec<FieldError>>> {
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
    Ok(match (errors.is_empty(), start, end, restriction, visibility) {
        (true, Some((start_at, _)), Some((end_at, _)), Some(restriction), Some(visibility)) => {
            Ok(Draft { name, start_at, end_at, restriction, min_age, visibility })
        }
        _ => Err(errors),
    })
}
