//! Diagnostic entries: appended in batches, read newest first, pruned by
//! age and by count per service.

use async_trait::async_trait;
use onramp_core::ports::{
    DiagnosticEntry, DiagnosticsLog, DiagnosticsQuery, Retention, StoreError, oldest_kept,
};
use onramp_model::UtcTime;
use rusqlite::{Connection, params};

use super::SqliteStore;
use super::db::sql_error;
use super::operations::nanos;
use super::rows::query_all;
use crate::diagnostic_rows::{DiagnosticRow, QueryBounds};

#[async_trait]
impl DiagnosticsLog for SqliteStore {
    async fn add_diagnostics(&self, entries: &[DiagnosticEntry]) -> Result<(), StoreError> {
        let rows = DiagnosticRow::all(entries)?;
        self.db.write(move |conn| insert(conn, &rows)).await
    }

    async fn diagnostics(
        &self,
        service: &str,
        query: &DiagnosticsQuery,
    ) -> Result<Vec<DiagnosticEntry>, StoreError> {
        let (service, query) = (service.to_owned(), query.clone());
        self.db
            .read(move |conn| select(conn, &service, &query))
            .await
    }

    async fn prune_diagnostics(
        &self,
        retention: Retention,
        now: UtcTime,
    ) -> Result<u64, StoreError> {
        self.db.write(move |conn| prune(conn, retention, now)).await
    }
}

fn insert(conn: &Connection, rows: &[DiagnosticRow]) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO diagnostics (service, id_key, time, outcome, doc)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM services WHERE name = ?1)",
        )
        .map_err(sql_error)?;
    for row in rows {
        statement
            .execute(params![
                row.service,
                row.id_key,
                row.time,
                row.outcome,
                row.doc
            ])
            .map_err(sql_error)?;
    }
    Ok(())
}

fn select(
    conn: &Connection,
    service: &str,
    query: &DiagnosticsQuery,
) -> Result<Vec<DiagnosticEntry>, StoreError> {
    let bounds = QueryBounds::of(query);
    let docs: Vec<String> = match &query.registration {
        Some(key) => query_all(
            conn,
            "SELECT doc FROM diagnostics
             WHERE service = ?1 AND id_key = ?2 AND time >= ?3 AND (?4 IS NULL OR outcome = ?4)
             ORDER BY time DESC, id DESC LIMIT ?5",
            params![
                service,
                key.as_str(),
                bounds.since,
                bounds.outcome,
                bounds.top
            ],
            |r| r.get(0),
        )?,
        None => query_all(
            conn,
            "SELECT doc FROM diagnostics
             WHERE service = ?1 AND time >= ?2 AND (?3 IS NULL OR outcome = ?3)
             ORDER BY time DESC, id DESC LIMIT ?4",
            params![service, bounds.since, bounds.outcome, bounds.top],
            |r| r.get(0),
        )?,
    };
    docs.iter().map(|doc| DiagnosticRow::entry(doc)).collect()
}

/// Per service, so that each delete walks the service's time index.
fn prune(conn: &Connection, retention: Retention, now: UtcTime) -> Result<u64, StoreError> {
    let oldest = nanos(oldest_kept(retention, now));
    let keep = i64::try_from(retention.max_entries_per_service).unwrap_or(i64::MAX);
    let services: Vec<String> = query_all(conn, "SELECT name FROM services", [], |r| r.get(0))?;
    let mut removed = 0;
    for service in services {
        removed += conn
            .prepare_cached("DELETE FROM diagnostics WHERE service = ?1 AND time < ?2")
            .and_then(|mut s| s.execute(params![service, oldest]))
            .map_err(sql_error)?;
        removed += conn
            .prepare_cached(
                "DELETE FROM diagnostics WHERE service = ?1 AND id IN (
                    SELECT id FROM diagnostics WHERE service = ?1
                    ORDER BY time DESC, id DESC LIMIT -1 OFFSET ?2)",
            )
            .and_then(|mut s| s.execute(params![service, keep]))
            .map_err(sql_error)?;
    }
    Ok(removed as u64)
}
