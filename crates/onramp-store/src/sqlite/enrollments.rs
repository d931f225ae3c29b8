//! Individual enrollments (with their thumbprint index) and enrollment
//! groups: JSON documents whose symmetric keys are sealed beside them, one
//! table per kind and one code path for both.

use onramp_core::ports::{Precondition, StoreError, check_precondition, client_thumbprints};
use onramp_model::{EnrollmentKind, EnrollmentRecord, IndividualEnrollment, UtcTime};
use rusqlite::{Connection, params};

use super::db::sql_error;
use super::rows::{
    Row, corrupt, created_of, current_etag, ensure_service, get_row, list_rows, new_etag,
    query_all, seal_keys, unseal_keys, upsert,
};
use crate::seal::Sealer;

pub(super) const ENROLLMENTS: &str = "enrollments";
pub(super) const GROUPS: &str = "enrollment_groups";

pub(super) fn table(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Individual => ENROLLMENTS,
        EnrollmentKind::Group => GROUPS,
    }
}

/// What a record's sealed keys are bound to: its kind, service and key.
fn aad(kind: EnrollmentKind, service: &str, key: &str) -> String {
    let prefix = match kind {
        EnrollmentKind::Individual => "enrollment",
        EnrollmentKind::Group => "group",
    };
    format!("{prefix}:{service}/{key}")
}

/// A record from its stored JSON and its sealed keys.
pub(crate) fn open<E: EnrollmentRecord>(
    sealer: &Sealer,
    service: &str,
    key: &str,
    doc: &str,
    sealed: Option<Vec<u8>>,
) -> Result<E, StoreError> {
    let aad = aad(E::KIND, service, key);
    let mut record: E = serde_json::from_str(doc).map_err(|err| corrupt(&aad, err))?;
    unseal_keys(sealer, record.attestation_mut().as_mut(), sealed, &aad)?;
    Ok(record)
}

pub(super) fn read_one<E: EnrollmentRecord>(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    key: &str,
) -> Result<Option<E>, StoreError> {
    let row = get_row(conn, table(E::KIND), service, key)?;
    row.map(|(doc, sealed)| open(sealer, service, key, &doc, sealed))
        .transpose()
}

/// A page in key order, after `after` ("" for the first).
pub(super) fn read_page<E: EnrollmentRecord>(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<E>, StoreError> {
    list_rows(conn, table(E::KIND), service, after, limit)?
        .into_iter()
        .map(|(key, doc, sealed)| open(sealer, service, &key, &doc, sealed))
        .collect()
}

/// The enrollments whose client certificates have the SHA-256 thumbprint
/// `print` (upper case), by registration ID.
pub(super) fn read_by_thumbprint(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    print: &str,
) -> Result<Vec<IndividualEnrollment>, StoreError> {
    let rows: Vec<Row> = query_all(
        conn,
        "SELECT e.id_key, e.doc, e.keys_sealed FROM enrollment_thumbprints t
         JOIN enrollments e ON e.service = t.service AND e.id_key = t.id_key
         WHERE t.service = ?1 AND t.thumbprint = ?2 ORDER BY e.id_key",
        params![service, print],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    rows.into_iter()
        .map(|(key, doc, sealed)| open::<IndividualEnrollment>(sealer, service, &key, &doc, sealed))
        .collect()
}

/// A record ready to write: stamped with a new ETag and the time, its keys
/// sealed apart from the document (work done before the writer thread).
pub(crate) struct EnrollmentWrite<E> {
    pub(crate) key: String,
    pub(crate) stored: E,
    pub(crate) doc_form: E,
    pub(crate) sealed: Option<Vec<u8>>,
    pub(crate) what: String,
    /// Individual enrollments only: what the thumbprint index holds.
    pub(crate) thumbprints: Vec<String>,
    pub(crate) now: UtcTime,
}

impl<E: EnrollmentRecord> EnrollmentWrite<E> {
    pub(crate) fn seal(
        sealer: &Sealer,
        service: &str,
        record: &E,
        now: UtcTime,
    ) -> Result<Self, StoreError> {
        let key = record.id().to_ascii_lowercase();
        let mut stored = record.clone();
        let mut owned = stored.service_owned();
        owned.clear();
        *owned.last_updated = Some(now);
        *owned.etag = Some(new_etag());
        let mut doc_form = stored.clone();
        let sealed = seal_keys(
            sealer,
            doc_form.attestation_mut().as_mut(),
            &aad(E::KIND, service, &key),
        )?;
        Ok(Self {
            thumbprints: client_thumbprints(record.attestation()),
            what: format!("{} '{}'", E::KIND.noun(), record.id()),
            key,
            stored,
            doc_form,
            sealed,
            now,
        })
    }

    /// The row's document and ETag, once the record it replaces is known
    /// (`current`, its stored document): that record's creation time is
    /// kept, a new one's is now.
    pub(crate) fn row(&mut self, current: Option<&str>) -> Result<(String, String), StoreError> {
        let created = current.and_then(created_of).unwrap_or(self.now);
        *self.stored.service_owned().created = Some(created);
        *self.doc_form.service_owned().created = Some(created);
        let doc = serde_json::to_string(&self.doc_form).map_err(|e| corrupt(&self.what, e))?;
        let etag = self
            .stored
            .etag()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default();
        Ok((doc, etag))
    }

    /// Writes it if `condition` holds, keeping the creation time of the
    /// record it replaces; returns it as stored.
    pub(super) fn apply(
        mut self,
        conn: &Connection,
        service: &str,
        condition: &Precondition,
    ) -> Result<E, StoreError> {
        let table = table(E::KIND);
        ensure_service(conn, service)?;
        let current = current_etag(conn, table, service, &self.key)?;
        check_precondition(current.as_ref().map(|(t, _)| t), condition, &self.what)?;
        let (doc, etag) = self.row(current.as_ref().map(|(_, d)| d.as_str()))?;
        let sealed = self.sealed.as_deref();
        upsert(conn, table, service, &self.key, &etag, &doc, sealed)?;
        if E::KIND == EnrollmentKind::Individual {
            index_thumbprints(conn, service, &self.key, &self.thumbprints)?;
        }
        Ok(self.stored)
    }
}

/// Replaces the thumbprint index rows of one enrollment.
fn index_thumbprints(
    conn: &Connection,
    service: &str,
    key: &str,
    thumbprints: &[String],
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM enrollment_thumbprints WHERE service = ?1 AND id_key = ?2")
        .and_then(|mut s| s.execute(params![service, key]))
        .map_err(sql_error)?;
    for t in thumbprints {
        conn.prepare_cached("INSERT OR IGNORE INTO enrollment_thumbprints (service, thumbprint, id_key) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![service, t, key]))
            .map_err(sql_error)?;
    }
    Ok(())
}
