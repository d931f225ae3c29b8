//! Device registration records, and the one read a registration starts
//! with: one statement, so one round trip and one snapshot.

use deadpool_postgres::GenericClient;
use onramp_core::ports::{
    Page, RegistrationInputs, RegistrationLookup, RegistrationRecord, StoreError, overtaken,
};
use onramp_model::{EnrollmentGroup, IdKey, IndividualEnrollment, UtcTime};
use tokio_postgres::Row;

use super::db::pg_error_in;
use super::rows::{col, query, query_raw, read_keyed};
use super::services::{open_hub, service_doc};
use crate::record::RegistrationColumns;
use crate::seal::Sealer;
use crate::sqlite::enrollments::open;
use crate::sqlite::registrations::registration_from_row;
use crate::sqlite::rows::corrupt;

const COLUMNS: &str = "doc, group_key, operation_id, placement, created";

/// Where `COLUMNS` are in a plain read.
const PLAIN: [usize; 5] = [0, 1, 2, 3, 4];

/// A registration from its columns: document, group key, operation ID,
/// placement and creation time at `at`.
fn from_row(row: &Row, at: [usize; 5]) -> Result<RegistrationRecord, StoreError> {
    let [doc, group, operation, placement, created] = at;
    let doc: String = col(row, doc)?;
    let mut record = registration_from_row(&doc, col(row, group)?, col(row, operation)?)?;
    record.placement = col::<Option<String>>(row, placement)?
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| corrupt("registration placement", e))?;
    let created: String = col(row, created)?;
    record.state.created_date_time_utc = Some(
        UtcTime::parse(&created)
            .ok_or_else(|| corrupt("registration", "its creation time is not a time"))?,
    );
    Ok(record)
}

pub(super) async fn read<C: GenericClient>(
    client: &C,
    service: &str,
    key: &str,
) -> Result<Option<RegistrationRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM registrations WHERE service = $1 AND id_key = $2");
    read_keyed(client, &sql, (service, key), |r| from_row(r, PLAIN)).await
}

/// Writes a stamped record (see `sqlite::registrations::stamp`), keeping
/// the creation time of the one it replaces, in one statement; returns it
/// as stored. `create_only` writes only when there is no record (another
/// writer's is `AlreadyExists`); other conditions are checked by the
/// caller, in the same transaction.
pub(super) async fn write<C: GenericClient>(
    client: &C,
    service: &str,
    mut stored: RegistrationRecord,
    now: UtcTime,
    create_only: bool,
) -> Result<RegistrationRecord, StoreError> {
    let key = stored.state.registration_id.to_ascii_lowercase();
    let mut doc_form = stored.state.clone();
    doc_form.created_date_time_utc = None;
    let doc = serde_json::to_string(&doc_form).map_err(|e| corrupt("registration", e))?;
    let cols = RegistrationColumns::of(&stored)?;
    let now_text = now.to_string();
    let op_started = onramp_core::engine::operation_started(&stored.operation_id)
        .and_then(|n| i64::try_from(n).ok());
    // One statement: the operation stops running (its row goes) as its
    // record is written, and a record whose operation started later than
    // this one's stays (the newest registration of a device wins, whichever
    // node commits last).
    const INSERT: &str = "WITH ended AS (
            DELETE FROM operations WHERE service = $1 AND id_key = $2 AND operation_id = $4)
         INSERT INTO registrations (service, id_key, group_key, operation_id, etag, created, doc, placement, hub_key, op_started)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    let sql = if create_only {
        format!("{INSERT} ON CONFLICT (service, id_key) DO NOTHING RETURNING created")
    } else {
        format!(
            "{INSERT} ON CONFLICT (service, id_key) DO UPDATE SET group_key = excluded.group_key,
            operation_id = excluded.operation_id, etag = excluded.etag, doc = excluded.doc,
            placement = excluded.placement, hub_key = excluded.hub_key,
            op_started = excluded.op_started
         WHERE registrations.op_started IS NULL OR excluded.op_started IS NULL
            OR registrations.op_started <= excluded.op_started
         RETURNING created"
        )
    };
    let row = query_raw(
        client,
        &sql,
        &[
            &service,
            &key,
            &cols.group_key,
            &stored.operation_id,
            &cols.etag,
            &now_text,
            &doc,
            &cols.placement,
            &cols.hub_key,
            &op_started,
        ],
    )
    .await
    .map_err(pg_error_in(service))?;
    let created: String = match row.first() {
        Some(r) => col(r, 0)?,
        None if create_only => {
            return Err(StoreError::AlreadyExists(format!(
                "'{}' already exists",
                stored.state.registration_id
            )));
        }
        None => return Err(overtaken(&stored.state.registration_id)),
    };
    stored.state.created_date_time_utc = Some(if created == now_text {
        now
    } else {
        UtcTime::parse(&created)
            .ok_or_else(|| corrupt("registration", "its creation time is not a time"))?
    });
    Ok(stored)
}

/// Registrations of `service` in key order, a page at a time: all of them,
/// or those of one enrollment group.
pub(super) async fn page<C: GenericClient>(
    client: &C,
    group: Option<&IdKey>,
    page: &Page,
) -> Result<Vec<RegistrationRecord>, StoreError> {
    let (service, after) = (page.service.as_str(), page.after_key());
    let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
    let rows = match group {
        Some(group) => {
            query(
                client,
                &format!(
                    "SELECT {COLUMNS} FROM registrations
                 WHERE service = $1 AND group_key = $2 AND id_key > $3 ORDER BY id_key LIMIT $4"
                ),
                &[&service, &group.as_str(), &after, &limit],
            )
            .await
        }
        None => {
            query(
                client,
                &format!(
                    "SELECT {COLUMNS} FROM registrations
                 WHERE service = $1 AND id_key > $2 ORDER BY id_key LIMIT $3"
                ),
                &[&service, &after, &limit],
            )
            .await
        }
    }?;
    rows.iter().map(|r| from_row(r, PLAIN)).collect()
}

pub(super) async fn count_on_hub<C: GenericClient>(
    client: &C,
    service: &str,
    hub_key: &str,
) -> Result<u64, StoreError> {
    let sql = "SELECT count(*) FROM registrations WHERE service = $1 AND hub_key = $2";
    let n: i64 = read_keyed(client, sql, (service, hub_key), |r| col(r, 0))
        .await?
        .unwrap_or(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Everything a registration reads before it decides, as one statement:
/// one round trip and one snapshot. Each row says which part it is
/// (0 service, 1 individual enrollment, 2 group, 3 previous registration,
/// 4 linked hub); the groups are read only when there is no individual
/// enrollment, as the embedded store does.
const INPUTS: &str = "
WITH s AS (SELECT name, doc FROM services WHERE id_scope_key = $1),
     e AS (SELECT id_key, doc, keys_sealed FROM enrollments
           WHERE service = (SELECT name FROM s) AND id_key = $2)
SELECT 0 AS part, name AS key, doc, NULL::bytea AS sealed,
       NULL::text AS group_key, NULL::text AS operation_id, NULL::text AS placement, NULL::text AS created
  FROM s
UNION ALL
SELECT 1, id_key, doc, keys_sealed, NULL, NULL, NULL, NULL FROM e
UNION ALL
(SELECT 2, id_key, doc, keys_sealed, NULL, NULL, NULL, NULL FROM enrollment_groups
  WHERE service = (SELECT name FROM s) AND NOT EXISTS (SELECT 1 FROM e)
  ORDER BY id_key LIMIT $3)
UNION ALL
SELECT 3, id_key, doc, NULL, group_key, operation_id, placement, created FROM registrations
  WHERE service = (SELECT name FROM s) AND id_key = $2
UNION ALL
SELECT 4, name_key, doc, connection_sealed, NULL, NULL, NULL, NULL FROM linked_hubs
  WHERE service = (SELECT name FROM s)
ORDER BY 1, 2";

pub(super) async fn read_inputs<C: GenericClient>(
    client: &C,
    sealer: &Sealer,
    lookup: &RegistrationLookup,
) -> Result<Option<RegistrationInputs>, StoreError> {
    let (scope, key) = (
        lookup.id_scope_key.as_str(),
        lookup.registration_key.as_str(),
    );
    let limit = i64::try_from(lookup.group_page).unwrap_or(i64::MAX);
    let rows = query(client, INPUTS, &[&scope, &key, &limit]).await?;
    let mut service = None;
    let mut enrollment = None;
    let mut groups = Vec::new();
    let mut previous = None;
    let mut linked_hubs = Vec::new();
    for row in &rows {
        let part: i32 = col(row, 0)?;
        let row_key: String = col(row, 1)?;
        let doc: String = col(row, 2)?;
        let sealed: Option<Vec<u8>> = col(row, 3)?;
        // Rows come in part order: the service first.
        let name = match (&service, part) {
            (None, 0) => {
                service = Some(service_doc(&doc)?);
                continue;
            }
            (Some(s), _) => &s.name,
            (None, _) => return Err(corrupt("registration inputs", "a row without its service")),
        };
        match part {
            1 => {
                enrollment = Some(Box::new(open::<IndividualEnrollment>(
                    sealer, name, &row_key, &doc, sealed,
                )?))
            }
            2 => groups.push(open::<EnrollmentGroup>(
                sealer, name, &row_key, &doc, sealed,
            )?),
            3 => {
                previous = Some(Box::new(from_row(row, [2, 4, 5, 6, 7])?));
            }
            4 => {
                let sealed = sealed
                    .ok_or_else(|| corrupt("linked hub", "its connection string is missing"))?;
                linked_hubs.push(open_hub(sealer, name, &row_key, &doc, &sealed)?);
            }
            other => {
                return Err(corrupt(
                    "registration inputs",
                    format!("unknown part {other}"),
                ));
            }
        }
    }
    let Some(service) = service else {
        return Ok(None);
    };
    Ok(Some(RegistrationInputs {
        // The groups are the device's only when no enrollment names it.
        first_groups: enrollment.is_none().then_some(groups),
        service,
        enrollment,
        previous,
        linked_hubs,
    }))
}
