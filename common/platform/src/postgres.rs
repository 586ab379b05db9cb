//! Postgres: the pool, which keeps connections to the primary only, the
//! embedded migrations, and creating the database itself when it is
//! missing (a fresh machine has none).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres};

use crate::config::DatabaseSettings;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

pub fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    crate::tls::install_crypto_provider();
    let options = PgConnectOptions::from_str(settings.url.expose())
        .map_err(|e| anyhow::anyhow!("invalid setting `database.url` (env TALLY_DATABASE__URL): {e}"))?;
    // Statements are logged by our own spans; sqlx's would include values.
    Ok(options.disable_statement_logging())
}

/// A pool that connects on first use and reconnects by itself, so a process
/// can start (and report not-ready) while Postgres is still down. A new
/// connection that lands on a read-only node (a standby, while the load
/// balancer has not yet found the new primary) is refused, and the pool
/// tries again until `acquire_timeout_ms`.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .after_connect(|conn, _| Box::pin(refuse_read_only(conn)))
        .connect_lazy_with(connect_options(settings)?))
}

async fn refuse_read_only(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let read_only: String = sqlx::query_scalar("SHOW transaction_read_only").fetch_one(conn).await?;
    if read_only == "on" {
        return Err(sqlx::Error::Configuration(
            "database.url leads to a read-only Postgres (a standby?); Tally writes to the primary".into(),
        ));
    }
    Ok(())
}

/// SQLSTATE 25006, "read-only transaction": the node answering is not
/// the primary, or no longer is (a failover demoted it while this
/// connection was open).
pub fn is_read_only(error: &anyhow::Error) -> bool {
    let mut errors = error.chain().filter_map(|e| e.downcast_ref::<sqlx::Error>());
    errors.any(|e| e.as_database_error().and_then(|e| e.code()).as_deref() == Some("25006"))
}

/// Passes a write's outcome through; if it failed because the node is
/// read-only, `conn` is closed instead of pooled. Retried on it, the write
/// would fail for ever; the next acquire connects afresh, through the
/// load balancer, to the primary.
pub fn evict_if_read_only<T>(
    conn: &mut PoolConnection<Postgres>,
    written: anyhow::Result<T>,
) -> anyhow::Result<T> {
    if let Err(error) = &written
        && is_read_only(error)
    {
        tracing::warn!("Postgres answered read-only (SQLSTATE 25006); closing that connection");
        conn.close_on_drop();
    }
    written
}

/// Creates the configured database if it does not exist yet.
pub async fn create_database_if_missing(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await.context("connecting to Postgres")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .context("looking up the database")?;
    if !exists {
        // Identifiers cannot be bound parameters; the name is quoted.
        let statement = format!("CREATE DATABASE {}", quote_identifier(&name));
        match sqlx::raw_sql(&statement).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and now.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("creating the database"),
        }
    }
    admin.close().await.ok();
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// `"name"` with embedded quotes doubled, for the few statements (CREATE and
/// DROP DATABASE) that take an identifier rather than a parameter.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The name of the constraint a database error violated, if any.
pub fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(e) => e.constraint(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::quote_identifier;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("tally"), "\"tally\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
