//! `tally admin grant|revoke`: set a user's role. There are no built-in
//! admin accounts; an operator with database access makes the first one.

use anyhow::Context;
use tally_domain::citizen::Role;
use tally_platform::Settings;
use tally_platform::audit::{self, Action, Actor};
use uuid::Uuid;

/// Who ran the command, for the audit log.
pub fn operator() -> Actor {
    let user =
        std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    Actor::Operator(user)
}

pub async fn set_role(settings: &Settings, citizen_id: i64, role: Role) -> anyhow::Result<()> {
    let pool = tally_platform::postgres::pool(&settings.database)?;
    let actor = operator();
    let mut tx = pool.begin().await.context("connecting to Postgres")?;
    let before: Option<String> =
        sqlx::query_scalar("SELECT role FROM users WHERE citizen_id = $1 FOR UPDATE")
            .bind(citizen_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(before) = before else {
        anyhow::bail!("citizen {citizen_id} has no account; they must sign up first");
    };
    sqlx::query("UPDATE users SET role = $2, updated_at = now() WHERE citizen_id = $1")
        .bind(citizen_id)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
    let entry = audit::Entry {
        actor: actor.clone(),
        action: if role == Role::Admin { Action::AdminGrant } else { Action::AdminRevoke },
        election_id: None,
        before: Some(serde_json::json!({"citizen_id": citizen_id, "role": before})),
        after: Some(serde_json::json!({"citizen_id": citizen_id, "role": role.as_str()})),
    };
    audit::record(&mut tx, entry).await?;
    // Tokens carry the role; ending the sessions makes a revocation take
    // effect now rather than when the tokens expire.
    let ended: Vec<Uuid> = if role == Role::Voter {
        sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = now() WHERE citizen_id = $1 AND revoked_at IS NULL RETURNING session_id",
        )
        .bind(citizen_id)
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    tx.commit().await.context("saving the role")?;
    if !ended.is_empty() {
        let verifier = tally_http::auth::Verifier::new(
            std::sync::Arc::new(tally_platform::auth::TokenKeys::from_settings(&settings.auth)),
            tally_platform::redis::connect(&settings.redis).await?,
            tally_platform::redis::Keys::new(&settings.redis.key_prefix),
            pool.clone(),
        );
        verifier.revoke(&ended).await?;
    }
    // Whose role changed is in the audit log, not in the process log.
    tracing::info!(operator = %actor, role = role.as_str(), sessions_ended = ended.len(), "role changed");
    Ok(())
}
