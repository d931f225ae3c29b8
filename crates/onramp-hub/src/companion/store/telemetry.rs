//! Device-to-cloud messages the hub received, in arrival order.

use bytes::Bytes;
use onramp_core::ports::StoreError;
use onramp_model::UtcTime;
use onramp_store::sqlite::{query_all, sql_error};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{HubStore, corrupt};

/// What the hub keeps of a device's telemetry; the oldest goes first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Messages kept per device (0: no cap).
    pub per_device: u64,
    /// Messages received before this are dropped.
    pub older_than: Option<UtcTime>,
}

/// Messages past their age dropped by one write, at the most: a store that
/// kept years of telemetry sheds it over the next writes, not in one.
const AGE_SWEEP: i64 = 256;

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

impl HubStore {
    /// Stores a device-to-cloud message and, in the same commit, drops what
    /// `retention` no longer keeps; returns its sequence number and how many
    /// messages were dropped.
    pub async fn add_message(
        &self,
        device_id: &str,
        properties: Map<String, Value>,
        body: Bytes,
        received: UtcTime,
        retention: Retention,
    ) -> Result<(i64, u64), StoreError> {
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
                let seq = conn.last_insert_rowid();
                let mut dropped = 0;
                if retention.per_device > 0 {
                    dropped += conn
                        .prepare_cached(
                            "DELETE FROM messages WHERE device_key = ?1 AND seq <= (
                                SELECT seq FROM messages WHERE device_key = ?1
                                ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                key,
                                i64::try_from(retention.per_device).unwrap_or(i64::MAX)
                            ])
                        })
                        .map_err(sql_error)?;
                }
                if let Some(before) = retention.older_than {
                    // Oldest first across devices: sequence numbers follow arrival.
                    dropped += conn
                        .prepare_cached(
                            "DELETE FROM messages WHERE seq IN (
                                SELECT seq FROM messages ORDER BY seq LIMIT ?2)
                             AND received < ?1",
                        )
                        .and_then(|mut s| s.execute(params![before.to_string(), AGE_SWEEP]))
                        .map_err(sql_error)?;
                }
                Ok((seq, dropped as u64))
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
                let rows = query_all(
                    conn,
                    "SELECT seq, device_id, received, properties, body FROM messages
                     WHERE seq > ?1 AND (?2 IS NULL OR device_key = ?2) ORDER BY seq LIMIT ?3",
                    params![after_seq, key, limit as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                        ))
                    },
                )?;
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
