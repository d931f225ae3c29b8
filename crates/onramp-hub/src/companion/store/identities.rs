//! Device identities: the device document, its symmetric keys sealed
//! apart, and its twin in the same row.

use onramp_core::ports::StoreError;
use onramp_model::UtcTime;
use onramp_model::hub::{Device, SymmetricKey};
use onramp_store::Sealer;
use onramp_store::sqlite::sql_error;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::{
    DeviceRecord, HubStore, HubStoreError, PutMode, SealedKeys, TwinChange, TwinState, corrupt,
    matches, new_tag,
};

impl HubStore {
    pub(super) fn aad(id_key: &str) -> String {
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
}

fn reapply_generation(doc: &str, generation: Option<&str>) -> Result<String, StoreError> {
    let mut value: Value = serde_json::from_str(doc).map_err(corrupt)?;
    if let (Some(obj), Some(g)) = (value.as_object_mut(), generation) {
        obj.insert("generationId".into(), Value::String(g.to_owned()));
    }
    serde_json::to_string(&value).map_err(corrupt)
}

pub(super) fn load(
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
