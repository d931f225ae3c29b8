//! The PostgreSQL store: several Onramp nodes on one database.
//!
//! One concept a file, as in `sqlite/`: `db` (the pool, errors, the
//! numbered schema steps), `rows` (what the keyed tables share and the
//! locked read of a conditional write), `services`, `records` (the records
//! a service owns), `registrations` (with the one statement a
//! registration's reads are) and `diagnostics`. Documents, sealing and stamping are the
//! embedded store's own functions, so a secret is sealed the same way, with
//! the same associated data, in both.
//!
//! Conditional writes run in a transaction that locks the row they check
//! (`SELECT … FOR UPDATE`), so an `If-Match` holds against writers on other
//! nodes; a create-only write inserts with `ON CONFLICT DO NOTHING`. Every
//! session commits with `synchronous_commit = on`: a write has reached the
//! database's disk before its call returns.

mod db;
mod diagnostics;
mod keys;
mod operations;
mod records;
mod registrations;
mod rows;
mod services;

pub use db::{PgOptions, redact};

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use onramp_core::ports::{
    DeviceAt, GroupPage, HubLatencySample, Page, Precondition, PutRecord, Record, RecordAt,
    RecordKind, RegistrationInputs, RegistrationLookup, RegistrationRecord, RunningOperation,
    Store, StoreError,
};
use onramp_core::tenant::{ProvisioningService, SharedAccessPolicy};
use onramp_model::{IdKey, IndividualEnrollment};

use crate::record::RecordWrite;
use crate::seal::{SealError, Sealer};
use crate::sqlite::rows::corrupt;
use crate::sqlite::services::{NewService, SealedPolicy};
use db::{connection, pg_error};

/// Whether a store URL names PostgreSQL (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

pub struct PgStore {
    pool: Pool,
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("max_connections", &self.pool.status().max_size)
            .finish()
    }
}

impl PgStore {
    /// Connects to `url` and brings its schema up to date (once, whatever
    /// the number of nodes starting at the same time).
    pub async fn open(
        url: &str,
        sealer: Arc<Sealer>,
        options: PgOptions,
    ) -> Result<Self, StoreError> {
        let pool = db::pool(url, options)?;
        db::migrate(&pool).await.map_err(|e| match e {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                "opening the PostgreSQL store {}: {m}",
                redact(url)
            )),
            other => other,
        })?;
        check_master_keys(&pool, &sealer).await?;
        Ok(Self { pool, sealer })
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let conn = connection(&self.pool).await?;
        let row = conn
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg_error)?;
        row.try_get(0).map_err(pg_error)
    }
}

/// What the master key check is bound to.
const KEY_CHECK_AAD: &str = "master-key-check";

/// Refuses a node whose master keys cannot open what the database's first
/// node sealed (and seals that value, on a new database): nodes on one
/// database must share their keys, or each would seal secrets the others
/// cannot read.
async fn check_master_keys(pool: &Pool, sealer: &Sealer) -> Result<(), StoreError> {
    let conn = connection(pool).await?;
    let ours = sealer.seal(b"onramp", KEY_CHECK_AAD);
    conn.execute(
        "INSERT INTO master_key_check (id, sealed) VALUES (1, $1) ON CONFLICT DO NOTHING",
        &[&ours],
    )
    .await
    .map_err(pg_error)?;
    let row = conn
        .query_one("SELECT sealed FROM master_key_check WHERE id = 1", &[])
        .await
        .map_err(pg_error)?;
    let sealed: Vec<u8> = row.try_get(0).map_err(pg_error)?;
    match sealer.open(&sealed, KEY_CHECK_AAD) {
        Ok(_) => Ok(()),
        Err(SealError::UnknownKey(id)) => Err(StoreError::Corrupt(format!(
            "this database's secrets are sealed with master key '{id}', which this node's key \
             ring lacks (its active key is '{}'): give every node on one database the same \
             keys (copy the key files of <data>/keys, or set the same ONRAMP_MASTER_KEY)",
            sealer.active_key_id()
        ))),
        Err(e) => Err(StoreError::Corrupt(format!("the master key check: {e}"))),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_service(
        &self,
        service: &ProvisioningService,
        policies: &[SharedAccessPolicy],
    ) -> Result<(), StoreError> {
        let new = NewService::seal(&self.sealer, service, policies)?;
        services::create(&self.pool, new).await
    }

    async fn service(&self, name: &str) -> Result<Option<ProvisioningService>, StoreError> {
        services::one(&self.pool, "SELECT doc FROM services WHERE name = $1", name).await
    }

    async fn service_by_scope(
        &self,
        id_scope_key: &IdKey,
    ) -> Result<Option<ProvisioningService>, StoreError> {
        services::one(
            &self.pool,
            "SELECT doc FROM services WHERE id_scope_key = $1",
            id_scope_key,
        )
        .await
    }

    async fn services(&self) -> Result<Vec<ProvisioningService>, StoreError> {
        services::all(&self.pool).await
    }

    async fn update_service(&self, service: &ProvisioningService) -> Result<(), StoreError> {
        let doc = serde_json::to_string(service).map_err(|e| corrupt("service", e))?;
        let scope_key = service.id_scope.key();
        services::update(&self.pool, &service.name, &scope_key, &doc).await
    }

    async fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        services::delete(&self.pool, name).await
    }

    async fn policies(&self, service: &str) -> Result<Vec<SharedAccessPolicy>, StoreError> {
        services::policies_of(&self.pool, &self.sealer, service).await
    }

    async fn put_policy(
        &self,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<(), StoreError> {
        let sealed = SealedPolicy::seal(&self.sealer, service, policy)?;
        services::put_policy(&self.pool, service, &sealed).await
    }

    async fn delete_policy(&self, service: &str, name: &str) -> Result<bool, StoreError> {
        services::delete_policy(&self.pool, service, name).await
    }

    async fn policies_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
        services::policies_called(&self.pool, &self.sealer, name).await
    }

    async fn record(&self, at: &RecordAt) -> Result<Option<Record>, StoreError> {
        let conn = connection(&self.pool).await?;
        records::read(&conn, &self.sealer, at).await
    }

    async fn put_record(&self, service: &str, put: PutRecord) -> Result<Record, StoreError> {
        let PutRecord {
            record,
            condition,
            now,
        } = put;
        let write = RecordWrite::prepare(&self.sealer, service, record, now)?;
        let mut conn = connection(&self.pool).await?;
        if write.is_single_statement(&condition) {
            return write.apply_in(&conn, service, &condition).await;
        }
        let tx = conn.transaction().await.map_err(pg_error)?;
        let written = write.apply_in(&tx, service, &condition).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(written)
    }

    async fn delete_record(
        &self,
        at: &RecordAt,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let mut conn = connection(&self.pool).await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        records::delete(&tx, at, &condition).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn put_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError> {
        let conn = connection(&self.pool).await?;
        operations::put(&conn, service, op).await
    }

    async fn operation(&self, device: &DeviceAt) -> Result<Option<RunningOperation>, StoreError> {
        let conn = connection(&self.pool).await?;
        operations::read(&conn, &device.service, &device.key).await
    }

    async fn end_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError> {
        let conn = connection(&self.pool).await?;
        let key = IdKey::of(&op.registration_id);
        operations::end(&conn, service, &key, &op.operation_id).await
    }

    async fn records(&self, kind: RecordKind, page: &Page) -> Result<Vec<Record>, StoreError> {
        let conn = connection(&self.pool).await?;
        records::page(&conn, &self.sealer, kind, page).await
    }

    async fn enrollments_by_thumbprint(
        &self,
        service: &str,
        sha256: &str,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        let conn = connection(&self.pool).await?;
        let print = sha256.to_ascii_uppercase();
        records::by_thumbprint(&conn, &self.sealer, service, &print).await
    }

    async fn registration_inputs(
        &self,
        lookup: &RegistrationLookup,
    ) -> Result<Option<RegistrationInputs>, StoreError> {
        let conn = connection(&self.pool).await?;
        registrations::read_inputs(&conn, &self.sealer, lookup).await
    }

    async fn registrations_of_group(
        &self,
        group: &GroupPage,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let conn = connection(&self.pool).await?;
        registrations::page(&conn, Some(&group.group_key), &group.page).await
    }

    async fn count_devices_on_hub(&self, service: &str, hub: &str) -> Result<u64, StoreError> {
        let conn = connection(&self.pool).await?;
        let hub_key = hub.trim().to_ascii_lowercase();
        registrations::count_on_hub(&conn, service, &hub_key).await
    }

    async fn record_hub_latency(&self, sample: &HubLatencySample) -> Result<(), StoreError> {
        let doc = serde_json::to_string(sample).map_err(|e| corrupt("hub latency", e))?;
        let hub_key = sample.hub.to_ascii_lowercase();
        let conn = connection(&self.pool).await?;
        services::record_latency(&conn, &sample.node, &hub_key, &doc).await
    }

    async fn hub_latencies(&self) -> Result<Vec<HubLatencySample>, StoreError> {
        services::latencies(&self.pool).await
    }
}
