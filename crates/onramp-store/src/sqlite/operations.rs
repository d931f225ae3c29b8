//! Registrations running on some node, one per device (the newest stays).

use onramp_core::ports::{RunningOperation, StoreError};
use onramp_model::UtcTime;
use rusqlite::{Connection, params};

use super::db::{sql_error, sql_error_in};
use super::rows::{Keyed, corrupt};

/// Unix nanoseconds as a column (times from 1677 to 2262; a time outside
/// saturates to the nearer end, so a query `since` 0001 reads everything).
pub(crate) fn nanos(t: UtcTime) -> i64 {
    let n = t.unix_nanos();
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

fn time(nanos: i64) -> Result<UtcTime, StoreError> {
    UtcTime::from_unix_nanos(i128::from(nanos))
        .ok_or_else(|| corrupt("running operation", "a time out of range"))
}

/// Records `op` unless the device's recorded operation started later.
pub(super) fn put(
    conn: &Connection,
    service: &str,
    op: &RunningOperation,
) -> Result<(), StoreError> {
    let key = op.registration_id.to_ascii_lowercase();
    conn.prepare_cached(
        "INSERT INTO operations (service, id_key, operation_id, node, started, lease_until, registration_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (service, id_key) DO UPDATE SET operation_id = excluded.operation_id,
            node = excluded.node, started = excluded.started, lease_until = excluded.lease_until,
            registration_id = excluded.registration_id
         WHERE operations.operation_id = excluded.operation_id OR operations.started <= excluded.started",
    )
    .and_then(|mut s| {
        s.execute(params![
            service,
            key,
            op.operation_id,
            op.node,
            nanos(op.started),
            nanos(op.lease_until),
            op.registration_id
        ])
    })
    .map_err(sql_error_in(service))?;
    Ok(())
}

pub(super) fn read(
    conn: &Connection,
    service: &str,
    key: &str,
) -> Result<Option<RunningOperation>, StoreError> {
    Keyed::by_id("operations")
        .select(
            conn,
            "registration_id, operation_id, node, started, lease_until",
            (service, key),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .map(|(registration_id, operation_id, node, started, lease)| {
            running(registration_id, operation_id, node, started, lease)
        })
        .transpose()
}

/// A running operation from its columns (times in Unix nanoseconds).
pub(crate) fn running(
    registration_id: String,
    operation_id: String,
    node: String,
    started: i64,
    lease_until: i64,
) -> Result<RunningOperation, StoreError> {
    Ok(RunningOperation {
        registration_id,
        operation_id,
        node,
        started: time(started)?,
        lease_until: time(lease_until)?,
    })
}

/// Removes the device's running operation if it is `operation_id`.
pub(super) fn end(
    conn: &Connection,
    service: &str,
    key: &str,
    operation_id: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM operations WHERE service = ?1 AND id_key = ?2 AND operation_id = ?3",
    )
    .and_then(|mut s| s.execute(params![service, key, operation_id]))
    .map_err(sql_error)?;
    Ok(())
}
