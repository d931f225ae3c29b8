//! The embedded store: one SQLite file in WAL mode.
//!
//! One concept a file: `services` (with policies, linked hubs and hub
//! latencies), `enrollments` (individual and groups), `registrations`,
//! `certificates`; `rows` holds what their rows share and `migrations` the
//! schema. Their functions run on a connection the `db` threads lend; the
//! `Store` impl below hands each call to one of them.

mod certificates;
mod db;
mod enrollments;
mod migrations;
mod registrations;
mod rows;
mod services;
#[cfg(test)]
mod tests;

// The hub crate keeps its own tables with the same group-commit machinery.
pub use db::{Db, sql_error};
pub use rows::{query_all, query_optional};

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use onramp_core::ports::{
    HubLatencySample, Precondition, RegistrationInputs, RegistrationRecord, Store, StoreError,
};
use onramp_core::tenant::{CaCertificate, LinkedHub, ProvisioningService, SharedAccessPolicy};
use onramp_model::{EnrollmentGroup, IndividualEnrollment, UtcTime};

pub use db::Durability;

use crate::seal::Sealer;
use enrollments::{ENROLLMENTS, EnrollmentWrite, GROUPS, GroupWrite};
use registrations::REGISTRATIONS;
use rows::{corrupt, delete_row};
use services::{NewService, SealedHub, SealedPolicy};

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
            crate::private::create_dir(dir).map_err(|e| {
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

    /// Deletes a keyed row of `table` if `condition` holds for its ETag.
    async fn delete_keyed(
        &self,
        table: &'static str,
        service: &str,
        key: &str,
        condition: Precondition,
        missing: String,
    ) -> Result<(), StoreError> {
        let (service, key) = (service.to_owned(), key.to_owned());
        self.db
            .write(move |conn| delete_row(conn, table, &service, &key, &condition, missing))
            .await
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
        id_scope_key: &str,
    ) -> Result<Option<ProvisioningService>, StoreError> {
        let key = id_scope_key.to_owned();
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
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| services::policies_of(conn, &sealer, &service))
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

    async fn policies_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
        let name = name.to_owned();
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| services::policies_called(conn, &sealer, &name))
            .await
    }

    async fn linked_hubs(&self, service: &str) -> Result<Vec<LinkedHub>, StoreError> {
        let service = service.to_owned();
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| services::linked_hubs_of(conn, &sealer, &service))
            .await
    }

    async fn put_linked_hub(&self, service: &str, hub: &LinkedHub) -> Result<(), StoreError> {
        let sealed = SealedHub::seal(&self.sealer, service, hub)?;
        let service = service.to_owned();
        self.db
            .write(move |conn| sealed.upsert(conn, &service))
            .await
    }

    async fn delete_linked_hub(&self, service: &str, name: &str) -> Result<bool, StoreError> {
        let (service, key) = (service.to_owned(), name.to_ascii_lowercase());
        self.db
            .write(move |conn| services::delete_linked_hub(conn, &service, &key))
            .await
    }

    async fn enrollment(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<IndividualEnrollment>, StoreError> {
        let (service, key) = (service.to_owned(), id_key.to_owned());
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| enrollments::read_enrollment(conn, &sealer, &service, &key))
            .await
    }

    async fn put_enrollment(
        &self,
        service: &str,
        enrollment: &IndividualEnrollment,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<IndividualEnrollment, StoreError> {
        let write = EnrollmentWrite::seal(&self.sealer, service, enrollment, now)?;
        let service = service.to_owned();
        self.db
            .write(move |conn| write.apply(conn, &service, &condition))
            .await
    }

    async fn delete_enrollment(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        self.delete_keyed(
            ENROLLMENTS,
            service,
            id_key,
            condition,
            format!("no individual enrollment has registration ID '{id_key}'"),
        )
        .await
    }

    async fn enrollments_by_thumbprint(
        &self,
        service: &str,
        sha256: &str,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        let (service, print) = (service.to_owned(), sha256.to_ascii_uppercase());
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| enrollments::read_by_thumbprint(conn, &sealer, &service, &print))
            .await
    }

    async fn ca_certificate(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<CaCertificate>, StoreError> {
        let (service, key) = (service.to_owned(), name.to_ascii_lowercase());
        self.db
            .read(move |conn| certificates::read_one(conn, &service, &key))
            .await
    }

    async fn ca_certificates(&self, service: &str) -> Result<Vec<CaCertificate>, StoreError> {
        let service = service.to_owned();
        self.db
            .read(move |conn| certificates::read_all(conn, &service))
            .await
    }

    async fn put_ca_certificate(
        &self,
        service: &str,
        certificate: &CaCertificate,
        condition: Precondition,
    ) -> Result<CaCertificate, StoreError> {
        let stored = certificates::stamp(certificate);
        let service = service.to_owned();
        self.db
            .write(move |conn| certificates::write(conn, &service, stored, &condition))
            .await
    }

    async fn delete_ca_certificate(
        &self,
        service: &str,
        name: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let (service, name) = (service.to_owned(), name.to_owned());
        self.db
            .write(move |conn| certificates::delete(conn, &service, &name, &condition))
            .await
    }

    async fn enrollments(
        &self,
        service: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        let (service, after) = (service.to_owned(), after_key.unwrap_or("").to_owned());
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| enrollments::read_enrollments(conn, &sealer, &service, &after, limit))
            .await
    }

    async fn enrollment_group(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<EnrollmentGroup>, StoreError> {
        let (service, key) = (service.to_owned(), id_key.to_owned());
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| enrollments::read_group(conn, &sealer, &service, &key))
            .await
    }

    async fn put_enrollment_group(
        &self,
        service: &str,
        group: &EnrollmentGroup,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<EnrollmentGroup, StoreError> {
        let write = GroupWrite::seal(&self.sealer, service, group, now)?;
        let service = service.to_owned();
        self.db
            .write(move |conn| write.apply(conn, &service, &condition))
            .await
    }

    async fn delete_enrollment_group(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        self.delete_keyed(
            GROUPS,
            service,
            id_key,
            condition,
            format!("no enrollment group has ID '{id_key}'"),
        )
        .await
    }

    async fn enrollment_groups(
        &self,
        service: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EnrollmentGroup>, StoreError> {
        let (service, after) = (service.to_owned(), after_key.unwrap_or("").to_owned());
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| enrollments::read_groups(conn, &sealer, &service, &after, limit))
            .await
    }

    async fn registration(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        let (service, key) = (service.to_owned(), id_key.to_owned());
        self.db
            .read(move |conn| registrations::read_registration(conn, &service, &key))
            .await
    }

    async fn registration_inputs(
        &self,
        id_scope_key: &str,
        registration_key: &str,
        group_page: usize,
    ) -> Result<Option<RegistrationInputs>, StoreError> {
        let (scope, key) = (id_scope_key.to_owned(), registration_key.to_owned());
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| registrations::read_inputs(conn, &sealer, &scope, &key, group_page))
            .await
    }

    async fn put_registration(
        &self,
        service: &str,
        record: &RegistrationRecord,
        now: UtcTime,
    ) -> Result<RegistrationRecord, StoreError> {
        let stored = registrations::stamp(record, now);
        let service = service.to_owned();
        self.db
            .write(move |conn| registrations::write(conn, &service, stored, now))
            .await
    }

    async fn delete_registration(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        self.delete_keyed(
            REGISTRATIONS,
            service,
            id_key,
            condition,
            format!("no device has registered with registration ID '{id_key}'"),
        )
        .await
    }

    async fn registrations_of_group(
        &self,
        service: &str,
        group_key: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let (service, group, after) = (
            service.to_owned(),
            group_key.to_owned(),
            after_key.unwrap_or("").to_owned(),
        );
        self.db
            .read(move |conn| registrations::of_group(conn, &service, &group, &after, limit))
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
