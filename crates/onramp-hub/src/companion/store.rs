//! The companion hub's own store: device identities (keys sealed) and their
//! twins, in a SQLite file of its own, written through the same group-commit
//! machinery as Onramp's store.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use onramp_core::ports::StoreError;
use onramp_model::hub::{Device, SymmetricKey};
use onramp_model::{ETag, Secret, UtcTime};
use onramp_store::Sealer;
use onramp_store::sqlite::{Db, Durability, sql_error};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::{HubPolicy, HubRights};

/// Everything the hub keeps about a twin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinState {
    pub tags: Map<String, Value>,
    pub desired: Map<String, Value>,
    pub desired_version: i64,
    pub desired_updated: Option<UtcTime>,
    pub reported: Map<String, Value>,
    pub reported_version: i64,
    pub reported_updated: Option<UtcTime>,
    /// Bumped on every change of tags, desired or reported properties.
    pub version: i64,
    pub etag: String,
}

/// A device-to-cloud message as the hub stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub seq: i64,
    pub device_id: String,
    pub received: UtcTime,
    /// The property bag of the topic (`$.ct`, `$.ce`, application properties).
    pub properties: Map<String, Value>,
    /// The body as text when it is UTF-8, else base64.
    pub body: String,
    pub body_is_base64: bool,
}

/// A device identity and its twin.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub device: Device,
    pub twin: TwinState,
}

#[derive(Debug, thiserror::Error)]
pub enum HubStoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

#[derive(Serialize, Deserialize)]
struct SealedKeys {
    primary: Option<Secret>,
    secondary: Option<Secret>,
}

/// How an identity write treats an existing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Only if it does not exist.
    Create,
    /// Only if it exists and its ETag matches (`*`: any).
    Update(String),
    /// Create or overwrite.
    Upsert,
}

/// A change to a twin inside an identity write: returns (anything changed,
/// desired properties changed), or why the change is refused.
pub type TwinChange = Box<dyn FnOnce(&mut TwinState) -> Result<(bool, bool), String> + Send>;

pub struct HubStore {
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
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("hub store: {e}"))
}

/// A fresh opaque tag (IoT Hub's look: base64 of a counter-ish value).
pub fn new_tag() -> String {
    let bytes = uuid::Uuid::new_v4();
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &bytes.as_bytes()[..9],
    )
}

fn matches(current: &str, if_match: &str) -> bool {
    ETag::from_raw(current).matches(if_match)
}

impl HubStore {
    pub fn open(path: &Path, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            onramp_store::private::create_dir(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Db::open(path, 2, Durability::Full, migrate)?;
        Ok(Self { db, sealer })
    }

    fn aad(id_key: &str) -> String {
        format!("hub-device:{id_key}")
    }

    /// Splits the keys out of a device for storage.
    fn seal_device(
        &self,
        device: &Device,
        id_key: &str,
    ) -> Result<(String, Option<Vec<u8>>), StoreError> {
        let mut doc = device.clone();
        let sealed = match doc
            .authentication
            .as_mut()
            .and_then(|a| a.symmetric_key.as_mut())
        {
            Some(keys) => {
                let taken = SealedKeys {
                    primary: keys.primary_key.take(),
                    secondary: keys.secondary_key.take(),
                };
                let json = serde_json::to_vec(&taken).map_err(corrupt)?;
                Some(self.sealer.seal(&json, &Self::aad(id_key)))
            }
            None => None,
        };
        Ok((serde_json::to_string(&doc).map_err(corrupt)?, sealed))
    }

    fn open_device(
        sealer: &Sealer,
        doc: &str,
        sealed: Option<Vec<u8>>,
        id_key: &str,
    ) -> Result<Device, StoreError> {
        let mut device: Device = serde_json::from_str(doc).map_err(corrupt)?;
        if let Some(sealed) = sealed {
            let plain = sealer.open(&sealed, &Self::aad(id_key)).map_err(corrupt)?;
            let keys: SealedKeys = serde_json::from_slice(&plain).map_err(corrupt)?;
            if let Some(auth) = device.authentication.as_mut() {
                auth.symmetric_key = Some(SymmetricKey {
                    primary_key: keys.primary,
                    secondary_key: keys.secondary,
                });
            }
        }
        Ok(device)
    }

    // ---- policies ----

    pub async fn policies(&self) -> Result<Vec<HubPolicy>, StoreError> {
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT name, rights, keys_sealed FROM hub_policies ORDER BY name",
                    )
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, u8>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.into_iter()
                    .map(|(name, rights, sealed)| {
                        let plain = sealer
                            .open(&sealed, &format!("hub-policy:{name}"))
                            .map_err(corrupt)?;
                        let keys: SealedKeys = serde_json::from_slice(&plain).map_err(corrupt)?;
                        Ok(HubPolicy {
                            name,
                            rights: HubRights::from_bits(rights),
                            primary_key: keys.primary.unwrap_or_else(|| Secret::new("")),
                            secondary_key: keys.secondary.unwrap_or_else(|| Secret::new("")),
                        })
                    })
                    .collect()
            })
            .await
    }

    pub async fn put_policy(&self, policy: &HubPolicy) -> Result<(), StoreError> {
        let keys = SealedKeys {
            primary: Some(policy.primary_key.clone()),
            secondary: Some(policy.secondary_key.clone()),
        };
        let sealed = self.sealer.seal(
            &serde_json::to_vec(&keys).map_err(corrupt)?,
            &format!("hub-policy:{}", policy.name),
        );
        let (name, rights) = (policy.name.clone(), policy.rights.bits());
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO hub_policies (name, rights, keys_sealed) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET rights = excluded.rights, keys_sealed = excluded.keys_sealed",
                    params![name, rights, sealed],
                )
                .map(|_| ())
                .map_err(sql_error)
            })
            .await
    }

    // ---- devices ----

    /// Creates (`if_match` absent) or updates (`if_match` given) an identity.
    pub async fn put_device(
        &self,
        device: Device,
        if_match: Option<String>,
        now: UtcTime,
    ) -> Result<DeviceRecord, HubStoreError> {
        let mode = match if_match {
            Some(tag) => PutMode::Update(tag),
            None => PutMode::Create,
        };
        self.put_device_and_twin(device, mode, now, None)
            .await
            .map(|(record, _)| record)
    }

    /// Writes an identity and, in the same transaction, changes its twin
    /// (`twin` returns whether anything changed). Returns the record and
    /// whether the desired properties changed.
    pub async fn put_device_and_twin(
        &self,
        device: Device,
        mode: PutMode,
        now: UtcTime,
        twin_change: Option<TwinChange>,
    ) -> Result<(DeviceRecord, bool), HubStoreError> {
        let id_key = device.device_id.to_ascii_lowercase();
        let sealer = self.sealer.clone();
        let mut stored = device;
        stored.etag = Some(new_tag());
        let (doc, sealed) = self.seal_device(&stored, &id_key)?;
        self.db
            .write(move |conn| {
                let current = load(conn, &sealer, &id_key)?;
                let mut stored = stored;
                let mut doc = doc;
                let if_match = match (&mode, &current) {
                    (PutMode::Upsert, Some(_)) => Some("*".to_owned()),
                    (PutMode::Upsert | PutMode::Create, _) => None,
                    (PutMode::Update(tag), _) => Some(tag.clone()),
                };
                let mut twin = match (&current, &if_match) {
                    (Some(_), None) => {
                        return Ok(Err(HubStoreError::AlreadyExists(format!(
                            "a device with ID '{}' already exists; update it with If-Match",
                            stored.device_id
                        ))));
                    }
                    (None, Some(_)) => {
                        return Ok(Err(HubStoreError::NotFound(format!("device '{}' does not exist", stored.device_id))));
                    }
                    (Some(cur), Some(tag)) => {
                        let cur_tag = cur.device.etag.clone().unwrap_or_default();
                        if !matches(&cur_tag, tag) {
                            return Ok(Err(HubStoreError::PreconditionFailed(format!(
                                "If-Match {tag} does not match the device's ETag {cur_tag}"
                            ))));
                        }
                        // Keep what the hub owns across updates.
                        stored.generation_id = cur.device.generation_id.clone();
                        doc = reapply_generation(&doc, stored.generation_id.as_deref())?;
                        cur.twin.clone()
                    }
                    (None, None) => {
                        stored.generation_id = Some(format!("{}", now.unix_nanos() / 1000));
                        doc = reapply_generation(&doc, stored.generation_id.as_deref())?;
                        TwinState { version: 1, desired_version: 1, reported_version: 1, etag: new_tag(), ..Default::default() }
                    }
                };
                let mut desired_changed = false;
                if let Some(change) = twin_change {
                    match change(&mut twin) {
                        Err(message) => return Ok(Err(HubStoreError::Invalid(message))),
                        Ok((true, desired)) => {
                            desired_changed = desired;
                            twin.version += 1;
                            twin.etag = new_tag();
                        }
                        Ok((false, _)) => {}
                    }
                }
                let twin_doc = serde_json::to_string(&twin).map_err(corrupt)?;
                conn.prepare_cached(
                    "INSERT INTO devices (id_key, device, keys_sealed, twin) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (id_key) DO UPDATE SET device = excluded.device, keys_sealed = excluded.keys_sealed, twin = excluded.twin",
                )
                .and_then(|mut s| s.execute(params![id_key, doc, sealed, twin_doc]))
                .map_err(sql_error)?;
                Ok(Ok((DeviceRecord { device: stored, twin }, desired_changed)))
            })
            .await?
    }

    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let id_key = device_id.to_ascii_lowercase();
        let sealer = self.sealer.clone();
        self.db.read(move |conn| load(conn, &sealer, &id_key)).await
    }

    pub async fn delete_device(
        &self,
        device_id: &str,
        if_match: Option<String>,
    ) -> Result<(), HubStoreError> {
        let id_key = device_id.to_ascii_lowercase();
        let sealer = self.sealer.clone();
        let id = device_id.to_owned();
        self.db
            .write(move |conn| {
                let Some(current) = load(conn, &sealer, &id_key)? else {
                    return Ok(Err(HubStoreError::NotFound(format!(
                        "device '{id}' does not exist"
                    ))));
                };
                if let Some(tag) = if_match {
                    let cur_tag = current.device.etag.unwrap_or_default();
                    if !matches(&cur_tag, &tag) {
                        return Ok(Err(HubStoreError::PreconditionFailed(format!(
                            "If-Match {tag} does not match the device's ETag {cur_tag}"
                        ))));
                    }
                }
                conn.execute("DELETE FROM devices WHERE id_key = ?1", [&id_key])
                    .map_err(sql_error)?;
                Ok(Ok(()))
            })
            .await?
    }

    pub async fn devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let after = after.unwrap_or("").to_ascii_lowercase();
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT id_key, device, keys_sealed, twin FROM devices WHERE id_key > ?1 ORDER BY id_key LIMIT ?2")
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map(params![after, limit as i64], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<Vec<u8>>>(2)?, r.get::<_, String>(3)?))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.into_iter()
                    .map(|(key, doc, sealed, twin)| {
                        Ok(DeviceRecord {
                            device: Self::open_device(&sealer, &doc, sealed, &key)?,
                            twin: serde_json::from_str(&twin).map_err(corrupt)?,
                        })
                    })
                    .collect()
            })
            .await
    }

    /// Applies `change` to a twin atomically, checking `if_match` against the
    /// twin's ETag first. `change` returns whether anything changed.
    pub async fn update_twin(
        &self,
        device_id: &str,
        if_match: Option<String>,
        change: impl FnOnce(&mut TwinState) -> Result<bool, String> + Send + 'static,
    ) -> Result<DeviceRecord, HubStoreError> {
        let id_key = device_id.to_ascii_lowercase();
        let sealer = self.sealer.clone();
        let id = device_id.to_owned();
        self.db
            .write(move |conn| {
                let Some(mut record) = load(conn, &sealer, &id_key)? else {
                    return Ok(Err(HubStoreError::NotFound(format!(
                        "device '{id}' does not exist"
                    ))));
                };
                if let Some(tag) = if_match
                    && !matches(&record.twin.etag, &tag)
                {
                    return Ok(Err(HubStoreError::PreconditionFailed(format!(
                        "If-Match {tag} does not match the twin's ETag {}",
                        record.twin.etag
                    ))));
                }
                match change(&mut record.twin) {
                    Err(message) => return Ok(Err(HubStoreError::Invalid(message))),
                    Ok(false) => return Ok(Ok(record)),
                    Ok(true) => {}
                }
                record.twin.version += 1;
                record.twin.etag = new_tag();
                let twin_doc = serde_json::to_string(&record.twin).map_err(corrupt)?;
                conn.prepare_cached("UPDATE devices SET twin = ?2 WHERE id_key = ?1")
                    .and_then(|mut s| s.execute(params![id_key, twin_doc]))
                    .map_err(sql_error)?;
                Ok(Ok(record))
            })
            .await?
    }
}

impl HubStore {
    /// Stores a device-to-cloud message; returns its sequence number.
    pub async fn add_message(
        &self,
        device_id: &str,
        properties: Map<String, Value>,
        body: Bytes,
        received: UtcTime,
    ) -> Result<i64, StoreError> {
        let key = device_id.to_ascii_lowercase();
        let id = device_id.to_owned();
        let props = serde_json::to_string(&properties).map_err(corrupt)?;
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO messages (device_key, device_id, received, properties, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![key, id, received.to_string(), props, body.as_ref()]))
                .map_err(sql_error)?;
                Ok(conn.last_insert_rowid())
            })
            .await
    }

    /// Messages after `after_seq`, oldest first, of one device or of all.
    pub async fn messages(
        &self,
        device_id: Option<&str>,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let key = device_id.map(str::to_ascii_lowercase);
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq, device_id, received, properties, body FROM messages
                         WHERE seq > ?1 AND (?2 IS NULL OR device_key = ?2) ORDER BY seq LIMIT ?3",
                    )
                    .map_err(sql_error)?;
                let rows = stmt
                    .query_map(params![after_seq, key, limit as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                        ))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)?;
                rows.into_iter()
                    .map(|(seq, device_id, received, props, body)| {
                        let (body, body_is_base64) = match String::from_utf8(body) {
                            Ok(text) => (text, false),
                            Err(e) => (
                                base64::Engine::encode(
                                    &base64::engine::general_purpose::STANDARD,
                                    e.as_bytes(),
                                ),
                                true,
                            ),
                        };
                        Ok(StoredMessage {
                            seq,
                            device_id,
                            received: UtcTime::parse(&received).unwrap_or_else(UtcTime::now),
                            properties: serde_json::from_str(&props).map_err(corrupt)?,
                            body,
                            body_is_base64,
                        })
                    })
                    .collect()
            })
            .await
    }
}

impl HubStore {
    /// Trusts a CA certificate for devices with `certificateAuthority` authentication.
    pub async fn put_certificate(
        &self,
        name: &str,
        der: Vec<u8>,
        now: UtcTime,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO hub_certificates (name, der, added) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET der = excluded.der",
                    params![name, der, now.to_string()],
                )
                .map(|_| ())
                .map_err(sql_error)
            })
            .await
    }

    pub async fn certificates(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.db
            .read(|conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT name, der FROM hub_certificates ORDER BY name")
                    .map_err(sql_error)?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)
            })
            .await
    }

    pub async fn delete_certificate(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM hub_certificates WHERE name = ?1", [&name])
                    .map(|n| n > 0)
                    .map_err(sql_error)
            })
            .await
    }
}

fn reapply_generation(doc: &str, generation: Option<&str>) -> Result<String, StoreError> {
    let mut value: Value = serde_json::from_str(doc).map_err(corrupt)?;
    if let (Some(obj), Some(g)) = (value.as_object_mut(), generation) {
        obj.insert("generationId".into(), Value::String(g.to_owned()));
    }
    serde_json::to_string(&value).map_err(corrupt)
}

fn load(
    conn: &Connection,
    sealer: &Sealer,
    id_key: &str,
) -> Result<Option<DeviceRecord>, StoreError> {
    let row: Option<(String, Option<Vec<u8>>, String)> = conn
        .prepare_cached("SELECT device, keys_sealed, twin FROM devices WHERE id_key = ?1")
        .and_then(|mut s| {
            s.query_row([id_key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(sql_error)?;
    row.map(|(doc, sealed, twin)| {
        Ok(DeviceRecord {
            device: HubStore::open_device(sealer, &doc, sealed, id_key)?,
            twin: serde_json::from_str(&twin).map_err(corrupt)?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A hub store written by a version that knew only schema 1 opens with
    /// its devices kept and gains the tables of later versions.
    #[tokio::test]
    async fn a_version_one_store_is_migrated() {
        // Version 1 as first written, and version 1 as written later with
        // the telemetry and certificate tables in it already.
        let later_v1 = format!(
            "{}{}",
            include_str!("schema.sql"),
            include_str!("schema_v2.sql")
        );
        for schema in [include_str!("schema.sql"), later_v1.as_str()] {
            migrate_version_one(schema).await;
        }
    }

    async fn migrate_version_one(schema: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "{schema} INSERT INTO devices VALUES ('old-device', '{{}}', NULL, '{{}}'); PRAGMA user_version = 1;"
            ))
            .unwrap();
        }
        let sealer = Arc::new(Sealer::new(&[7u8; 32], &[]).unwrap());
        let store = HubStore::open(&path, sealer).unwrap();
        assert!(store.messages(None, 0, 10).await.unwrap().is_empty());
        assert!(store.certificates().await.unwrap().is_empty());
        let conn = Connection::open(&path).unwrap();
        let (version, devices): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM devices)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, devices), (2, 1));
    }
}
