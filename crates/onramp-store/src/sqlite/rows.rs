//! What every table's rows share: the keyed `(service, id_key)` rows with an
//! ETag and sealed keys, the sealing of attestation keys, and the little
//! queries all the concept files run.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use onramp_core::ports::{Precondition, StoreError, check_precondition};
use onramp_model::{AttestationMechanism, ETag, SymmetricKeyAttestation, UtcTime};
use rusqlite::{Connection, OptionalExtension, Params, params};
use serde::Deserialize;

use super::db::sql_error;
use crate::record::missing_service;
use crate::seal::Sealer;

/// Every row `sql` selects, each made by `row`.
pub fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_map(params, row)?.collect::<Result<Vec<_>, _>>())
        .map_err(sql_error)
}

/// The one row `sql` selects, if any, made by `row`.
pub fn query_optional<T, F>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    row: F,
) -> Result<Option<T>, StoreError>
where
    F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, row).optional())
        .map_err(sql_error)
}

/// Runs a `DELETE`; whether it removed anything.
pub(super) fn deleted(
    conn: &Connection,
    sql: &str,
    params: impl Params,
) -> Result<bool, StoreError> {
    conn.execute(sql, params).map(|n| n > 0).map_err(sql_error)
}

/// A table of rows kept under `(service, key)`, and its key column.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keyed<'a> {
    pub table: &'a str,
    pub key: &'static str,
}

impl<'a> Keyed<'a> {
    /// A table keyed by `id_key` (registration or enrollment IDs).
    pub(super) const fn by_id(table: &'a str) -> Self {
        Self {
            table,
            key: "id_key",
        }
    }

    /// The `columns` of the row of `key`, if any, made by `row`.
    pub(super) fn select<T>(
        self,
        conn: &Connection,
        columns: &str,
        (service, key): (&str, &str),
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let sql = format!(
            "SELECT {columns} FROM {} WHERE service = ?1 AND {} = ?2",
            self.table, self.key
        );
        query_optional(conn, &sql, params![service, key], row)
    }

    /// Deletes the row of `key`; whether there was one.
    pub(super) fn delete(
        self,
        conn: &Connection,
        service: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "DELETE FROM {} WHERE service = ?1 AND {} = ?2",
            self.table, self.key
        );
        deleted(conn, &sql, params![service, key])
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn new_etag() -> ETag {
    let mut bytes = [0u8; 8];
    // Uniqueness is all an ETag needs; the system RNG failing is not recoverable.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    ETag::from_opaque(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Takes the symmetric keys out of an attestation and seals them.
pub(crate) fn seal_keys(
    sealer: &Sealer,
    att: Option<&mut AttestationMechanism>,
    aad: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(keys) = att.and_then(|a| a.symmetric_key.as_mut()) else {
        return Ok(None);
    };
    let taken = SymmetricKeyAttestation {
        primary_key: keys.primary_key.take(),
        secondary_key: keys.secondary_key.take(),
    };
    let json = serde_json::to_vec(&taken).map_err(|e| corrupt("keys", e))?;
    Ok(Some(sealer.seal(&json, aad)))
}

pub(crate) fn unseal_keys(
    sealer: &Sealer,
    att: Option<&mut AttestationMechanism>,
    sealed: Option<Vec<u8>>,
    aad: &str,
) -> Result<(), StoreError> {
    let (Some(att), Some(sealed)) = (att, sealed) else {
        return Ok(());
    };
    let plain = sealer.open(&sealed, aad).map_err(|e| corrupt(aad, e))?;
    let keys: SymmetricKeyAttestation =
        serde_json::from_slice(&plain).map_err(|e| corrupt(aad, e))?;
    att.symmetric_key = Some(keys);
    Ok(())
}

/// `createdDateTimeUtc` of a stored doc, kept across updates.
pub(crate) fn created_of(doc: &str) -> Option<UtcTime> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Created {
        created_date_time_utc: Option<UtcTime>,
    }
    serde_json::from_str::<Created>(doc)
        .ok()
        .and_then(|c| c.created_date_time_utc)
}

pub(super) fn ensure_service(conn: &Connection, service: &str) -> Result<(), StoreError> {
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM services WHERE name = ?1)")
        .and_then(|mut s| s.query_row([service], |r| r.get(0)))
        .map_err(sql_error)?;
    if !exists {
        return Err(missing_service(service));
    }
    Ok(())
}

/// The ETag and document of a keyed row.
pub(super) fn current_etag(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
) -> Result<Option<(ETag, String)>, StoreError> {
    Keyed::by_id(table).select(conn, "etag, doc", (service, key), |r| {
        Ok((
            ETag::from_raw(&r.get::<_, String>(0)?),
            r.get::<_, String>(1)?,
        ))
    })
}

/// A stored document and its sealed keys.
pub(super) type DocAndKeys = (String, Option<Vec<u8>>);
/// Key, document and sealed keys of a listed row.
pub(super) type Row = (String, String, Option<Vec<u8>>);

pub(super) fn get_row(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
) -> Result<Option<DocAndKeys>, StoreError> {
    Keyed::by_id(table).select(conn, "doc, keys_sealed", (service, key), |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

pub(super) fn list_rows(
    conn: &Connection,
    table: &str,
    service: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    query_all(
        conn,
        &format!(
            "SELECT id_key, doc, keys_sealed FROM {table} WHERE service = ?1 AND id_key > ?2 ORDER BY id_key LIMIT ?3"
        ),
        params![service, after, limit.min(i64::MAX as usize) as i64],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

pub(super) fn upsert(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
    etag: &str,
    doc: &str,
    sealed: Option<&[u8]>,
) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (service, id_key, etag, doc, keys_sealed) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (service, id_key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc, keys_sealed = excluded.keys_sealed"
    ))
    .and_then(|mut s| s.execute(params![service, key, etag, doc, sealed]))
    .map(|_| ())
    .map_err(sql_error)
}

/// The ETag of a keyed row, if there is one.
fn row_etag(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
) -> Result<Option<ETag>, StoreError> {
    let current: Option<String> =
        Keyed::by_id(table).select(conn, "etag", (service, key), |r| r.get(0))?;
    Ok(current.map(|c| ETag::from_raw(&c)))
}

/// Checks `condition` against the ETag of the row of `id` (any case) before a
/// write; an unconditional write reads nothing.
pub(super) fn check_row(
    conn: &Connection,
    table: &str,
    service: &str,
    id: &str,
    condition: &Precondition,
) -> Result<(), StoreError> {
    if *condition == Precondition::None {
        return Ok(());
    }
    let current = row_etag(conn, table, service, &id.to_ascii_lowercase())?;
    check_precondition(current.as_ref(), condition, &format!("'{id}'"))
}

/// Deletes a keyed row if `condition` holds for its ETag; `missing` is the
/// message when there is no such row.
pub(super) fn delete_row(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
    condition: &Precondition,
    missing: String,
) -> Result<(), StoreError> {
    let Some(current) = row_etag(conn, table, service, key)? else {
        return Err(StoreError::NotFound(missing));
    };
    check_precondition(Some(&current), condition, &format!("'{key}'"))?;
    Keyed::by_id(table).delete(conn, service, key)?;
    Ok(())
}
