//! Registrations running on some node, one per device (the newest stays).

use deadpool_postgres::GenericClient;
use onramp_core::ports::{RunningOperation, StoreError};

use super::db::{pg_error, pg_error_in};
use super::rows::{col, execute, read_keyed};
use crate::sqlite::operations::{nanos, running};

/// Records `op` unless the device's recorded operation started later.
pub(super) async fn put<C: GenericClient>(
    client: &C,
    service: &str,
    op: &RunningOperation,
) -> Result<(), StoreError> {
    let key = op.registration_id.to_ascii_lowercase();
    execute(
        client,
        "INSERT INTO operations (service, id_key, registration_id, operation_id, node, started, lease_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (service, id_key) DO UPDATE SET registration_id = excluded.registration_id,
            operation_id = excluded.operation_id, node = excluded.node,
            started = excluded.started, lease_until = excluded.lease_until
         WHERE operations.operation_id = excluded.operation_id
            OR operations.started <= excluded.started",
        &[
            &service,
            &key,
            &op.registration_id,
            &op.operation_id,
            &op.node,
            &nanos(op.started),
            &nanos(op.lease_until),
        ],
    )
    .await
    .map_err(pg_error_in(service))?;
    Ok(())
}

pub(super) async fn read<C: GenericClient>(
    client: &C,
    service: &str,
    key: &str,
) -> Result<Option<RunningOperation>, StoreError> {
    read_keyed(
        client,
        "SELECT registration_id, operation_id, node, started, lease_until FROM operations
         WHERE service = $1 AND id_key = $2",
        (service, key),
        |r| running(col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?, col(r, 4)?),
    )
    .await
}

/// Removes the device's running operation if it is `operation_id`.
pub(super) async fn end<C: GenericClient>(
    client: &C,
    service: &str,
    key: &str,
    operation_id: &str,
) -> Result<(), StoreError> {
    execute(
        client,
        "DELETE FROM operations WHERE service = $1 AND id_key = $2 AND operation_id = $3",
        &[&service, &key, &operation_id],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}
