//! Twins: tags, desired and reported properties, each change a new version
//! and ETag.

use onramp_model::UtcTime;
use onramp_store::sqlite::sql_error;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::identities::load;
use super::{DeviceRecord, HubStore, HubStoreError, corrupt, matches, new_tag};

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

/// A change to a twin inside an identity write: returns (anything changed,
/// desired properties changed), or why the change is refused.
pub type TwinChange = Box<dyn FnOnce(&mut TwinState) -> Result<(bool, bool), String> + Send>;

impl HubStore {
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
