//! The records a service owns, by kind: reads, pages, and writes that hold
//! their condition under concurrent writers (each in a transaction that
//! locks the row it checks). Documents, sealing and stamping are the
//! embedded store's, so both stores keep the same bytes.

use deadpool_postgres::GenericClient;
use onramp_core::ports::{
    Page, Precondition, Record, RecordAt, RecordKind, StoreError, StoredRecord,
};
use onramp_model::{EnrollmentGroup, EnrollmentKind, EnrollmentRecord, IndividualEnrollment};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::db::{pg_error, pg_error_in};
use super::registrations;
use super::rows::{
    CA_CERTIFICATES, ENROLLMENTS, GROUPS, LINKED_HUBS, Order, Params, REGISTRATIONS,
    TPM_CHALLENGES, Table, col, created_or_exists, delete_row, execute, lock_and_check, query,
    upsert_sql,
};
use super::services::open_hub;
use crate::record::RecordWrite;
use crate::seal::Sealer;
use crate::sqlite::certificates::ca_from_row;
use crate::sqlite::challenges;
use crate::sqlite::enrollments::{EnrollmentWrite, open};
use crate::sqlite::rows::{corrupt, new_etag};

/// The table of a kind of record.
pub(super) fn table(kind: RecordKind) -> Table {
    match kind {
        RecordKind::Enrollment => ENROLLMENTS,
        RecordKind::EnrollmentGroup => GROUPS,
        RecordKind::Registration => REGISTRATIONS,
        RecordKind::CaCertificate => CA_CERTIFICATES,
        RecordKind::LinkedHub => LINKED_HUBS,
        RecordKind::TpmChallenge => TPM_CHALLENGES,
    }
}

/// The columns a keyed read selects after the key: document, sealed part
/// (or NULL) and ETag (or NULL).
fn columns(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Enrollment | RecordKind::EnrollmentGroup | RecordKind::TpmChallenge => {
            "doc, keys_sealed, etag"
        }
        RecordKind::CaCertificate => "doc, NULL::bytea, etag",
        RecordKind::LinkedHub => "doc, connection_sealed, NULL::text",
        RecordKind::Registration => "",
    }
}

/// A record of `kind` from a row of (key, document, sealed part, ETag).
fn decode(
    sealer: &Sealer,
    service: &str,
    kind: RecordKind,
    row: &Row,
) -> Result<Record, StoreError> {
    let key: String = col(row, 0)?;
    let doc: String = col(row, 1)?;
    let sealed: Option<Vec<u8>> = col(row, 2)?;
    Ok(match kind {
        RecordKind::Enrollment => {
            open::<IndividualEnrollment>(sealer, service, &key, &doc, sealed)?.into_record()
        }
        RecordKind::EnrollmentGroup => {
            open::<EnrollmentGroup>(sealer, service, &key, &doc, sealed)?.into_record()
        }
        RecordKind::TpmChallenge => {
            challenges::open(sealer, service, &key, &doc, sealed)?.into_record()
        }
        RecordKind::CaCertificate => {
            let etag: Option<String> = col(row, 3)?;
            ca_from_row(&doc, &etag.unwrap_or_default())?.into_record()
        }
        RecordKind::LinkedHub => {
            let sealed =
                sealed.ok_or_else(|| corrupt("linked hub", "its connection string is missing"))?;
            open_hub(sealer, service, &key, &doc, &sealed)?.into_record()
        }
        RecordKind::Registration => {
            return Err(corrupt("registration", "read through registrations"));
        }
    })
}

/// The records of `kind` whose rows meet `filter` (after the service,
/// `$1`; `{k}` stands for the key column).
async fn select<C: GenericClient>(
    client: &C,
    sealer: &Sealer,
    service: &str,
    kind: RecordKind,
    filter: &str,
    params: &Params<'_>,
) -> Result<Vec<Record>, StoreError> {
    let t = table(kind);
    let sql = format!(
        "SELECT {k}, {c} FROM {n} WHERE service = $1 AND {filter}",
        k = t.key,
        c = columns(kind),
        n = t.name,
        filter = filter.replace("{k}", t.key),
    );
    let rows = query(client, &sql, params).await?;
    rows.iter()
        .map(|r| decode(sealer, service, kind, r))
        .collect()
}

/// The record at `at`, if there is one.
pub(super) async fn read<C: GenericClient>(
    client: &C,
    sealer: &Sealer,
    at: &RecordAt,
) -> Result<Option<Record>, StoreError> {
    let (service, kind, key) = (at.service.as_str(), at.kind, at.key.as_str());
    if kind == RecordKind::Registration {
        let found = registrations::read(client, service, key).await?;
        return Ok(found.map(StoredRecord::into_record));
    }
    let params: [&(dyn ToSql + Sync); 2] = [&service, &key];
    let found = select(client, sealer, service, kind, "{k} = $2", &params).await?;
    Ok(found.into_iter().next())
}

/// A page of records of `kind` in key order.
pub(super) async fn page<C: GenericClient>(
    client: &C,
    sealer: &Sealer,
    kind: RecordKind,
    page: &Page,
) -> Result<Vec<Record>, StoreError> {
    if kind == RecordKind::Registration {
        let page = registrations::page(client, None, page).await?;
        return Ok(page.into_iter().map(StoredRecord::into_record).collect());
    }
    let (service, after) = (page.service.as_str(), page.after_key());
    let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 3] = [&service, &after, &limit];
    let filter = "{k} > $2 ORDER BY {k} LIMIT $3";
    select(client, sealer, service, kind, filter, &params).await
}

/// The individual enrollments whose client certificate has the SHA-256
/// thumbprint `print` (upper case), by registration ID.
pub(super) async fn by_thumbprint<C: GenericClient>(
    client: &C,
    sealer: &Sealer,
    service: &str,
    print: &str,
) -> Result<Vec<IndividualEnrollment>, StoreError> {
    let rows = query(
        client,
        "SELECT e.id_key, e.doc, e.keys_sealed FROM enrollment_thumbprints t
         JOIN enrollments e ON e.service = t.service AND e.id_key = t.id_key
         WHERE t.service = $1 AND t.thumbprint = $2 ORDER BY e.id_key",
        &[&service, &print],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let key: String = col(r, 0)?;
            let doc: String = col(r, 1)?;
            open::<IndividualEnrollment>(sealer, service, &key, &doc, col(r, 2)?)
        })
        .collect()
}

/// How PostgreSQL writes a prepared record: in a transaction that locks
/// the row it checks.
impl RecordWrite {
    /// Whether the write is one statement with no condition to check (a
    /// registration's, on the hot path): no transaction needed.
    pub(super) fn is_single_statement(&self, condition: &Precondition) -> bool {
        matches!(self, RecordWrite::Registration(..)) && *condition == Precondition::None
    }

    /// Writes it inside `tx` if `condition` holds.
    pub(super) async fn apply_in<C: GenericClient>(
        self,
        tx: &C,
        service: &str,
        condition: &Precondition,
    ) -> Result<Record, StoreError> {
        let create_only = *condition == Precondition::IfNotExists;
        Ok(match self {
            RecordWrite::Enrollment(w) => write_enrollment(tx, service, *w, condition)
                .await?
                .into_record(),
            RecordWrite::EnrollmentGroup(w) => write_enrollment(tx, service, *w, condition)
                .await?
                .into_record(),
            RecordWrite::Registration(r, now) => {
                if *condition != Precondition::None {
                    let what = format!("'{}'", r.state.registration_id);
                    let key = r.state.registration_id.to_ascii_lowercase();
                    lock_and_check(
                        tx,
                        REGISTRATIONS,
                        service,
                        &key,
                        condition,
                        &what,
                        Order::ConditionFirst,
                    )
                    .await?;
                }
                registrations::write(tx, service, *r, now, create_only)
                    .await?
                    .into_record()
            }
            RecordWrite::CaCertificate(c) => {
                let key = c.name.to_ascii_lowercase();
                let what = format!("CA certificate '{}'", c.name);
                let t = CA_CERTIFICATES;
                lock_and_check(tx, t, service, &key, condition, &what, Order::ServiceFirst).await?;
                let etag = c
                    .etag
                    .as_ref()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default();
                let mut doc_form = (*c).clone();
                doc_form.etag = None;
                let doc = serde_json::to_string(&doc_form).map_err(|e| corrupt(&what, e))?;
                let n = execute(
                    tx,
                    &upsert_sql(t, &["etag", "doc"], create_only),
                    &[&service, &key, &etag, &doc],
                )
                .await
                .map_err(pg_error_in(service))?;
                created_or_exists(n, &what)?;
                c.into_record()
            }
            RecordWrite::LinkedHub(sealed, hub) => {
                let what = format!("linked hub '{}'", hub.name);
                let t = LINKED_HUBS;
                let key = sealed.key.as_str();
                lock_and_check(tx, t, service, key, condition, &what, Order::ConditionFirst)
                    .await?;
                let n = execute(
                    tx,
                    &upsert_sql(t, &["doc", "connection_sealed"], create_only),
                    &[&service, &key, &sealed.doc, &sealed.connection],
                )
                .await
                .map_err(pg_error_in(service))?;
                created_or_exists(n, &what)?;
                hub.into_record()
            }
            RecordWrite::TpmChallenge(w) => {
                let what = format!("'{}'", w.challenge.registration_id);
                let t = TPM_CHALLENGES;
                lock_and_check(
                    tx,
                    t,
                    service,
                    &w.key,
                    condition,
                    &what,
                    Order::ConditionFirst,
                )
                .await?;
                let etag = new_etag();
                let n = execute(
                    tx,
                    &upsert_sql(t, &["etag", "doc", "keys_sealed"], create_only),
                    &[&service, &w.key, &etag.as_str(), &w.doc, &w.sealed],
                )
                .await
                .map_err(pg_error_in(service))?;
                created_or_exists(n, &what)?;
                w.challenge.into_record()
            }
        })
    }
}

/// Writes an enrollment or group if `condition` holds, keeping the creation
/// time of the record it replaces (and, for an individual enrollment, its
/// thumbprint index rows); returns it as stored.
async fn write_enrollment<C: GenericClient, E: EnrollmentRecord>(
    tx: &C,
    service: &str,
    mut write: EnrollmentWrite<E>,
    condition: &Precondition,
) -> Result<E, StoreError> {
    let t = match E::KIND {
        EnrollmentKind::Individual => ENROLLMENTS,
        EnrollmentKind::Group => GROUPS,
    };
    let current = lock_and_check(
        tx,
        t,
        service,
        &write.key,
        condition,
        &write.what,
        Order::ServiceFirst,
    )
    .await?;
    let (doc, etag) = write.row(current.as_deref())?;
    let n = execute(
        tx,
        &upsert_sql(
            t,
            &["etag", "doc", "keys_sealed"],
            *condition == Precondition::IfNotExists,
        ),
        &[&service, &write.key, &etag, &doc, &write.sealed],
    )
    .await
    .map_err(pg_error_in(service))?;
    created_or_exists(n, &write.what)?;
    if E::KIND == EnrollmentKind::Individual {
        execute(
            tx,
            "DELETE FROM enrollment_thumbprints WHERE service = $1 AND id_key = $2",
            &[&service, &write.key],
        )
        .await
        .map_err(pg_error)?;
        for print in &write.thumbprints {
            execute(
                tx,
                "INSERT INTO enrollment_thumbprints (service, thumbprint, id_key) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&service, print, &write.key],
            )
            .await
            .map_err(pg_error)?;
        }
    }
    Ok(write.stored)
}

/// Deletes the record of `kind` under `key` if `condition` holds.
pub(super) async fn delete<C: GenericClient>(
    tx: &C,
    at: &RecordAt,
    condition: &Precondition,
) -> Result<(), StoreError> {
    let (kind, key) = (at.kind, &at.key);
    let what = match kind {
        RecordKind::CaCertificate => format!("CA certificate '{key}'"),
        RecordKind::LinkedHub => format!("linked hub '{key}'"),
        _ => format!("'{key}'"),
    };
    delete_row(
        tx,
        table(kind),
        &at.service,
        key,
        condition,
        &what,
        at.missing(),
    )
    .await
}
