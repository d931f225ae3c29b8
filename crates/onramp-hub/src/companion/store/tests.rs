//! Opening stores written by earlier versions.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use onramp_store::Sealer;
use rusqlite::Connection;

use super::HubStore;

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
