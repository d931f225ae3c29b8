//! Device registration records, and the one read a registration starts with.

use onramp_core::ports::{
    Page, RegistrationInputs, RegistrationLookup, RegistrationRecord, StoreError, overtaken,
    overtaken_by,
};
use onramp_model::{DeviceRegistrationState, IdKey, UtcTime};
use rusqlite::{Connection, params};

use super::db::{sql_error, sql_error_in};
use super::enrollments::{read_one, read_page};
use super::rows::{Keyed, corrupt, created_of, new_etag, query_all};
use super::services::{by_scope, linked_hubs_of};
use crate::record::RegistrationColumns;
use crate::seal::Sealer;

pub(super) const REGISTRATIONS: &str = "registrations";

/// The columns a registration is read from.
struct RegistrationRow {
    doc: String,
    group: Option<String>,
    operation_id: String,
    placement: Option<String>,
}

impl RegistrationRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            doc: r.get(0)?,
            group: r.get(1)?,
            operation_id: r.get(2)?,
            placement: r.get(3)?,
        })
    }

    fn into_record(self) -> Result<RegistrationRecord, StoreError> {
        let mut record = registration_from_row(&self.doc, self.group, self.operation_id)?;
        record.placement = self
            .placement
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("registration placement", e))?;
        Ok(record)
    }
}

pub(crate) fn registration_from_row(
    doc: &str,
    group: Option<String>,
    operation_id: String,
) -> Result<RegistrationRecord, StoreError> {
    let state: DeviceRegistrationState =
        serde_json::from_str(doc).map_err(|e| corrupt("registration", e))?;
    // The group's original spelling is in the state; the column holds the key.
    let enrollment_group_id = state
        .symmetric_key
        .as_ref()
        .and_then(|s| s.enrollment_group_id.clone())
        .or_else(|| {
            state
                .x509
                .as_ref()
                .and_then(|x| x.enrollment_group_id.clone())
        })
        .or(group);
    Ok(RegistrationRecord {
        state,
        operation_id,
        enrollment_group_id,
        placement: None,
    })
}

pub(super) fn read_registration(
    conn: &Connection,
    service: &str,
    key: &str,
) -> Result<Option<RegistrationRecord>, StoreError> {
    Keyed::by_id(REGISTRATIONS)
        .select(
            conn,
            "doc, group_key, operation_id, placement",
            (service, key),
            RegistrationRow::read,
        )?
        .map(RegistrationRow::into_record)
        .transpose()
}

/// Everything a registration reads before it decides, in one read
/// transaction: one snapshot, one WAL read lock.
pub(super) fn read_inputs(
    conn: &Connection,
    sealer: &Sealer,
    lookup: &RegistrationLookup,
) -> Result<Option<RegistrationInputs>, StoreError> {
    let (key, group_page) = (lookup.registration_key.as_str(), lookup.group_page);
    let tx = conn.unchecked_transaction().map_err(sql_error)?;
    let Some(service) = by_scope(&tx, &lookup.id_scope_key)? else {
        return Ok(None);
    };
    let name = &service.name;
    let enrollment = read_one(&tx, sealer, name, key)?.map(Box::new);
    let first_groups = match enrollment {
        Some(_) => None,
        None => Some(read_page(&tx, sealer, name, "", group_page)?),
    };
    let inputs = RegistrationInputs {
        previous: read_registration(&tx, name, key)?.map(Box::new),
        linked_hubs: linked_hubs_of(&tx, sealer, name, None)?,
        service,
        enrollment,
        first_groups,
    };
    tx.finish().map_err(sql_error)?;
    Ok(Some(inputs))
}

/// A record stamped for writing: new ETag, updated now.
pub(crate) fn stamp(record: &RegistrationRecord, now: UtcTime) -> RegistrationRecord {
    let mut stored = record.clone();
    stored.state.last_updated_date_time_utc = Some(now);
    stored.state.etag = Some(new_etag());
    stored
}

/// Writes a stamped record, keeping the creation time of the one it
/// replaces; returns it as stored.
pub(super) fn write(
    conn: &Connection,
    service: &str,
    mut stored: RegistrationRecord,
    now: UtcTime,
) -> Result<RegistrationRecord, StoreError> {
    let key = stored.state.registration_id.to_ascii_lowercase();
    let current: Option<(String, String)> =
        Keyed::by_id(REGISTRATIONS).select(conn, "doc, operation_id", (service, &key), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    // One writer: the check and the write below are one step.
    if let Some((_, recorded)) = &current
        && overtaken_by(&stored.operation_id, recorded)
    {
        return Err(overtaken(&stored.state.registration_id));
    }
    stored.state.created_date_time_utc = Some(
        current
            .as_ref()
            .and_then(|(doc, _)| created_of(doc))
            .unwrap_or(now),
    );
    let doc = serde_json::to_string(&stored.state).map_err(|e| corrupt("registration", e))?;
    let cols = RegistrationColumns::of(&stored)?;
    conn.prepare_cached(
        "INSERT INTO registrations (service, id_key, group_key, operation_id, etag, doc, placement, hub_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (service, id_key) DO UPDATE SET group_key = excluded.group_key,
            operation_id = excluded.operation_id, etag = excluded.etag, doc = excluded.doc,
            placement = excluded.placement, hub_key = excluded.hub_key",
    )
    .and_then(|mut s| {
        s.execute(params![
            service,
            key,
            cols.group_key,
            stored.operation_id,
            cols.etag,
            doc,
            cols.placement,
            cols.hub_key
        ])
    })
    .map_err(sql_error_in(service))?;
    // The operation is over: no longer running anywhere.
    super::operations::end(conn, service, &key, &stored.operation_id)?;
    Ok(stored)
}

/// Registrations of `service` in key order, a page at a time: all of them,
/// or those of one enrollment group (through its index).
pub(super) fn page(
    conn: &Connection,
    group: Option<&IdKey>,
    page: &Page,
) -> Result<Vec<RegistrationRecord>, StoreError> {
    const COLUMNS: &str = "SELECT doc, group_key, operation_id, placement FROM registrations";
    let (service, after) = (page.service.as_str(), page.after_key());
    let limit = page.limit.min(i64::MAX as usize) as i64;
    let rows = match group {
        Some(group) => query_all(
            conn,
            &format!(
                "{COLUMNS} WHERE service = ?1 AND group_key = ?2 AND id_key > ?3 ORDER BY id_key LIMIT ?4"
            ),
            params![service, group.as_str(), after, limit],
            RegistrationRow::read,
        )?,
        None => query_all(
            conn,
            &format!("{COLUMNS} WHERE service = ?1 AND id_key > ?2 ORDER BY id_key LIMIT ?3"),
            params![service, after, limit],
            RegistrationRow::read,
        )?,
    };
    rows.into_iter().map(RegistrationRow::into_record).collect()
}

pub(super) fn count_on_hub(
    conn: &Connection,
    service: &str,
    hub_key: &str,
) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM registrations WHERE service = ?1 AND hub_key = ?2")
        .and_then(|mut s| s.query_row(params![service, hub_key], |r| r.get::<_, i64>(0)))
        .map(|n| n.max(0) as u64)
        .map_err(sql_error)
}
