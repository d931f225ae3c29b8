//! Individual enrollments (with their thumbprint index) and enrollment
//! groups: JSON documents whose symmetric keys are sealed beside them.

use onramp_core::ports::{Precondition, StoreError, check_precondition, client_thumbprints};
use onramp_model::{EnrollmentGroup, IndividualEnrollment, UtcTime};
use rusqlite::{Connection, params};

use super::db::sql_error;
use super::rows::{
    Row, corrupt, created_of, current_etag, ensure_service, get_row, list_rows, new_etag,
    query_all, seal_keys, unseal_keys, upsert,
};
use crate::seal::Sealer;

pub(super) const ENROLLMENTS: &str = "enrollments";
pub(super) const GROUPS: &str = "enrollment_groups";

fn enrollment_aad(service: &str, key: &str) -> String {
    format!("enrollment:{service}/{key}")
}
fn group_aad(service: &str, key: &str) -> String {
    format!("group:{service}/{key}")
}

/// An individual enrollment from its stored JSON and its sealed keys.
fn open_enrollment(
    sealer: &Sealer,
    service: &str,
    key: &str,
    doc: &str,
    sealed: Option<Vec<u8>>,
) -> Result<IndividualEnrollment, StoreError> {
    let aad = enrollment_aad(service, key);
    let mut e: IndividualEnrollment =
        serde_json::from_str(doc).map_err(|err| corrupt(&aad, err))?;
    unseal_keys(sealer, e.attestation.as_mut(), sealed, &aad)?;
    Ok(e)
}

/// An enrollment group from its stored JSON and its sealed keys.
fn open_group(
    sealer: &Sealer,
    service: &str,
    key: &str,
    doc: &str,
    sealed: Option<Vec<u8>>,
) -> Result<EnrollmentGroup, StoreError> {
    let aad = group_aad(service, key);
    let mut g: EnrollmentGroup = serde_json::from_str(doc).map_err(|err| corrupt(&aad, err))?;
    unseal_keys(sealer, g.attestation.as_mut(), sealed, &aad)?;
    Ok(g)
}

pub(super) fn read_enrollment(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    key: &str,
) -> Result<Option<IndividualEnrollment>, StoreError> {
    let row = get_row(conn, ENROLLMENTS, service, key)?;
    row.map(|(doc, sealed)| open_enrollment(sealer, service, key, &doc, sealed))
        .transpose()
}

pub(super) fn read_enrollments(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<IndividualEnrollment>, StoreError> {
    list_rows(conn, ENROLLMENTS, service, after, limit)?
        .into_iter()
        .map(|(key, doc, sealed)| open_enrollment(sealer, service, &key, &doc, sealed))
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
        .map(|(key, doc, sealed)| open_enrollment(sealer, service, &key, &doc, sealed))
        .collect()
}

pub(super) fn read_group(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    key: &str,
) -> Result<Option<EnrollmentGroup>, StoreError> {
    let row = get_row(conn, GROUPS, service, key)?;
    row.map(|(doc, sealed)| open_group(sealer, service, key, &doc, sealed))
        .transpose()
}

pub(super) fn read_groups(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<EnrollmentGroup>, StoreError> {
    list_rows(conn, GROUPS, service, after, limit)?
        .into_iter()
        .map(|(key, doc, sealed)| open_group(sealer, service, &key, &doc, sealed))
        .collect()
}

/// An individual enrollment ready to write: stamped with a new ETag and the
/// time, its keys sealed apart from the document.
pub(super) struct EnrollmentWrite {
    key: String,
    stored: IndividualEnrollment,
    doc_form: IndividualEnrollment,
    sealed: Option<Vec<u8>>,
    what: String,
    thumbprints: Vec<String>,
    now: UtcTime,
}

impl EnrollmentWrite {
    pub(super) fn seal(
        sealer: &Sealer,
        service: &str,
        enrollment: &IndividualEnrollment,
        now: UtcTime,
    ) -> Result<Self, StoreError> {
        let key = enrollment.registration_id.to_ascii_lowercase();
        let aad = enrollment_aad(service, &key);
        let mut stored = enrollment.clone();
        stored.registration_state = None;
        stored.last_updated_date_time_utc = Some(now);
        stored.etag = Some(new_etag());
        let mut doc_form = stored.clone();
        let sealed = seal_keys(sealer, doc_form.attestation.as_mut(), &aad)?;
        let what = format!("enrollment '{}'", enrollment.registration_id);
        let thumbprints = client_thumbprints(enrollment);
        Ok(Self {
            key,
            stored,
            doc_form,
            sealed,
            what,
            thumbprints,
            now,
        })
    }

    /// Writes it if `condition` holds, keeping the creation time of the
    /// enrollment it replaces; returns it as stored.
    pub(super) fn apply(
        self,
        conn: &Connection,
        service: &str,
        condition: &Precondition,
    ) -> Result<IndividualEnrollment, StoreError> {
        let Self {
            key,
            mut stored,
            mut doc_form,
            sealed,
            what,
            thumbprints,
            now,
        } = self;
        ensure_service(conn, service)?;
        let current = current_etag(conn, ENROLLMENTS, service, &key)?;
        check_precondition(current.as_ref().map(|(t, _)| t), condition, &what)?;
        let created = current
            .as_ref()
            .and_then(|(_, d)| created_of(d))
            .unwrap_or(now);
        stored.created_date_time_utc = Some(created);
        doc_form.created_date_time_utc = Some(created);
        let doc = serde_json::to_string(&doc_form).map_err(|e| corrupt(&what, e))?;
        let etag = stored
            .etag
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default();
        upsert(
            conn,
            ENROLLMENTS,
            service,
            &key,
            &etag,
            &doc,
            sealed.as_deref(),
        )?;
        index_thumbprints(conn, service, &key, &thumbprints)?;
        Ok(stored)
    }
}

/// An enrollment group ready to write: stamped with a new ETag and the
/// time, its keys sealed apart from the document.
pub(super) struct GroupWrite {
    key: String,
    stored: EnrollmentGroup,
    doc_form: EnrollmentGroup,
    sealed: Option<Vec<u8>>,
    what: String,
    now: UtcTime,
}

impl GroupWrite {
    pub(super) fn seal(
        sealer: &Sealer,
        service: &str,
        group: &EnrollmentGroup,
        now: UtcTime,
    ) -> Result<Self, StoreError> {
        let key = group.enrollment_group_id.to_ascii_lowercase();
        let aad = group_aad(service, &key);
        let mut stored = group.clone();
        stored.last_updated_date_time_utc = Some(now);
        stored.etag = Some(new_etag());
        let mut doc_form = stored.clone();
        let sealed = seal_keys(sealer, doc_form.attestation.as_mut(), &aad)?;
        let what = format!("enrollment group '{}'", group.enrollment_group_id);
        Ok(Self {
            key,
            stored,
            doc_form,
            sealed,
            what,
            now,
        })
    }

    /// Writes it if `condition` holds, keeping the creation time of the
    /// group it replaces; returns it as stored.
    pub(super) fn apply(
        self,
        conn: &Connection,
        service: &str,
        condition: &Precondition,
    ) -> Result<EnrollmentGroup, StoreError> {
        let Self {
            key,
            mut stored,
            mut doc_form,
            sealed,
            what,
            now,
        } = self;
        ensure_service(conn, service)?;
        let current = current_etag(conn, GROUPS, service, &key)?;
        check_precondition(current.as_ref().map(|(t, _)| t), condition, &what)?;
        let created = current
            .as_ref()
            .and_then(|(_, d)| created_of(d))
            .unwrap_or(now);
        stored.created_date_time_utc = Some(created);
        doc_form.created_date_time_utc = Some(created);
        let doc = serde_json::to_string(&doc_form).map_err(|e| corrupt(&what, e))?;
        let etag = stored
            .etag
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default();
        upsert(conn, GROUPS, service, &key, &etag, &doc, sealed.as_deref())?;
        Ok(stored)
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
