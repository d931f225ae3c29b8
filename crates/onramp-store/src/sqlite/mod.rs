//! The embedded store: one SQLite file in WAL mode.
//!
//! One concept a file: `services` (with policies, linked hubs and hub
//! latencies), `enrollments` (individual and groups), `registrations`,
//! `certificates`, `diagnostics`; `rows` holds what their rows share and `migrations` the
//! schema. Their functions run on a connection the `db` threads lend; the
//! `Store` impl below hands each call to one of them.

pub(crate) mod certificates;
pub(crate) mod challenges;
mod db;
mod diagnostics;
pub(crate) mod enrollments;
mod keys;
mod migrations;
pub(crate) mod operations;
pub(crate) mod registrations;
pub(crate) mod rows;
pub(crate) mod services;
#[cfg(test)]
mod tests;

// The hub crate keeps its own tables with the same group-commit machinery.
pub use db::{Db, sql_error};
pub use rows::{query_all, query_optional};

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use onramp_core::ports::{
    DeviceAt, GroupPage, HubLatencySample, Page, Precondition, PutRecord, Record, RecordAt,
    RecordKind, RegistrationInputs, RegistrationLookup, RegistrationRecord, RunningOperation,
    Store, StoreError, StoredRecord, check_precondition,
};
use onramp_core::tenant::{ProvisioningService, SharedAccessPolicy};
use onramp_model::{ETag, EnrollmentGroup, EnrollmentKind, IdKey, IndividualEnrollment};
use rusqlite::Connection;

pub use db::Durability;

use crate::record::RecordWrite;
use crate::seal::Sealer;
use challenges::TPM_CHALLENGES;
use registrations::REGISTRATIONS;
use rows::{check_row, corrupt, delete_row};
use services::{NewService, SealedPolicy};

/// Tuning of the embedded store.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    pub readers: usize,
    pub durability: Durability,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            readers: 3,
            durability: Durability::Full,
        }
    }
}

pub struct SqliteStore {
    db: Db,
    sealer: Arc<Sealer>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(
        path: &Path,
        sealer: Arc<Sealer>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            onramp_files::create_dir(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Db::open(
            path,
            options.readers,
            options.durability,
            migrations::migrate,
        )?;
        Ok(Self { db, sealer })
    }

    /// Runs `f` on a reader thread with the sealer (reads that open secrets).
    async fn read_sealed<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Sealer) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let sealer = self.sealer.clone();
        self.db.read(move |conn| f(conn, &sealer)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_service(
        &self,
        service: &ProvisioningService,
        policies: &[SharedAccessPolicy],
    ) -> Result<(), StoreError> {
        let new = NewService::seal(&self.sealer, service, policies)?;
        self.db.write(move |conn| new.insert(conn)).await
    }

    async fn service(&self, name: &str) -> Result<Option<ProvisioningService>, StoreError> {
        let name = name.to_owned();
        self.db
            .read(move |conn| services::by_name(conn, &name))
            .await
    }

    async fn service_by_scope(
        &self,
        id_scope_key: &IdKey,
    ) -> Result<Option<ProvisioningService>, StoreError> {
        let key = id_scope_key.clone();
        self.db
            .read(move |conn| services::by_scope(conn, &key))
            .await
    }

    async fn services(&self) -> Result<Vec<ProvisioningService>, StoreError> {
        self.db.read(services::all).await
    }

    async fn update_service(&self, service: &ProvisioningService) -> Result<(), StoreError> {
        let doc = serde_json::to_string(service).map_err(|e| corrupt("service", e))?;
        let name = service.name.clone();
        let scope_key = service.id_scope.key();
        self.db
            .write(move |conn| services::update(conn, &name, &scope_key, &doc))
            .await
    }

    async fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.db
            .write(move |conn| services::delete(conn, &name))
            .await
    }

    async fn policies(&self, service: &str) -> Result<Vec<SharedAccessPolicy>, StoreError> {
        let service = service.to_owned();
        self.read_sealed(move |conn, sealer| services::policies_of(conn, sealer, &service))
            .await
    }

    async fn put_policy(
        &self,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<(), StoreError> {
        let sealed = SealedPolicy::seal(&self.sealer, service, policy)?;
        let service = service.to_owned();
        self.db
            .write(move |conn| sealed.upsert(conn, &service))
            .await
    }

    async fn delete_policy(&self, service: &str, name: &str) -> Result<bool, StoreError> {
        let (service, name) = (service.to_owned(), name.to_owned());
        self.db
            .write(move |conn| services::delete_policy(conn, &service, &name))
            .await
    }

    async fn policies_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
        let name = name.to_owned();
        self.read_sealed(move |conn, sealer| services::policies_called(conn, sealer, &name))
            .await
    }

    async fn record(&self, at: &RecordAt) -> Result<Option<Record>, StoreError> {
        let at = at.clone();
        self.read_sealed(move |conn, sealer| read_record(conn, sealer, &at))
            .await
    }

    async fn put_record(&self, service: &str, put: PutRecord) -> Result<Record, StoreError> {
        let write = RecordWrite::prepare(&self.sealer, service, put.record, put.now)?;
        let (service, condition) = (service.to_owned(), put.condition);
        self.db
            .write(move |conn| write.apply(conn, &service, &condition))
            .await
    }

    async fn delete_record(
        &self,
        at: &RecordAt,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let at = at.clone();
        self.db
            .write(move |conn| delete_record(conn, &at, &condition))
            .await
    }

    async fn put_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError> {
        let (service, op) = (service.to_owned(), op.clone());
        self.db
            .write(move |conn| operations::put(conn, &service, &op))
            .await
    }

    async fn operation(&self, device: &DeviceAt) -> Result<Option<RunningOperation>, StoreError> {
        let device = device.clone();
        self.db
            .read(move |conn| operations::read(conn, &device.service, &device.key))
            .await
    }

    async fn end_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError> {
        let (service, key) = (service.to_owned(), IdKey::of(&op.registration_id));
        let op = op.operation_id.clone();
        self.db
            .write(move |conn| operations::end(conn, &service, &key, &op))
            .await
    }

    async fn records(&self, kind: RecordKind, page: &Page) -> Result<Vec<Record>, StoreError> {
        let page = page.clone();
        self.read_sealed(move |conn, sealer| read_records(conn, sealer, kind, &page))
            .await
    }

    async fn enrollments_by_thumbprint(
        &self,
        service: &str,
        sha256: &str,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        let (service, print) = (service.to_owned(), sha256.to_ascii_uppercase());
        self.read_sealed(move |conn, sealer| {
            enrollments::read_by_thumbprint(conn, sealer, &service, &print)
        })
        .await
    }

    async fn registration_inputs(
        &self,
        lookup: &RegistrationLookup,
    ) -> Result<Option<RegistrationInputs>, StoreError> {
        let lookup = lookup.clone();
        self.read_sealed(move |conn, sealer| registrations::read_inputs(conn, sealer, &lookup))
            .await
    }

    async fn registrations_of_group(
        &self,
        group: &GroupPage,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let GroupPage { group_key, page } = group.clone();
        self.db
            .read(move |conn| registrations::page(conn, Some(&group_key), &page))
            .await
    }

    async fn count_devices_on_hub(&self, service: &str, hub: &str) -> Result<u64, StoreError> {
        let (service, hub_key) = (service.to_owned(), hub.trim().to_ascii_lowercase());
        self.db
            .read(move |conn| registrations::count_on_hub(conn, &service, &hub_key))
            .await
    }

    async fn record_hub_latency(&self, sample: &HubLatencySample) -> Result<(), StoreError> {
        let doc = serde_json::to_string(sample).map_err(|e| corrupt("hub latency", e))?;
        let (node, hub_key) = (sample.node.clone(), sample.hub.to_ascii_lowercase());
        self.db
            .write(move |conn| services::record_latency(conn, &node, &hub_key, &doc))
            .await
    }

    async fn hub_latencies(&self) -> Result<Vec<HubLatencySample>, StoreError> {
        self.db.read(services::latencies).await
    }
}

/// Reads one record.
fn read_record(
    conn: &Connection,
    sealer: &Sealer,
    at: &RecordAt,
) -> Result<Option<Record>, StoreError> {
    let (service, key) = (at.service.as_str(), &at.key);
    Ok(match at.kind {
        RecordKind::Enrollment => {
            enrollments::read_one::<IndividualEnrollment>(conn, sealer, service, key)?
                .map(StoredRecord::into_record)
        }
        RecordKind::EnrollmentGroup => {
            enrollments::read_one::<EnrollmentGroup>(conn, sealer, service, key)?
                .map(StoredRecord::into_record)
        }
        RecordKind::Registration => {
            registrations::read_registration(conn, service, key)?.map(StoredRecord::into_record)
        }
        RecordKind::CaCertificate => {
            certificates::read_one(conn, service, key)?.map(StoredRecord::into_record)
        }
        RecordKind::LinkedHub => services::linked_hubs_of(conn, sealer, service, Some(key))?
            .pop()
            .map(StoredRecord::into_record),
        RecordKind::TpmChallenge => {
            challenges::read_one(conn, sealer, service, key)?.map(StoredRecord::into_record)
        }
    })
}

/// A page of records of `kind`.
fn read_records(
    conn: &Connection,
    sealer: &Sealer,
    kind: RecordKind,
    page: &Page,
) -> Result<Vec<Record>, StoreError> {
    fn all<T: StoredRecord>(records: Vec<T>) -> Vec<Record> {
        records.into_iter().map(T::into_record).collect()
    }
    let (service, after, limit) = (page.service.as_str(), page.after_key(), page.limit);
    Ok(match kind {
        RecordKind::Enrollment => all(enrollments::read_page::<IndividualEnrollment>(
            conn, sealer, service, after, limit,
        )?),
        RecordKind::EnrollmentGroup => all(enrollments::read_page::<EnrollmentGroup>(
            conn, sealer, service, after, limit,
        )?),
        RecordKind::Registration => all(registrations::page(conn, None, page)?),
        // A service has a handful of these: paged here, not in SQL.
        RecordKind::CaCertificate => all(certificates::read_all(conn, service)?)
            .into_iter()
            .filter(|r| r.key().as_str() > after)
            .take(limit)
            .collect(),
        RecordKind::LinkedHub => all(services::linked_hubs_of(conn, sealer, service, None)?)
            .into_iter()
            .filter(|r| r.key().as_str() > after)
            .take(limit)
            .collect(),
        RecordKind::TpmChallenge => {
            all(challenges::read_page(conn, sealer, service, after, limit)?)
        }
    })
}

/// How the embedded store writes a prepared record: the writer thread is
/// the only writer, so a check and the write after it are one step.
impl RecordWrite {
    fn apply(
        self,
        conn: &Connection,
        service: &str,
        condition: &Precondition,
    ) -> Result<Record, StoreError> {
        Ok(match self {
            RecordWrite::Enrollment(w) => w.apply(conn, service, condition)?.into_record(),
            RecordWrite::EnrollmentGroup(w) => w.apply(conn, service, condition)?.into_record(),
            RecordWrite::Registration(r, now) => {
                check_row(
                    conn,
                    REGISTRATIONS,
                    service,
                    &r.state.registration_id,
                    condition,
                )?;
                registrations::write(conn, service, *r, now)?.into_record()
            }
            RecordWrite::CaCertificate(c) => {
                certificates::write(conn, service, *c, condition)?.into_record()
            }
            RecordWrite::LinkedHub(sealed, hub) => {
                let exists = services::has_linked_hub(conn, service, sealed.key())?;
                check_existence(exists, condition, &format!("linked hub '{}'", hub.name))?;
                sealed.upsert(conn, service)?;
                hub.into_record()
            }
            RecordWrite::TpmChallenge(w) => {
                check_row(
                    conn,
                    TPM_CHALLENGES,
                    service,
                    w.registration_id(),
                    condition,
                )?;
                w.apply(conn, service)?.into_record()
            }
        })
    }
}

fn delete_record(
    conn: &Connection,
    at: &RecordAt,
    condition: &Precondition,
) -> Result<(), StoreError> {
    let (service, kind, key) = (at.service.as_str(), at.kind, &at.key);
    let table = match kind {
        RecordKind::Enrollment => enrollments::table(EnrollmentKind::Individual),
        RecordKind::EnrollmentGroup => enrollments::table(EnrollmentKind::Group),
        RecordKind::Registration => REGISTRATIONS,
        RecordKind::TpmChallenge => TPM_CHALLENGES,
        RecordKind::CaCertificate => {
            return certificates::delete(conn, service, key, condition);
        }
        RecordKind::LinkedHub => {
            let exists = services::has_linked_hub(conn, service, key)?;
            if !exists {
                return Err(StoreError::NotFound(at.missing()));
            }
            check_existence(exists, condition, &format!("linked hub '{key}'"))?;
            return services::delete_linked_hub(conn, service, key).map(drop);
        }
    };
    delete_row(conn, table, service, key, condition, at.missing())
}

/// Applies a condition to a record without an ETag (linked hubs): `*` or
/// nothing, and create-only.
fn check_existence(exists: bool, condition: &Precondition, what: &str) -> Result<(), StoreError> {
    let current = exists.then(|| ETag::from_raw("*"));
    check_precondition(current.as_ref(), condition, what)
}
