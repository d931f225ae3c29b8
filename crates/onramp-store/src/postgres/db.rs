//! The connection pool, how PostgreSQL's errors become [`StoreError`]s, and
//! the numbered schema steps.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use onramp_core::ports::StoreError;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::record::missing_service;

/// How long a caller waits for a connection, for a new connection to be
/// made, and for a statement: a database that does not answer is
/// `Unavailable` (a retryable 503) within these, never a hang.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT_MS: u32 = 10_000;
/// How long a schema step (or the wait for another node's) may take.
const MIGRATION_TIMEOUT_S: u32 = 300;

/// One schema step: the version it brings the database to, and its SQL.
pub type Step = (i32, &'static str);

const STEPS: [Step; 3] = [
    (1, include_str!("schema_v1.sql")),
    (2, include_str!("schema_v2.sql")),
    (3, include_str!("schema_v3.sql")),
];

/// The advisory lock nodes take to migrate one at a time ("onramp" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f6e_7261_6d70;

/// Tuning of the PostgreSQL store.
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// Most connections this node holds open.
    pub max_connections: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
        }
    }
}

/// A URL with its password (if any) replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // A key=value string: hide the value of `password`.
        return url
            .split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// A pool of connections to `url` (a `postgres://` URL or a libpq key=value
/// string), each with durable commits and a statement timeout.
pub(super) fn pool(url: &str, options: PgOptions) -> Result<Pool, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        StoreError::Unavailable(format!(
            "the PostgreSQL URL {} is not valid: {e}",
            redact(url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("onramp");
    }
    // Durable before a device hears `assigned`, whatever the server's default.
    let mut session = format!(
        "-c synchronous_commit=on -c statement_timeout={STATEMENT_TIMEOUT_MS} -c TimeZone=UTC"
    );
    if let Some(given) = config.get_options() {
        session = format!("{given} {session}");
    }
    config.options(&session);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.max_connections.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT * 2))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))
}

/// A connection from the pool, or `Unavailable` within the wait timeout.
pub(super) async fn connection(pool: &Pool) -> Result<Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: no connection: {e}")))
}

/// A database error that is no caller's fault: the database is down, busy
/// or refused the statement.
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!(
            "PostgreSQL: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => StoreError::Unavailable(format!("PostgreSQL: {e}")),
    }
}

/// For a write under `service`: a row of a missing service is `NotFound`.
pub(super) fn pg_error_in(service: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| {
        if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
            missing_service(service)
        } else {
            pg_error(e)
        }
    }
}

/// Applies, in order, every step the database lacks. Each step runs in a
/// transaction that first takes an advisory lock and reads the version
/// again, so nodes that start together apply each step once; a failing
/// step leaves the database at the last whole step.
pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    migrate_steps(pool, &STEPS).await
}

pub(super) async fn migrate_steps(pool: &Pool, steps: &[Step]) -> Result<(), StoreError> {
    let mut conn = connection(pool).await?;
    for &(to, sql) in steps {
        let tx = conn.transaction().await.map_err(pg_error)?;
        // Another node may hold the lock through a long step: wait for it
        // longer than a statement may take.
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = '{MIGRATION_TIMEOUT_S}s';
             SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version     INTEGER PRIMARY KEY,
                 applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(pg_error)?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg_error)?
            .try_get(0)
            .map_err(pg_error)?;
        if current >= to {
            tx.commit().await.map_err(pg_error)?;
            continue;
        }
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "PostgreSQL schema step {to} failed: {}",
                pg_error(e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&to],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redact("postgres://onramp:s3cret@db.example.net:5432/onramp?sslmode=disable"),
            "postgres://onramp:***@db.example.net:5432/onramp?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(redact("host=/run/postgresql"), "host=/run/postgresql");
        assert_eq!(
            redact("host=db user=onramp password=s3cret"),
            "host=db user=onramp password=***"
        );
    }
}
