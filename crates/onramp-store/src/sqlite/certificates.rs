//! Verified CA certificates of a service, keyed by lower-case name.

use onramp_core::ports::{Precondition, StoreError, check_precondition};
use onramp_core::tenant::CaCertificate;
use onramp_model::ETag;
use rusqlite::{Connection, params};

use super::db::sql_error;
use super::rows::{Keyed, corrupt, ensure_service, new_etag, query_all};

pub(crate) fn ca_from_row(doc: &str, etag: &str) -> Result<CaCertificate, StoreError> {
    let mut ca: CaCertificate =
        serde_json::from_str(doc).map_err(|e| corrupt("CA certificate", e))?;
    ca.etag = Some(ETag::from_raw(etag));
    Ok(ca)
}

/// Certificates are kept under their lower-case name.
const CA_CERTIFICATES: Keyed<'static> = Keyed {
    table: "ca_certificates",
    key: "name_key",
};

fn current_etag(conn: &Connection, service: &str, key: &str) -> Result<Option<String>, StoreError> {
    CA_CERTIFICATES.select(conn, "etag", (service, key), |r| r.get(0))
}

pub(super) fn read_one(
    conn: &Connection,
    service: &str,
    key: &str,
) -> Result<Option<CaCertificate>, StoreError> {
    let row: Option<(String, String)> =
        CA_CERTIFICATES.select(conn, "doc, etag", (service, key), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    row.map(|(doc, etag)| ca_from_row(&doc, &etag)).transpose()
}

pub(super) fn read_all(conn: &Connection, service: &str) -> Result<Vec<CaCertificate>, StoreError> {
    let rows = query_all(
        conn,
        "SELECT doc, etag FROM ca_certificates WHERE service = ?1 ORDER BY name_key",
        [service],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )?;
    rows.iter()
        .map(|(doc, etag)| ca_from_row(doc, etag))
        .collect()
}

/// A certificate stamped with a new ETag, ready to write.
pub(crate) fn stamp(certificate: &CaCertificate) -> CaCertificate {
    let mut stored = certificate.clone();
    stored.etag = Some(new_etag());
    stored
}

/// Writes a stamped certificate if `condition` holds; returns it.
pub(super) fn write(
    conn: &Connection,
    service: &str,
    stored: CaCertificate,
    condition: &Precondition,
) -> Result<CaCertificate, StoreError> {
    let key = stored.name.to_ascii_lowercase();
    let what = format!("CA certificate '{}'", stored.name);
    ensure_service(conn, service)?;
    let current = current_etag(conn, service, &key)?;
    check_precondition(
        current.map(|c| ETag::from_raw(&c)).as_ref(),
        condition,
        &what,
    )?;
    let etag = stored
        .etag
        .as_ref()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_default();
    let mut doc_form = stored.clone();
    doc_form.etag = None;
    let doc = serde_json::to_string(&doc_form).map_err(|e| corrupt(&what, e))?;
    conn.prepare_cached(
        "INSERT INTO ca_certificates (service, name_key, etag, doc) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (service, name_key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc",
    )
    .and_then(|mut s| s.execute(params![service, key, etag, doc]))
    .map_err(sql_error)?;
    Ok(stored)
}

/// Deletes the certificate called `name` if `condition` holds.
pub(super) fn delete(
    conn: &Connection,
    service: &str,
    name: &str,
    condition: &Precondition,
) -> Result<(), StoreError> {
    let key = name.to_ascii_lowercase();
    let Some(current) = current_etag(conn, service, &key)? else {
        return Err(StoreError::NotFound(format!(
            "no CA certificate is named '{name}'"
        )));
    };
    check_precondition(
        Some(&ETag::from_raw(&current)),
        condition,
        &format!("CA certificate '{name}'"),
    )?;
    CA_CERTIFICATES.delete(conn, service, &key)?;
    Ok(())
}
