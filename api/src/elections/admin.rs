//! Administrators create and edit elections, manage runners, and close or
//! cancel. Every action is written to the audit log in the same transaction
//! as the change itself, then announced so every replica refreshes.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use sqlx::{Postgres, Transaction};
use tally_domain::election::Election;
use tally_domain::lifecycle::Status;
use tally_http::auth::AdminUser;
use tally_http::error::FieldError;
use tally_http::{ApiError, Json, Path};
use tally_platform::audit::{self, Action, Actor};
use tally_platform::elections::{self, NewElection};
use tally_platform::postgres::violated_constraint;
use time::OffsetDateTime;

use super::draft::{Draft, ElectionInput, validate};
use super::not_found;
use super::view::ElectionView;
use crate::ApiState;
use crate::openapi::Problem;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerInput {
    pub citizen_id: i64,
    pub post: String,
}

#[utoipa::path(post, operation_id = "create_election", path = "/v1/elections", tag = "admin", security(("bearer" = [])), request_body = ElectionInput,
    responses((status = 201, description = "Created", body = ElectionView), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 403, description = "forbidden: not an administrator", content_type = "application/problem+json", body = Problem), (status = 422, description = "validation_failed, with a list of fields", content_type = "application/problem+json", body = Problem)))]
pub async fn create(
    State(state): State<ApiState>,
    AdminUser(admin): AdminUser,
    Json(input): Json<ElectionInput>,
) -> Result<(StatusCode, Json<ElectionView>), ApiError> {
    let now = OffsetDateTime::now_utc();
    let workers = &state.deps.settings.workers;
    let draft = validate(&state.deps.db, workers, None, input, now).await?.map_err(ApiError::validation)?;
    let mut tx = state.deps.db.begin().await?;
    let new = NewElection {
        name: draft.name,
        start_at: draft.start_at,
        end_at: draft.end_at,
        restriction: draft.restriction,
        min_age: draft.min_age,
        visibility: draft.visibility,
        anonymity_set: Some(draft.anonymity_set),
        runners: Vec::new(),
    };
    let id = elections::create(&mut *tx, &new).await?;
    let after = commit_audited(&state, tx, admin.citizen_id, Action::ElectionCreate, id, None).await?;
    Ok((StatusCode::CREATED, Json(after)))
}

#[utoipa::path(patch, operation_id = "update_election", path = "/v1/elections/{id}", tag = "admin", security(("bearer" = [])), request_body = ElectionInput,
    params(("id" = i64, Path, description = "Election id")),
    responses((status = 200, description = "Updated", body = ElectionView), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 403, description = "forbidden: not an administrator", content_type = "application/problem+json", body = Problem), (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem), (status = 409, description = "election_started", content_type = "application/problem+json", body = Problem), (status = 422, description = "validation_failed", content_type = "application/problem+json", body = Problem)))]
pub async fn update(
    State(state): State<ApiState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<i64>,
    Json(input): Json<ElectionInput>,
) -> Result<Json<ElectionView>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut tx = state.deps.db.begin().await?;
    let before = lock_scheduled(&mut tx, id, now).await?;
    let base = Draft {
        name: before.name.clone(),
        start_at: before.schedule.start_at,
        end_at: before.schedule.end_at,
        restriction: before.restriction.clone(),
        min_age: before.min_age,
        visibility: before.visibility,
        anonymity_set: before.anonymity_set,
    };
    let workers = &state.deps.settings.workers;
    let draft = validate(&state.deps.db, workers, Some((id, &base)), input, now)
        .await?
        .map_err(ApiError::validation)?;
    sqlx::query(
        "UPDATE elections SET name = $2, start_at = $3, end_at = $4, vote_restriction = $5, min_age = $6,
                results_visibility = $7, anonymity_set = $8, updated_at = now()
         WHERE election_id = $1",
    )
    .bind(id)
    .bind(&draft.name)
    .bind(draft.start_at)
    .bind(draft.end_at)
    .bind(draft.restriction.to_string())
    .bind(draft.min_age)
    .bind(draft.visibility.as_str())
    .bind(draft.anonymity_set)
    .execute(&mut *tx)
    .await?;
    let before = ElectionView::of(&before, now);
    Ok(Json(commit_audited(&state, tx, admin.citizen_id, Action::ElectionUpdate, id, Some(before)).await?))
}

#[utoipa::path(post, path = "/v1/elections/{id}/runners", tag = "admin", security(("bearer" = [])), request_body = RunnerInput,
    params(("id" = i64, Path, description = "Election id")),
    responses((status = 201, description = "Added", body = ElectionView), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 403, description = "forbidden: not an administrator", content_type = "application/problem+json", body = Problem), (status = 404, description = "election_not_found or citizen_not_found", content_type = "application/problem+json", body = Problem), (status = 409, description = "runner_exists or election_started", content_type = "application/problem+json", body = Problem)))]
pub async fn add_runner(
    State(state): State<ApiState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<i64>,
    Json(input): Json<RunnerInput>,
) -> Result<(StatusCode, Json<ElectionView>), ApiError> {
    let post = input.post.trim().to_string();
    if !(1..=100).contains(&post.chars().count()) {
        return Err(ApiError::validation(vec![FieldError {
            field: "post".into(),
            message: "must be 1 to 100 characters".into(),
        }]));
    }
    let now = OffsetDateTime::now_utc();
    let mut tx = state.deps.db.begin().await?;
    let before = lock_scheduled(&mut tx, id, now).await?;
    let runner = elections::NewRunner { citizen_id: input.citizen_id, post };
    let inserted = elections::add_runner(&mut tx, id, &runner).await;
    if let Err(e) = inserted {
        return Err(match violated_constraint(&e) {
            Some("runners_pkey") => {
                ApiError::conflict("runner_exists").with_detail("this citizen already runs in this election")
            }
            Some("runners_citizen_fkey") => ApiError::not_found("citizen_not_found")
                .with_detail("no citizen with this id in the national registry"),
            _ => ApiError::internal(e),
        });
    }
    let before = ElectionView::of(&before, now);
    let after = commit_audited(&state, tx, admin.citizen_id, Action::RunnerAdd, id, Some(before)).await?;
    Ok((StatusCode::CREATED, Json(after)))
}

#[utoipa::path(delete, path = "/v1/elections/{id}/runners/{citizen_id}", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Election id"), ("citizen_id" = i64, Path, description = "The runner's citizen id")),
    responses((status = 200, description = "Removed", body = ElectionView), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 403, description = "forbidden: not an administrator", content_type = "application/problem+json", body = Problem), (status = 404, description = "election_not_found or runner_not_found", content_type = "application/problem+json", body = Problem), (status = 409, description = "election_started", content_type = "application/problem+json", body = Problem)))]
pub async fn remove_runner(
    State(state): State<ApiState>,
    AdminUser(admin): AdminUser,
    Path((id, citizen_id)): Path<(i64, i64)>,
) -> Result<Json<ElectionView>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut tx = state.deps.db.begin().await?;
    let before = lock_scheduled(&mut tx, id, now).await?;
    let removed = sqlx::query("DELETE FROM runners WHERE election_id = $1 AND citizen_id = $2")
        .bind(id)
        .bind(citizen_id)
        .execute(&mut *tx)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(
            ApiError::not_found("runner_not_found").with_detail("this citizen does not run in this election")
        );
    }
    let before = ElectionView::of(&before, now);
    Ok(Json(commit_audited(&state, tx, admin.citizen_id, Action::RunnerRemove, id, Some(before)).await?))
}

#[utoipa::path(post, operation_id = "close_election", path = "/v1/elections/{id}/close", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Election id")),
    responses((status = 200, description = "Voting has ended", body = ElectionView), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 403, description = "forbidden: not an administrator", content_type = "application/problem+json", body = Problem), (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem), (status = 409, description = "election_not_open", content_type = "application/problem+json", body = Problem)))]
pub async fn close(
    State(state): State<ApiState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<i64>,
) -> Result<Json<ElectionView>, ApiError> {
    end(&state, admin.citizen_id, id, Ending::Close).await
}

#[utoipa::path(post, operation_id = "cancel_election", path = "/v1/elections/{id}/cancel", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Election id")),
    responses((status = 200, description = "Cancelled", body = ElectionView), (status = 401, description = "not signed in", content_type = "application/problem+json", body = Problem), (status = 403, description = "forbidden: not an administrator", content_type = "application/problem+json", body = Problem), (status = 404, description = "election_not_found", content_type = "application/problem+json", body = Problem), (status = 409, description = "election_ended", content_type = "application/problem+json", body = Problem)))]
pub async fn cancel(
    State(state): State<ApiState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<i64>,
) -> Result<Json<ElectionView>, ApiError> {
    end(&state, admin.citizen_id, id, Ending::Cancel).await
}

/// The two ways an admin ends an election early.
#[derive(Clone, Copy)]
enum Ending {
    /// Voting stops now; what was accepted so far counts.
    Close,
    /// The election is void.
    Cancel,
}

impl Ending {
    fn check(self, status: Status) -> Result<(), ApiError> {
        match (self, status) {
            (Ending::Close, Status::Open) | (Ending::Cancel, Status::Scheduled | Status::Open) => Ok(()),
            (Ending::Close, status) => Err(ApiError::conflict("election_not_open").with_detail(format!(
                "only an open election can be closed; this one is {}",
                status.as_str()
            ))),
            (Ending::Cancel, status) => Err(ApiError::conflict("election_ended")
                .with_detail(format!("this election is already {}", status.as_str()))),
        }
    }

    fn statement(self) -> &'static str {
        match self {
            Ending::Close => "UPDATE elections SET closed_at = $2, updated_at = now() WHERE election_id = $1",
            Ending::Cancel => {
                "UPDATE elections SET cancelled_at = $2, updated_at = now() WHERE election_id = $1"
            }
        }
    }

    fn action(self) -> Action {
        match self {
            Ending::Close => Action::ElectionClose,
            Ending::Cancel => Action::ElectionCancel,
        }
    }
}

async fn end(state: &ApiState, actor: i64, id: i64, ending: Ending) -> Result<Json<ElectionView>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut tx = state.deps.db.begin().await?;
    let before = lock(&mut tx, id).await?;
    ending.check(before.status(now))?;
    sqlx::query(ending.statement()).bind(id).bind(now).execute(&mut *tx).await?;
    let before = ElectionView::of(&before, now);
    Ok(Json(commit_audited(state, tx, actor, ending.action(), id, Some(before)).await?))
}

/// Locks the election's row for this transaction and loads it through the
/// same connection (no second pooled connection while the lock is held).
async fn lock(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<Election, ApiError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT election_id FROM elections WHERE election_id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    exists.ok_or_else(not_found)?;
    elections::load_tx(tx, id).await?.ok_or_else(not_found)
}

/// Like `lock`, refusing an election that has already opened.
async fn lock_scheduled(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    now: OffsetDateTime,
) -> Result<Election, ApiError> {
    let election = lock(tx, id).await?;
    match election.status(now) {
        Status::Scheduled => Ok(election),
        status => Err(ApiError::conflict("election_started")
            .with_detail(format!("only a scheduled election can change; this one is {}", status.as_str()))),
    }
}

/// Records the action with the election as it now stands, commits, and
/// tells every replica to refresh its copy.
async fn commit_audited(
    state: &ApiState,
    mut tx: Transaction<'_, Postgres>,
    actor: i64,
    action: Action,
    id: i64,
    before: Option<ElectionView>,
) -> Result<ElectionView, ApiError> {
    let now = OffsetDateTime::now_utc();
    let after =
        elections::load_tx(&mut tx, id).await?.map(|e| ElectionView::of(&e, now)).ok_or_else(not_found)?;
    let entry = audit::Entry {
        actor: Actor::Citizen(actor),
        action,
        election_id: Some(id),
        before: before.map(|b| b.to_json()),
        after: Some(after.to_json()),
    };
    audit::record(&mut tx, entry).await?;
    tx.commit().await?;
    crate::catalog_sync::announce(state, id).await;
    Ok(after)
}
