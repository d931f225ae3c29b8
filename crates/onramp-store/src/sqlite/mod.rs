//! The embedded store: one SQLite file in WAL mode.

mod db;

// The hub crate keeps its own tables with the same group-commit machinery.
pub use db::{Db, sql_error};

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use onramp_core::ports::{
    HubLatencySample, Precondition, RegistrationInputs, RegistrationRecord, Store, StoreError,
    check_precondition, client_thumbprints,
};
use onramp_core::tenant::{
    AccessRights, CaCertificate, LinkedHub, ProvisioningService, SharedAccessPolicy,
};
use onramp_model::{
    AttestationMechanism, DeviceRegistrationState, ETag, EnrollmentGroup, IndividualEnrollment,
    Secret, SymmetricKeyAttestation, UtcTime,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub use db::Durability;

use crate::seal::Sealer;

const SCHEMA_VERSION: i64 = 4;

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

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 1 {
        conn.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = 1; COMMIT;",
            include_str!("schema.sql")
        ))?;
    }
    if version < 2 {
        conn.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = 2; COMMIT;",
            include_str!("schema_v2.sql")
        ))?;
    }
    if version < 3 {
        conn.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = 3; COMMIT;",
            include_str!("schema_v3.sql")
        ))?;
    }
    if version < 4 {
        conn.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
            include_str!("schema_v4.sql")
        ))?;
    }
    Ok(())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn new_etag() -> ETag {
    let mut bytes = [0u8; 8];
    // Uniqueness is all an ETag needs; the system RNG failing is not recoverable.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    ETag::from_opaque(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The two keys of a policy, sealed together.
#[derive(Serialize, Deserialize)]
struct PolicyKeys {
    primary: Secret,
    secondary: Secret,
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
        let db = Db::open(path, options.readers, options.durability, migrate)?;
        Ok(Self { db, sealer })
    }

    /// Takes the symmetric keys out of an attestation and seals them.
    fn seal_keys(
        sealer: &Sealer,
        att: Option<&mut AttestationMechanism>,
        aad: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(keys) = att.and_then(|a| a.symmetric_key.as_mut()) else {
            return Ok(None);
        };
        let taken = SymmetricKeyAttestation {
            primary_key: keys.primary_key.take(),
            secondary_key: keys.secondary_key.take(),
        };
        let json = serde_json::to_vec(&taken).map_err(|e| corrupt("keys", e))?;
        Ok(Some(sealer.seal(&json, aad)))
    }

    fn unseal_keys(
        sealer: &Sealer,
        att: Option<&mut AttestationMechanism>,
        sealed: Option<Vec<u8>>,
        aad: &str,
    ) -> Result<(), StoreError> {
        let (Some(att), Some(sealed)) = (att, sealed) else {
            return Ok(());
        };
        let plain = sealer.open(&sealed, aad).map_err(|e| corrupt(aad, e))?;
        let keys: SymmetricKeyAttestation =
            serde_json::from_slice(&plain).map_err(|e| corrupt(aad, e))?;
        att.symmetric_key = Some(keys);
        Ok(())
    }
}

fn enrollment_aad(service: &str, key: &str) -> String {
    format!("enrollment:{service}/{key}")
}
fn group_aad(service: &str, key: &str) -> String {
    format!("group:{service}/{key}")
}
fn policy_aad(service: &str, name: &str) -> String {
    format!("policy:{service}/{name}")
}
fn hub_aad(service: &str, key: &str) -> String {
    format!("linked-hub:{service}/{key}")
}

fn read_service_by_scope(
    conn: &Connection,
    scope_key: &str,
) -> Result<Option<ProvisioningService>, StoreError> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM services WHERE id_scope_key = ?1")
        .and_then(|mut s| s.query_row([scope_key], |r| r.get(0)).optional())
        .map_err(sql_error)?;
    doc.map(|d| serde_json::from_str(&d).map_err(|e| corrupt("service", e)))
        .transpose()
}

fn read_linked_hubs(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
) -> Result<Vec<LinkedHub>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name_key, doc, connection_sealed FROM linked_hubs WHERE service = ?1 ORDER BY name_key",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map([service], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sql_error)?;
    rows.into_iter()
        .map(|(key, doc, sealed)| {
            let aad = hub_aad(service, &key);
            let mut hub: LinkedHub = serde_json::from_str(&doc).map_err(|e| corrupt(&aad, e))?;
            let plain = sealer.open(&sealed, &aad).map_err(|e| corrupt(&aad, e))?;
            hub.connection_string =
                Secret::new(String::from_utf8(plain).map_err(|e| corrupt(&aad, e))?);
            Ok(hub)
        })
        .collect()
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
    SqliteStore::unseal_keys(sealer, e.attestation.as_mut(), sealed, &aad)?;
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
    SqliteStore::unseal_keys(sealer, g.attestation.as_mut(), sealed, &aad)?;
    Ok(g)
}

fn read_enrollment(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    key: &str,
) -> Result<Option<IndividualEnrollment>, StoreError> {
    let row = get_row(conn, "enrollments", service, key)?;
    row.map(|(doc, sealed)| open_enrollment(sealer, service, key, &doc, sealed))
        .transpose()
}

fn read_enrollment_groups(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<EnrollmentGroup>, StoreError> {
    list_rows(conn, "enrollment_groups", service, after, limit)?
        .into_iter()
        .map(|(key, doc, sealed)| open_group(sealer, service, &key, &doc, sealed))
        .collect()
}

fn read_registration(
    conn: &Connection,
    service: &str,
    key: &str,
) -> Result<Option<RegistrationRecord>, StoreError> {
    conn.prepare_cached(
        "SELECT doc, group_key, operation_id, placement FROM registrations WHERE service = ?1 AND id_key = ?2",
    )
    .and_then(|mut s| s.query_row(params![service, key], RegistrationRow::read).optional())
    .map_err(sql_error)?
    .map(RegistrationRow::into_record)
    .transpose()
}

fn current_etag(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
) -> Result<Option<(ETag, String)>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT etag, doc FROM {table} WHERE service = ?1 AND id_key = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![service, key], |r| {
            Ok((
                ETag::from_raw(&r.get::<_, String>(0)?),
                r.get::<_, String>(1)?,
            ))
        })
        .optional()
    })
    .map_err(sql_error)
}

/// `createdDateTimeUtc` of a stored doc, kept across updates.
fn created_of(doc: &str) -> Option<UtcTime> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Created {
        created_date_time_utc: Option<UtcTime>,
    }
    serde_json::from_str::<Created>(doc)
        .ok()
        .and_then(|c| c.created_date_time_utc)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_service(
        &self,
        service: &ProvisioningService,
        policies: &[SharedAccessPolicy],
    ) -> Result<(), StoreError> {
        let doc = serde_json::to_string(service).map_err(|e| corrupt("service", e))?;
        let name = service.name.clone();
        let scope_key = service.id_scope.key();
        let sealed: Vec<(String, u8, Vec<u8>)> = policies
            .iter()
            .map(|p| {
                let keys = serde_json::to_vec(&PolicyKeys {
                    primary: p.primary_key.clone(),
                    secondary: p.secondary_key.clone(),
                })
                .map_err(|e| corrupt("policy", e))?;
                Ok((
                    p.name.clone(),
                    p.rights.bits(),
                    self.sealer.seal(&keys, &policy_aad(&service.name, &p.name)),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        self.db
            .write(move |conn| {
                let exists: bool = conn
                    .query_row(
                        "SELECT EXISTS(SELECT 1 FROM services WHERE name = ?1 OR id_scope_key = ?2)",
                        params![name, scope_key.as_str()],
                        |r| r.get(0),
                    )
                    .map_err(sql_error)?;
                if exists {
                    return Err(StoreError::AlreadyExists(format!(
                        "a provisioning service named '{name}' or with ID scope '{scope_key}' already exists"
                    )));
                }
                conn.execute("INSERT INTO services (name, id_scope_key, doc) VALUES (?1, ?2, ?3)", params![name, scope_key.as_str(), doc])
                    .map_err(sql_error)?;
                for (policy, rights, keys) in sealed {
                    conn.execute(
                        "INSERT INTO policies (service, name, rights, keys_sealed) VALUES (?1, ?2, ?3, ?4)",
                        params![name, policy, rights, keys],
                    )
                    .map_err(sql_error)?;
                }
                Ok(())
            })
            .await
    }

    async fn service(&self, name: &str) -> Result<Option<ProvisioningService>, StoreError> {
        let name = name.to_owned();
        self.db
            .read(move |conn| {
                let doc: Option<String> = conn
                    .prepare_cached("SELECT doc FROM services WHERE name = ?1")
                    .and_then(|mut s| s.query_row([&name], |r| r.get(0)).optional())
                    .map_err(sql_error)?;
                doc.map(|d| serde_json::from_str(&d).map_err(|e| corrupt("service", e)))
                    .transpose()
            })
            .await
    }

    async fn service_by_scope(
        &self,
        id_scope_key: &str,
    ) -> Result<Option<ProvisioningService>, StoreError> {
        let key = id_scope_key.to_owned();
        self.db
            .read(move |conn| read_service_by_scope(conn, &key))
            .await
    }

    async fn services(&self) -> Result<Vec<ProvisioningService>, StoreError> {
        self.db
            .read(|conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT doc FROM services ORDER BY name")
                    .map_err(sql_error)?;
                let docs = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                docs.iter()
                    .map(|d| serde_json::from_str(d).map_err(|e| corrupt("service", e)))
                    .collect()
            })
            .await
    }

    async fn update_service(&self, service: &ProvisioningService) -> Result<(), StoreError> {
        let doc = serde_json::to_string(service).map_err(|e| corrupt("service", e))?;
        let name = service.name.clone();
        let scope_key = service.id_scope.key();
        self.db
            .write(move |conn| {
                let n = conn
                    .execute(
                        "UPDATE services SET doc = ?2, id_scope_key = ?3 WHERE name = ?1",
                        params![name, doc, scope_key.as_str()],
                    )
                    .map_err(sql_error)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!(
                        "no provisioning service '{name}'"
                    )));
                }
                Ok(())
            })
            .await
    }

    async fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM services WHERE name = ?1", [&name])
                    .map(|n| n > 0)
                    .map_err(sql_error)
            })
            .await
    }

    async fn policies(&self, service: &str) -> Result<Vec<SharedAccessPolicy>, StoreError> {
        let service = service.to_owned();
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT name, rights, keys_sealed FROM policies WHERE service = ?1 ORDER BY name")
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map([&service], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u8>(1)?, r.get::<_, Vec<u8>>(2)?)))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.into_iter().map(|(name, rights, sealed)| open_policy(&sealer, &service, name, rights, &sealed)).collect()
            })
            .await
    }

    async fn put_policy(
        &self,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<(), StoreError> {
        let keys = serde_json::to_vec(&PolicyKeys {
            primary: policy.primary_key.clone(),
            secondary: policy.secondary_key.clone(),
        })
        .map_err(|e| corrupt("policy", e))?;
        let sealed = self.sealer.seal(&keys, &policy_aad(service, &policy.name));
        let (service, name, rights) = (
            service.to_owned(),
            policy.name.clone(),
            policy.rights.bits(),
        );
        self.db
            .write(move |conn| {
                ensure_service(conn, &service)?;
                conn.execute(
                    "INSERT INTO policies (service, name, rights, keys_sealed) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (service, name) DO UPDATE SET rights = excluded.rights, keys_sealed = excluded.keys_sealed",
                    params![service, name, rights, sealed],
                )
                .map(|_| ())
                .map_err(sql_error)
            })
            .await
    }

    async fn policies_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
        let name = name.to_owned();
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT service, rights, keys_sealed FROM policies WHERE name = ?1 ORDER BY service")
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map([&name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u8>(1)?, r.get::<_, Vec<u8>>(2)?)))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.into_iter()
                    .map(|(service, rights, sealed)| {
                        let p = open_policy(&sealer, &service, name.clone(), rights, &sealed)?;
                        Ok((service, p))
                    })
                    .collect()
            })
            .await
    }

    async fn linked_hubs(&self, service: &str) -> Result<Vec<LinkedHub>, StoreError> {
        let service = service.to_owned();
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| read_linked_hubs(conn, &sealer, &service))
            .await
    }

    async fn put_linked_hub(&self, service: &str, hub: &LinkedHub) -> Result<(), StoreError> {
        let key = hub.name.to_ascii_lowercase();
        let sealed = self.sealer.seal(
            hub.connection_string.expose().as_bytes(),
            &hub_aad(service, &key),
        );
        let mut doc_hub = hub.clone();
        doc_hub.connection_string = Secret::new("");
        let doc = serde_json::to_string(&doc_hub).map_err(|e| corrupt("linked hub", e))?;
        let service = service.to_owned();
        self.db
            .write(move |conn| {
                ensure_service(conn, &service)?;
                conn.execute(
                    "INSERT INTO linked_hubs (service, name_key, doc, connection_sealed) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (service, name_key) DO UPDATE SET doc = excluded.doc, connection_sealed = excluded.connection_sealed",
                    params![service, key, doc, sealed],
                )
                .map(|_| ())
                .map_err(sql_error)
            })
            .await
    }

    async fn delete_linked_hub(&self, service: &str, name: &str) -> Result<bool, StoreError> {
        let (service, key) = (service.to_owned(), name.to_ascii_lowercase());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM linked_hubs WHERE service = ?1 AND name_key = ?2",
                    params![service, key],
                )
                .map(|n| n > 0)
                .map_err(sql_error)
            })
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
            .read(move |conn| read_enrollment(conn, &sealer, &service, &key))
            .await
    }

    async fn put_enrollment(
        &self,
        service: &str,
        enrollment: &IndividualEnrollment,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<IndividualEnrollment, StoreError> {
        let key = enrollment.registration_id.to_ascii_lowercase();
        let aad = enrollment_aad(service, &key);
        let mut stored = enrollment.clone();
        stored.registration_state = None;
        stored.last_updated_date_time_utc = Some(now);
        stored.etag = Some(new_etag());
        let mut doc_form = stored.clone();
        let sealed = Self::seal_keys(&self.sealer, doc_form.attestation.as_mut(), &aad)?;
        let service = service.to_owned();
        let what = format!("enrollment '{}'", enrollment.registration_id);
        let thumbprints = client_thumbprints(enrollment);
        self.db
            .write(move |conn| {
                ensure_service(conn, &service)?;
                let current = current_etag(conn, "enrollments", &service, &key)?;
                check_precondition(current.as_ref().map(|(t, _)| t), &condition, &what)?;
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
                    "enrollments",
                    &service,
                    &key,
                    &etag,
                    &doc,
                    sealed.as_deref(),
                )?;
                index_thumbprints(conn, &service, &key, &thumbprints)?;
                Ok(stored)
            })
            .await
    }

    async fn delete_enrollment(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        delete_row(
            &self.db,
            "enrollments",
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
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT e.id_key, e.doc, e.keys_sealed FROM enrollment_thumbprints t
                         JOIN enrollments e ON e.service = t.service AND e.id_key = t.id_key
                         WHERE t.service = ?1 AND t.thumbprint = ?2 ORDER BY e.id_key",
                    )
                    .map_err(sql_error)?;
                let rows: Vec<Row> = stmt
                    .query_map(params![service, print], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.into_iter()
                    .map(|(key, doc, sealed)| {
                        open_enrollment(&sealer, &service, &key, &doc, sealed)
                    })
                    .collect()
            })
            .await
    }

    async fn ca_certificate(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<CaCertificate>, StoreError> {
        let (service, key) = (service.to_owned(), name.to_ascii_lowercase());
        self.db
            .read(move |conn| {
                let row: Option<(String, String)> = conn
                    .prepare_cached("SELECT doc, etag FROM ca_certificates WHERE service = ?1 AND name_key = ?2")
                    .and_then(|mut s| s.query_row(params![service, key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                    .map_err(sql_error)?;
                row.map(|(doc, etag)| ca_from_row(&doc, &etag)).transpose()
            })
            .await
    }

    async fn ca_certificates(&self, service: &str) -> Result<Vec<CaCertificate>, StoreError> {
        let service = service.to_owned();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT doc, etag FROM ca_certificates WHERE service = ?1 ORDER BY name_key")
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map([&service], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.iter().map(|(doc, etag)| ca_from_row(doc, etag)).collect()
            })
            .await
    }

    async fn put_ca_certificate(
        &self,
        service: &str,
        certificate: &CaCertificate,
        condition: Precondition,
    ) -> Result<CaCertificate, StoreError> {
        let (service, key) = (service.to_owned(), certificate.name.to_ascii_lowercase());
        let mut stored = certificate.clone();
        let etag = new_etag();
        stored.etag = Some(etag.clone());
        let what = format!("CA certificate '{}'", certificate.name);
        self.db
            .write(move |conn| {
                ensure_service(conn, &service)?;
                let current: Option<String> = conn
                    .prepare_cached("SELECT etag FROM ca_certificates WHERE service = ?1 AND name_key = ?2")
                    .and_then(|mut s| s.query_row(params![service, key], |r| r.get(0)).optional())
                    .map_err(sql_error)?;
                check_precondition(current.map(|c| ETag::from_raw(&c)).as_ref(), &condition, &what)?;
                let mut doc_form = stored.clone();
                doc_form.etag = None;
                let doc = serde_json::to_string(&doc_form).map_err(|e| corrupt(&what, e))?;
                conn.prepare_cached(
                    "INSERT INTO ca_certificates (service, name_key, etag, doc) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (service, name_key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc",
                )
                .and_then(|mut s| s.execute(params![service, key, etag.as_str(), doc]))
                .map_err(sql_error)?;
                Ok(stored)
            })
            .await
    }

    async fn delete_ca_certificate(
        &self,
        service: &str,
        name: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let (service, key, name) = (
            service.to_owned(),
            name.to_ascii_lowercase(),
            name.to_owned(),
        );
        self.db
            .write(move |conn| {
                let current: Option<String> = conn
                    .prepare_cached(
                        "SELECT etag FROM ca_certificates WHERE service = ?1 AND name_key = ?2",
                    )
                    .and_then(|mut s| s.query_row(params![service, key], |r| r.get(0)).optional())
                    .map_err(sql_error)?;
                let Some(current) = current else {
                    return Err(StoreError::NotFound(format!(
                        "no CA certificate is named '{name}'"
                    )));
                };
                check_precondition(
                    Some(&ETag::from_raw(&current)),
                    &condition,
                    &format!("CA certificate '{name}'"),
                )?;
                conn.execute(
                    "DELETE FROM ca_certificates WHERE service = ?1 AND name_key = ?2",
                    params![service, key],
                )
                .map(|_| ())
                .map_err(sql_error)
            })
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
            .read(move |conn| {
                list_rows(conn, "enrollments", &service, &after, limit)?
                    .into_iter()
                    .map(|(key, doc, sealed)| {
                        open_enrollment(&sealer, &service, &key, &doc, sealed)
                    })
                    .collect()
            })
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
            .read(move |conn| {
                let row = get_row(conn, "enrollment_groups", &service, &key)?;
                row.map(|(doc, sealed)| open_group(&sealer, &service, &key, &doc, sealed))
                    .transpose()
            })
            .await
    }

    async fn put_enrollment_group(
        &self,
        service: &str,
        group: &EnrollmentGroup,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<EnrollmentGroup, StoreError> {
        let key = group.enrollment_group_id.to_ascii_lowercase();
        let aad = group_aad(service, &key);
        let mut stored = group.clone();
        stored.last_updated_date_time_utc = Some(now);
        stored.etag = Some(new_etag());
        let mut doc_form = stored.clone();
        let sealed = Self::seal_keys(&self.sealer, doc_form.attestation.as_mut(), &aad)?;
        let service = service.to_owned();
        let what = format!("enrollment group '{}'", group.enrollment_group_id);
        self.db
            .write(move |conn| {
                ensure_service(conn, &service)?;
                let current = current_etag(conn, "enrollment_groups", &service, &key)?;
                check_precondition(current.as_ref().map(|(t, _)| t), &condition, &what)?;
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
                    "enrollment_groups",
                    &service,
                    &key,
                    &etag,
                    &doc,
                    sealed.as_deref(),
                )?;
                Ok(stored)
            })
            .await
    }

    async fn delete_enrollment_group(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        delete_row(
            &self.db,
            "enrollment_groups",
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
            .read(move |conn| read_enrollment_groups(conn, &sealer, &service, &after, limit))
            .await
    }

    async fn registration(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        let (service, key) = (service.to_owned(), id_key.to_owned());
        self.db
            .read(move |conn| read_registration(conn, &service, &key))
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
            .read(move |conn| {
                // One read transaction: one snapshot, one WAL read lock.
                let tx = conn.unchecked_transaction().map_err(sql_error)?;
                let Some(service) = read_service_by_scope(&tx, &scope)? else {
                    return Ok(None);
                };
                let name = &service.name;
                let enrollment = read_enrollment(&tx, &sealer, name, &key)?.map(Box::new);
                let first_groups = match enrollment {
                    Some(_) => None,
                    None => Some(read_enrollment_groups(&tx, &sealer, name, "", group_page)?),
                };
                let previous = read_registration(&tx, name, &key)?.map(Box::new);
                let linked_hubs = read_linked_hubs(&tx, &sealer, name)?;
                tx.finish().map_err(sql_error)?;
                Ok(Some(RegistrationInputs {
                    service,
                    enrollment,
                    first_groups,
                    previous,
                    linked_hubs,
                }))
            })
            .await
    }

    async fn put_registration(
        &self,
        service: &str,
        record: &RegistrationRecord,
        now: UtcTime,
    ) -> Result<RegistrationRecord, StoreError> {
        let key = record.state.registration_id.to_ascii_lowercase();
        let mut stored = record.clone();
        stored.state.last_updated_date_time_utc = Some(now);
        stored.state.etag = Some(new_etag());
        let service = service.to_owned();
        self.db
            .write(move |conn| {
                let created: Option<String> = conn
                    .prepare_cached("SELECT doc FROM registrations WHERE service = ?1 AND id_key = ?2")
                    .and_then(|mut s| s.query_row(params![service, key], |r| r.get(0)).optional())
                    .map_err(sql_error)?;
                stored.state.created_date_time_utc = Some(created.as_deref().and_then(created_of).unwrap_or(now));
                let doc = serde_json::to_string(&stored.state).map_err(|e| corrupt("registration", e))?;
                let group_key = stored.enrollment_group_id.as_ref().map(|g| g.to_ascii_lowercase());
                let etag = stored.state.etag.as_ref().map(|t| t.as_str().to_owned()).unwrap_or_default();
                let placement = stored.current_placement();
                let hub_key = placement.as_ref().map(|p| p.hub.to_ascii_lowercase());
                let placement = placement
                    .map(|p| serde_json::to_string(&p))
                    .transpose()
                    .map_err(|e| corrupt("registration placement", e))?;
                conn.prepare_cached(
                    "INSERT INTO registrations (service, id_key, group_key, operation_id, etag, doc, placement, hub_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (service, id_key) DO UPDATE SET group_key = excluded.group_key,
                        operation_id = excluded.operation_id, etag = excluded.etag, doc = excluded.doc,
                        placement = excluded.placement, hub_key = excluded.hub_key",
                )
                .and_then(|mut s| s.execute(params![service, key, group_key, stored.operation_id, etag, doc, placement, hub_key]))
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                        StoreError::NotFound(format!("no provisioning service '{service}'"))
                    }
                    other => sql_error(other),
                })?;
                Ok(stored)
            })
            .await
    }

    async fn delete_registration(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        delete_row(
            &self.db,
            "registrations",
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
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT doc, group_key, operation_id, placement FROM registrations
                         WHERE service = ?1 AND group_key = ?2 AND id_key > ?3 ORDER BY id_key LIMIT ?4",
                    )
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map(params![service, group, after, limit as i64], RegistrationRow::read)
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.into_iter().map(RegistrationRow::into_record).collect()
            })
            .await
    }

    async fn count_devices_on_hub(&self, service: &str, hub: &str) -> Result<u64, StoreError> {
        let (service, hub_key) = (service.to_owned(), hub.trim().to_ascii_lowercase());
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT count(*) FROM registrations WHERE service = ?1 AND hub_key = ?2",
                )
                .and_then(|mut s| s.query_row(params![service, hub_key], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
                .map_err(sql_error)
            })
            .await
    }

    async fn record_hub_latency(&self, sample: &HubLatencySample) -> Result<(), StoreError> {
        let doc = serde_json::to_string(sample).map_err(|e| corrupt("hub latency", e))?;
        let (node, hub_key) = (sample.node.clone(), sample.hub.to_ascii_lowercase());
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO hub_latencies (node, hub_key, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT (node, hub_key) DO UPDATE SET doc = excluded.doc",
                )
                .and_then(|mut s| s.execute(params![node, hub_key, doc]))
                .map(|_| ())
                .map_err(sql_error)
            })
            .await
    }

    async fn hub_latencies(&self) -> Result<Vec<HubLatencySample>, StoreError> {
        self.db
            .read(move |conn| {
                let docs = conn
                    .prepare_cached("SELECT doc FROM hub_latencies ORDER BY node, hub_key")
                    .and_then(|mut s| {
                        s.query_map([], |r| r.get::<_, String>(0))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(sql_error)?;
                docs.iter()
                    .map(|d| serde_json::from_str(d).map_err(|e| corrupt("hub latency", e)))
                    .collect()
            })
            .await
    }
}

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

fn registration_from_row(
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

fn ca_from_row(doc: &str, etag: &str) -> Result<CaCertificate, StoreError> {
    let mut ca: CaCertificate =
        serde_json::from_str(doc).map_err(|e| corrupt("CA certificate", e))?;
    ca.etag = Some(ETag::from_raw(etag));
    Ok(ca)
}

fn open_policy(
    sealer: &Sealer,
    service: &str,
    name: String,
    rights: u8,
    sealed: &[u8],
) -> Result<SharedAccessPolicy, StoreError> {
    let aad = policy_aad(service, &name);
    let plain = sealer.open(sealed, &aad).map_err(|e| corrupt(&aad, e))?;
    let keys: PolicyKeys = serde_json::from_slice(&plain).map_err(|e| corrupt(&aad, e))?;
    Ok(SharedAccessPolicy {
        name,
        primary_key: keys.primary,
        secondary_key: keys.secondary,
        rights: AccessRights::from_bits(rights),
    })
}

fn ensure_service(conn: &Connection, service: &str) -> Result<(), StoreError> {
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM services WHERE name = ?1)")
        .and_then(|mut s| s.query_row([service], |r| r.get(0)))
        .map_err(sql_error)?;
    if !exists {
        return Err(StoreError::NotFound(format!(
            "no provisioning service '{service}'"
        )));
    }
    Ok(())
}

fn get_row(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
) -> Result<Option<DocAndKeys>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT doc, keys_sealed FROM {table} WHERE service = ?1 AND id_key = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![service, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    })
    .map_err(sql_error)
}

/// A stored document and its sealed keys.
type DocAndKeys = (String, Option<Vec<u8>>);
/// Key, document and sealed keys of a listed row.
type Row = (String, String, Option<Vec<u8>>);

fn list_rows(
    conn: &Connection,
    table: &str,
    service: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT id_key, doc, keys_sealed FROM {table} WHERE service = ?1 AND id_key > ?2 ORDER BY id_key LIMIT ?3"
    ))
    .and_then(|mut stmt| {
        stmt.query_map(
            params![service, after, limit.min(i64::MAX as usize) as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<Result<Vec<_>, _>>()
    })
    .map_err(sql_error)
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

fn upsert(
    conn: &Connection,
    table: &str,
    service: &str,
    key: &str,
    etag: &str,
    doc: &str,
    sealed: Option<&[u8]>,
) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (service, id_key, etag, doc, keys_sealed) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (service, id_key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc, keys_sealed = excluded.keys_sealed"
    ))
    .and_then(|mut s| s.execute(params![service, key, etag, doc, sealed]))
    .map(|_| ())
    .map_err(sql_error)
}

async fn delete_row(
    db: &Db,
    table: &'static str,
    service: &str,
    key: &str,
    condition: Precondition,
    missing: String,
) -> Result<(), StoreError> {
    let (service, key) = (service.to_owned(), key.to_owned());
    db.write(move |conn| {
        let current: Option<String> = conn
            .prepare_cached(&format!(
                "SELECT etag FROM {table} WHERE service = ?1 AND id_key = ?2"
            ))
            .and_then(|mut s| s.query_row(params![service, key], |r| r.get(0)).optional())
            .map_err(sql_error)?;
        let Some(current) = current else {
            return Err(StoreError::NotFound(missing));
        };
        check_precondition(
            Some(&ETag::from_raw(&current)),
            &condition,
            &format!("'{key}'"),
        )?;
        conn.execute(
            &format!("DELETE FROM {table} WHERE service = ?1 AND id_key = ?2"),
            params![service, key],
        )
        .map(|_| ())
        .map_err(sql_error)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use onramp_core::testing::conformance;

    fn open(dir: &Path) -> SqliteStore {
        let sealer = Arc::new(Sealer::load_or_create(&dir.join("keys")).unwrap());
        SqliteStore::open(&dir.join("onramp.db"), sealer, SqliteOptions::default()).unwrap()
    }

    /// X.509 enrollments stored before the thumbprint index existed are
    /// found by thumbprint after the upgrade (revocation depends on it), from
    /// a version-1 store and from a version-3 store whose index lacks them.
    #[tokio::test]
    async fn upgrading_indexes_the_certificates_of_existing_enrollments() {
        let v3 = format!(
            "{} {} {} PRAGMA user_version = 3;",
            include_str!("schema.sql"),
            include_str!("schema_v2.sql"),
            include_str!("schema_v3.sql")
        );
        for (from, schema) in [
            (
                "1",
                format!("{} PRAGMA user_version = 1;", include_str!("schema.sql")),
            ),
            ("3", v3),
        ] {
            upgrade_indexes_from(from, &schema).await;
        }
    }

    async fn upgrade_indexes_from(from: &str, schema: &str) {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("onramp.db")).unwrap();
            conn.execute_batch(&format!(
                r#"{schema}
                INSERT INTO services VALUES ('s', 'scope-s', '{{}}');
                INSERT INTO enrollments VALUES ('s', 'old-dev', 'e1',
                    '{{"registrationId":"old-dev","attestation":{{"type":"x509","x509":{{"clientCertificates":{{"primary":{{"info":{{
                        "subjectName":"CN=old-dev","sha1Thumbprint":"CD34","sha256Thumbprint":"ab12","issuerName":"CN=old-dev",
                        "notBeforeUtc":"2026-01-01T00:00:00Z","notAfterUtc":"2027-01-01T00:00:00Z","serialNumber":"01","version":3}}}}}}}}}}}}', NULL);
                INSERT INTO enrollments VALUES ('s', 'key-dev', 'e2', '{{"registrationId":"key-dev"}}', NULL);"#
            ))
            .unwrap();
        }
        let store = open(dir.path());
        let found = store.enrollments_by_thumbprint("s", "AB12").await.unwrap();
        assert_eq!(
            found
                .iter()
                .map(|e| e.registration_id.as_str())
                .collect::<Vec<_>>(),
            ["old-dev"],
            "upgraded from version {from}"
        );
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(Arc::new(open(dir.path()))).await;
    }

    #[tokio::test]
    async fn concurrent_writes_commit_in_groups_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        store
            .create_service(&conformance::service("s", 1), &[])
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut state = DeviceRegistrationState::new(
                    format!("d{i}"),
                    onramp_model::RegistrationStatus::Assigned,
                );
                state.assigned_hub = Some("h".into());
                let rec = RegistrationRecord {
                    state,
                    operation_id: "op".into(),
                    enrollment_group_id: None,
                    placement: None,
                };
                store.put_registration("s", &rec, UtcTime::now()).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for i in 0..200 {
            assert!(
                store
                    .registration("s", &format!("d{i}"))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        // A failing job (unknown service) does not take its group down with it.
        let (x, y) = (conformance::enrollment("x"), conformance::enrollment("y"));
        let bad = store.put_enrollment("nope", &x, Precondition::None, UtcTime::now());
        let good = store.put_enrollment("s", &y, Precondition::None, UtcTime::now());
        let (bad, good) = tokio::join!(bad, good);
        assert!(matches!(bad, Err(StoreError::NotFound(_))));
        assert!(good.is_ok());
    }

    #[tokio::test]
    async fn survives_reopening_and_keeps_secrets_sealed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let key = "cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw==";
        {
            let store = open(dir.path());
            store
                .create_service(
                    &conformance::service("s", 1),
                    &[conformance::owner("b3duZXIta2V5LXNlY3JldC0x")],
                )
                .await
                .unwrap();
            store
                .put_enrollment(
                    "s",
                    &conformance::enrollment("dev"),
                    Precondition::None,
                    UtcTime::now(),
                )
                .await
                .unwrap();
            store
                .put_linked_hub("s", &conformance::hub("hub.example.net"))
                .await
                .unwrap();
        }
        let store = open(dir.path());
        let e = store.enrollment("s", "dev").await.unwrap().unwrap();
        assert_eq!(
            e.attestation
                .unwrap()
                .symmetric_key
                .unwrap()
                .primary_key
                .unwrap()
                .expose(),
            key
        );
        assert_eq!(store.linked_hubs("s").await.unwrap().len(), 1);
        drop(store);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                for secret in [key, "b3duZXIta2V5LXNlY3JldC0x", "aHViLWtleQ=="] {
                    assert!(
                        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                        "{} holds {secret} in plaintext",
                        path.display()
                    );
                }
            }
        }
    }
}
