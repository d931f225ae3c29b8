//! What the PostgreSQL tables share: prepared (and cached) statements, the
//! keyed `(service, key)` rows with an ETag, and the locked read a
//! conditional write starts with.

use deadpool_postgres::GenericClient;
use onramp_core::ports::{Precondition, StoreError, check_precondition};
use onramp_model::ETag;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use super::db::pg_error;
use crate::record::missing_service;

/// Parameters of a statement.
pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Every row `sql` selects (the statement is prepared once per connection).
pub(super) async fn query<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    query_raw(client, sql, params).await.map_err(pg_error)
}

/// [`query`], with PostgreSQL's error for the caller to read.
pub(super) async fn query_raw<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

/// The one row `sql` selects, if any.
pub(super) async fn query_opt<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query_opt(&statement, params).await.map_err(pg_error)
}

/// The row of `(service, key)` (`$1`, `$2`) that `sql` selects, if any,
/// made by `decode`.
pub(super) async fn read_keyed<C: GenericClient, T>(
    client: &C,
    sql: &str,
    (service, key): (&str, &str),
    decode: impl FnOnce(&Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let row = query_opt(client, sql, &[&service, &key]).await?;
    row.map(|r| decode(&r)).transpose()
}

/// Runs `sql`; how many rows it touched.
pub(super) async fn execute<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.execute(&statement, params).await
}

/// Column `i` of `row`.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(pg_error)
}

/// A table of rows kept under `(service, key)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Table {
    pub name: &'static str,
    /// The key column.
    pub key: &'static str,
    /// Whether rows carry an ETag (linked hubs do not: `*` or nothing).
    pub etag: bool,
}

impl Table {
    /// A table keyed by `key` whose rows carry an ETag.
    const fn tagged(name: &'static str, key: &'static str) -> Self {
        Self {
            name,
            key,
            etag: true,
        }
    }
}

pub(super) const ENROLLMENTS: Table = Table::tagged("enrollments", "id_key");
pub(super) const GROUPS: Table = Table::tagged("enrollment_groups", "id_key");
pub(super) const REGISTRATIONS: Table = Table::tagged("registrations", "id_key");
pub(super) const CA_CERTIFICATES: Table = Table::tagged("ca_certificates", "name_key");
pub(super) const LINKED_HUBS: Table = Table {
    etag: false,
    ..Table::tagged("linked_hubs", "name_key")
};
pub(super) const TPM_CHALLENGES: Table = Table::tagged("tpm_challenges", "id_key");

/// Which a write to a missing service is refused for first: the missing
/// service, or a condition the (then missing) record cannot meet. The
/// embedded store answers each kind one way; this one answers alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    ServiceFirst,
    ConditionFirst,
}

/// Inside a write's transaction: locks the row of `key` (and keeps the
/// service from going away), checks `condition` against its ETag, and
/// returns its document. Both reads go out together (one round trip).
pub(super) async fn lock_and_check<C: GenericClient>(
    tx: &C,
    table: Table,
    service: &str,
    key: &str,
    condition: &Precondition,
    what: &str,
    order: Order,
) -> Result<Option<String>, StoreError> {
    let etag = if table.etag { "etag" } else { "'*'" };
    let row_sql = format!(
        "SELECT {etag}, doc FROM {} WHERE service = $1 AND {} = $2 FOR UPDATE",
        table.name, table.key
    );
    let service_params: [&(dyn ToSql + Sync); 1] = [&service];
    let row_params: [&(dyn ToSql + Sync); 2] = [&service, &key];
    let (service_row, current) = tokio::try_join!(
        query_opt(
            tx,
            "SELECT 1 FROM services WHERE name = $1 FOR KEY SHARE",
            &service_params,
        ),
        query_opt(tx, &row_sql, &row_params),
    )?;
    if order == Order::ServiceFirst && service_row.is_none() {
        return Err(missing_service(service));
    }
    let (tag, doc) = match &current {
        Some(row) => (
            Some(ETag::from_raw(&col::<String>(row, 0)?)),
            Some(col::<String>(row, 1)?),
        ),
        None => (None, None),
    };
    check_precondition(tag.as_ref(), condition, what)?;
    if service_row.is_none() {
        return Err(missing_service(service));
    }
    Ok(doc)
}

/// The upsert of a row of `table` with `columns` (after `service` and the
/// key: `$1`, `$2`): create-only (`DO NOTHING`, check the count) or create
/// or replace.
pub(super) fn upsert_sql(table: Table, columns: &[&str], create_only: bool) -> String {
    let names = columns.join(", ");
    let values = (3..3 + columns.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let action = if create_only {
        "NOTHING".to_owned()
    } else {
        let set = columns
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("UPDATE SET {set}")
    };
    format!(
        "INSERT INTO {t} (service, {k}, {names}) VALUES ($1, $2, {values})
         ON CONFLICT (service, {k}) DO {action}",
        t = table.name,
        k = table.key,
    )
}

/// After a create-only upsert: none written means another writer created
/// the record first.
pub(super) fn created_or_exists(written: u64, what: &str) -> Result<(), StoreError> {
    if written == 0 {
        return Err(StoreError::AlreadyExists(format!("{what} already exists")));
    }
    Ok(())
}

/// Deletes the row of `key` if `condition` holds for its ETag; `missing`
/// is the message when there is none.
pub(super) async fn delete_row<C: GenericClient>(
    tx: &C,
    table: Table,
    service: &str,
    key: &str,
    condition: &Precondition,
    what: &str,
    missing: String,
) -> Result<(), StoreError> {
    let etag = if table.etag { "etag" } else { "'*'" };
    let current = query_opt(
        tx,
        &format!(
            "SELECT {etag} FROM {} WHERE service = $1 AND {} = $2 FOR UPDATE",
            table.name, table.key
        ),
        &[&service, &key],
    )
    .await?;
    let Some(current) = current else {
        return Err(StoreError::NotFound(missing));
    };
    let tag = ETag::from_raw(&col::<String>(&current, 0)?);
    check_precondition(Some(&tag), condition, what)?;
    execute(
        tx,
        &format!(
            "DELETE FROM {} WHERE service = $1 AND {} = $2",
            table.name, table.key
        ),
        &[&service, &key],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}
