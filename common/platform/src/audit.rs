//! Writing the audit log: the one way any role or command records an
//! administrative action. Each entry is written on the caller's connection,
//! so it joins the transaction that makes the change: both land, or
//! neither. The log is append-only in Postgres itself (triggers refuse
//! UPDATE, DELETE and TRUNCATE).

use anyhow::Context;
use serde_json::Value;
use sqlx::PgConnection;

/// Who acted, as the `actor` column spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An administrator over the API.
    Citizen(i64),
    /// An operator at the command line, by their OS user name.
    Operator(String),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Citizen(id) => write!(f, "citizen:{id}"),
            Actor::Operator(user) => write!(f, "cli:{user}"),
        }
    }
}

/// Every kind of action the log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    ElectionCreate,
    ElectionUpdate,
    ElectionClose,
    ElectionCancel,
    RunnerAdd,
    RunnerRemove,
    AdminGrant,
    AdminRevoke,
    EnrollmentIssue,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ElectionCreate => "election.create",
            Action::ElectionUpdate => "election.update",
            Action::ElectionClose => "election.close",
            Action::ElectionCancel => "election.cancel",
            Action::RunnerAdd => "runner.add",
            Action::RunnerRemove => "runner.remove",
            Action::AdminGrant => "admin.grant",
            Action::AdminRevoke => "admin.revoke",
            Action::EnrollmentIssue => "enrollment.issue",
        }
    }
}

/// One entry: what was done, to which election if any, and the state
/// before and after as JSON.
#[derive(Clone, Debug)]
pub struct Entry {
    pub actor: Actor,
    pub action: Action,
    pub election_id: Option<i64>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

pub async fn record(conn: &mut PgConnection, entry: Entry) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, election_id, before, after) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(entry.actor.to_string())
    .bind(entry.action.as_str())
    .bind(entry.election_id)
    .bind(entry.before)
    .bind(entry.after)
    .execute(conn)
    .await
    .with_context(|| format!("recording {} in the audit log", entry.action.as_str()))?;
    Ok(())
}
