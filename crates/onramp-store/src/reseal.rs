//! Re-sealing secrets under the active master key, a batch at a time, while
//! servers keep reading and writing them: what `onramp keys rotate` drives.
//!
//! Every store says where its sealed values live ([`SealedColumn`]: a table,
//! its key columns, and how a row's key makes the associated data). A batch
//! reads rows in key order after a cursor, opens each value sealed under an
//! older key and writes it back sealed under the active one only if the row
//! still holds the value read (a server's write in between wins). Values
//! are always readable, before, during and after, so a rotation stopped at
//! any point is continued by running it again.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use onramp_core::ports::StoreError;
use rusqlite::Connection;
use rusqlite::types::Value;

use crate::seal::{KEY_ID_PREFIX, Sealer, sealed_key_id};
use crate::sqlite::Db;

/// Where one kind of sealed value lives.
#[derive(Debug)]
pub struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
    /// The row's primary key, as text, in order.
    pub keys: &'static [&'static str],
    /// The associated data a row's value is sealed with, from its keys.
    pub aad: fn(&[String]) -> String,
}

fn service_aad(prefix: &str, keys: &[String]) -> String {
    format!("{prefix}:{}/{}", keys[0], keys[1])
}

/// A table keyed by service and record whose values are bound to `prefix:service/key`.
const fn per_service(
    table: &'static str,
    column: &'static str,
    keys: &'static [&'static str],
    aad: fn(&[String]) -> String,
) -> SealedColumn {
    SealedColumn {
        table,
        column,
        keys,
        aad,
    }
}

const BY_ID: &[&str] = &["service", "id_key"];

/// The provisioning store's sealed values (the same tables in SQLite and PostgreSQL).
pub const STORE_COLUMNS: &[SealedColumn] = &[
    per_service("policies", "keys_sealed", &["service", "name"], |k| {
        service_aad("policy", k)
    }),
    per_service(
        "linked_hubs",
        "connection_sealed",
        &["service", "name_key"],
        |k| service_aad("linked-hub", k),
    ),
    per_service("enrollments", "keys_sealed", BY_ID, |k| {
        service_aad("enrollment", k)
    }),
    per_service("enrollment_groups", "keys_sealed", BY_ID, |k| {
        service_aad("group", k)
    }),
    per_service("tpm_challenges", "keys_sealed", BY_ID, |k| {
        service_aad("tpm-challenge", k)
    }),
];

/// The rows a batch re-seals: up to `limit` rows of `column` after the key `after`.
#[derive(Debug, Clone)]
pub struct Page {
    pub column: &'static SealedColumn,
    pub after: Option<Vec<String>>,
    pub limit: usize,
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sealed values read.
    pub scanned: usize,
    /// Values written back under the active key.
    pub resealed: usize,
    /// Where the next batch starts; `None` once the table is done.
    pub next: Option<Vec<String>>,
}

/// How many sealed values each master key seals, by key ID (a value whose
/// envelope names no key counts under `"?"`).
pub type KeyCounts = BTreeMap<String, u64>;

/// A SQLite database of sealed values: what it takes to be [`Resealable`]
/// (batches run on its writer thread like any write).
pub struct SealedDb<'a> {
    /// What the store is, for messages.
    what: &'static str,
    db: &'a Db,
    sealer: &'a Arc<Sealer>,
    columns: &'static [SealedColumn],
}

impl<'a> SealedDb<'a> {
    pub fn new(
        what: &'static str,
        db: &'a Db,
        sealer: &'a Arc<Sealer>,
        columns: &'static [SealedColumn],
    ) -> Self {
        Self {
            what,
            db,
            sealer,
            columns,
        }
    }
}

/// A store kept in a SQLite database of sealed values.
pub trait SqliteSealed: Send + Sync {
    fn sealed_db(&self) -> SealedDb<'_>;
}

#[async_trait]
impl<T: SqliteSealed> Resealable for T {
    fn describe(&self) -> String {
        self.sealed_db().what.into()
    }

    fn sealed_columns(&self) -> Vec<&'static SealedColumn> {
        self.sealed_db().columns.iter().collect()
    }

    async fn key_counts(&self) -> Result<KeyCounts, StoreError> {
        let SealedDb { db, columns, .. } = self.sealed_db();
        db.read(move |conn| sqlite_key_counts(conn, columns)).await
    }

    async fn reseal_batch(&self, page: Page) -> Result<Batch, StoreError> {
        let SealedDb { db, sealer, .. } = self.sealed_db();
        let sealer = sealer.clone();
        db.write(move |conn| sqlite_reseal_batch(conn, &sealer, &page))
            .await
    }
}

/// A store whose sealed values can be counted by key and re-sealed.
#[async_trait]
pub trait Resealable: Send + Sync {
    /// What the store is, for messages ("the provisioning store").
    fn describe(&self) -> String;
    fn sealed_columns(&self) -> Vec<&'static SealedColumn>;
    async fn key_counts(&self) -> Result<KeyCounts, StoreError>;
    /// Re-seals the rows of one page.
    async fn reseal_batch(&self, page: Page) -> Result<Batch, StoreError>;
}

/// Adds a value's key ID (from the start of its envelope) to `counts`.
pub fn count_prefix(counts: &mut KeyCounts, prefix: &[u8], n: u64) {
    let id = sealed_key_id(prefix).unwrap_or("?").to_owned();
    *counts.entry(id).or_default() += n;
}

/// `SELECT keys…, column FROM table [WHERE (keys…) > (after…)] ORDER BY keys… LIMIT n`,
/// with placeholders written by `placeholder(i)` (1-based).
pub fn page_sql(c: &SealedColumn, after: bool, placeholder: fn(usize) -> String) -> String {
    let keys = c.keys.join(", ");
    let filter = if after {
        let marks: Vec<String> = (1..=c.keys.len()).map(placeholder).collect();
        format!("AND ({keys}) > ({})", marks.join(", "))
    } else {
        String::new()
    };
    let limit = placeholder(if after { c.keys.len() + 1 } else { 1 });
    format!(
        "SELECT {keys}, {col} FROM {table} WHERE {col} IS NOT NULL {filter} ORDER BY {keys} LIMIT {limit}",
        col = c.column,
        table = c.table
    )
}

/// `UPDATE table SET column = new WHERE keys… = … AND column = old`: new, keys…, old.
pub fn update_sql(c: &SealedColumn, placeholder: fn(usize) -> String) -> String {
    let conditions: Vec<String> = c
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = {}", placeholder(i + 2)))
        .collect();
    format!(
        "UPDATE {table} SET {col} = {new} WHERE {conditions} AND {col} = {old}",
        table = c.table,
        col = c.column,
        new = placeholder(1),
        conditions = conditions.join(" AND "),
        old = placeholder(c.keys.len() + 2)
    )
}

/// `SELECT prefix, count(*) … GROUP BY prefix` of a column, with `substr` spelled by the database.
pub fn count_sql(c: &SealedColumn, substr: &str) -> String {
    format!(
        "SELECT {substr}({col}, 1, {KEY_ID_PREFIX}), count(*) FROM {table} WHERE {col} IS NOT NULL GROUP BY 1",
        col = c.column,
        table = c.table
    )
}

/// A row's value under the active key, or `None` when it already is.
pub fn resealed(
    sealer: &Sealer,
    c: &SealedColumn,
    keys: &[String],
    sealed: &[u8],
    active: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    if sealed_key_id(sealed) == Some(active) {
        return Ok(None);
    }
    let aad = (c.aad)(keys);
    let plain = sealer
        .open(sealed, &aad)
        .map_err(|e| StoreError::Corrupt(format!("{} of {aad}: {e}", c.column)))?;
    Ok(Some(sealer.seal(&plain, &aad)))
}

fn sqlite_mark(i: usize) -> String {
    format!("?{i}")
}

fn sql(e: rusqlite::Error) -> StoreError {
    crate::sqlite::sql_error(e)
}

/// [`Resealable::key_counts`] on a SQLite connection.
pub fn sqlite_key_counts(
    conn: &Connection,
    columns: &[SealedColumn],
) -> Result<KeyCounts, StoreError> {
    let mut counts = KeyCounts::new();
    for c in columns {
        let mut stmt = conn.prepare_cached(&count_sql(c, "substr")).map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sql)?;
        for row in rows {
            let (prefix, n) = row.map_err(sql)?;
            count_prefix(&mut counts, &prefix, u64::try_from(n).unwrap_or(0));
        }
    }
    Ok(counts)
}

/// [`Resealable::reseal_batch`] on a SQLite connection (in the caller's transaction).
pub fn sqlite_reseal_batch(
    conn: &Connection,
    sealer: &Sealer,
    page: &Page,
) -> Result<Batch, StoreError> {
    let (c, after, limit) = (page.column, page.after.as_deref(), page.limit);
    let mut params: Vec<Value> = after
        .unwrap_or_default()
        .iter()
        .map(|k| Value::Text(k.clone()))
        .collect();
    params.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    let rows: Vec<(Vec<String>, Vec<u8>)> = {
        let mut stmt = conn
            .prepare_cached(&page_sql(c, after.is_some(), sqlite_mark))
            .map_err(sql)?;
        let n = c.keys.len();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                let keys = (0..n)
                    .map(|i| r.get::<_, String>(i))
                    .collect::<Result<_, _>>()?;
                Ok((keys, r.get::<_, Vec<u8>>(n)?))
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)?
    };
    let active = sealer.active_key_id();
    let mut batch = Batch {
        scanned: rows.len(),
        ..Batch::default()
    };
    let mut update = conn
        .prepare_cached(&update_sql(c, sqlite_mark))
        .map_err(sql)?;
    for (keys, sealed) in &rows {
        let Some(fresh) = resealed(sealer, c, keys, sealed, &active)? else {
            continue;
        };
        let mut values = vec![Value::Blob(fresh)];
        values.extend(keys.iter().map(|k| Value::Text(k.clone())));
        values.push(Value::Blob(sealed.clone()));
        batch.resealed += update
            .execute(rusqlite::params_from_iter(values))
            .map_err(sql)?;
    }
    if rows.len() == limit {
        batch.next = rows.last().map(|(keys, _)| keys.clone());
    }
    Ok(batch)
}
