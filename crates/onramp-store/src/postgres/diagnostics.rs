//! Diagnostic entries: a batch appended in one statement, read newest
//! first, pruned by age and by count per service.

use async_trait::async_trait;
use onramp_core::ports::{
    DiagnosticEntry, DiagnosticsLog, DiagnosticsQuery, Retention, StoreError, oldest_kept,
};
use onramp_model::UtcTime;

use super::PgStore;
use super::db::{connection, pg_error};
use super::rows::{col, execute, query};
use crate::diagnostic_rows::{DiagnosticRow, QueryBounds};
use crate::sqlite::operations::nanos;

#[async_trait]
impl DiagnosticsLog for PgStore {
    async fn add_diagnostics(&self, entries: &[DiagnosticEntry]) -> Result<(), StoreError> {
        let rows = DiagnosticRow::all(entries)?;
        let column = |f: fn(&DiagnosticRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
        let services = column(|r| r.service.clone());
        let keys = column(|r| r.id_key.clone());
        let outcomes = column(|r| r.outcome.to_owned());
        let docs = column(|r| r.doc.clone());
        let times: Vec<i64> = rows.iter().map(|r| r.time).collect();
        let conn = connection(&self.pool).await?;
        // In the batch's order (later IDs break ties of time); entries of a
        // service deleted meanwhile are left out.
        execute(
            &conn,
            "INSERT INTO diagnostics (service, id_key, time, outcome, doc)
             SELECT u.service, u.id_key, u.time, u.outcome, u.doc
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
                  WITH ORDINALITY AS u(service, id_key, time, outcome, doc, n)
             WHERE EXISTS (SELECT 1 FROM services s WHERE s.name = u.service)
             ORDER BY u.n",
            &[&services, &keys, &times, &outcomes, &docs],
        )
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn diagnostics(
        &self,
        service: &str,
        wanted: &DiagnosticsQuery,
    ) -> Result<Vec<DiagnosticEntry>, StoreError> {
        let bounds = QueryBounds::of(wanted);
        let conn = connection(&self.pool).await?;
        let rows = match &wanted.registration {
            Some(key) => {
                query(
                    &conn,
                    "SELECT doc FROM diagnostics
                     WHERE service = $1 AND id_key = $2 AND time >= $3
                       AND ($4::text IS NULL OR outcome = $4)
                     ORDER BY time DESC, id DESC LIMIT $5",
                    &[
                        &service,
                        &key.as_str(),
                        &bounds.since,
                        &bounds.outcome,
                        &bounds.top,
                    ],
                )
                .await?
            }
            None => {
                query(
                    &conn,
                    "SELECT doc FROM diagnostics
                     WHERE service = $1 AND time >= $2 AND ($3::text IS NULL OR outcome = $3)
                     ORDER BY time DESC, id DESC LIMIT $4",
                    &[&service, &bounds.since, &bounds.outcome, &bounds.top],
                )
                .await?
            }
        };
        rows.iter()
            .map(|row| DiagnosticRow::entry(&col::<String>(row, 0)?))
            .collect()
    }

    async fn prune_diagnostics(
        &self,
        retention: Retention,
        now: UtcTime,
    ) -> Result<u64, StoreError> {
        let oldest = nanos(oldest_kept(retention, now));
        let keep = i64::try_from(retention.max_entries_per_service).unwrap_or(i64::MAX);
        let conn = connection(&self.pool).await?;
        let services = query(&conn, "SELECT name FROM services", &[]).await?;
        let mut removed = 0;
        for row in &services {
            let service: String = col(row, 0)?;
            removed += execute(
                &conn,
                "DELETE FROM diagnostics WHERE service = $1 AND time < $2",
                &[&service, &oldest],
            )
            .await
            .map_err(pg_error)?;
            removed += execute(
                &conn,
                "DELETE FROM diagnostics WHERE id IN (
                    SELECT id FROM diagnostics WHERE service = $1
                    ORDER BY time DESC, id DESC OFFSET $2)",
                &[&service, &keep],
            )
            .await
            .map_err(pg_error)?;
        }
        Ok(removed)
    }
}
