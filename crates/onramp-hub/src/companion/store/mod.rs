//! The companion hub's own store: device identities (keys sealed) and their
//! twins, in a SQLite file of its own, written through the same group-commit
//! machinery as Onramp's store.
//!
//! One concept a file: [`identities`] (devices and their keys), [`twins`],
//! [`policies`], [`telemetry`], [`certificates`].

mod certificates;
mod identities;
mod keys;
mod policies;
mod telemetry;
#[cfg(test)]
mod tests;
mod twins;

use std::path::Path;
use std::sync::Arc;

use onramp_core::ports::StoreError;
use onramp_model::hub::Device;
use onramp_model::{ETag, Secret};
use onramp_store::Sealer;
use onramp_store::migrations::Step;
use onramp_store::sqlite::{Db, Durability};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

pub use telemetry::{Retention, StoredMessage};
pub use twins::{TwinChange, TwinState};

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

pub struct HubStore {
    db: Db,
    sealer: Arc<Sealer>,
}

const STEPS: [Step; 2] = [
    (1, include_str!("schema.sql")),
    (2, include_str!("schema_v2.sql")),
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    onramp_store::migrations::run(conn, &STEPS)
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
            onramp_files::create_dir(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Db::open(path, 2, Durability::Full, migrate)?;
        Ok(Self { db, sealer })
    }
}
