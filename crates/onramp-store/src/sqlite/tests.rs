//! The embedded store against the conformance suite, and what only a file on
//! disk shows: upgrades, group commits, reopening, sealing at rest.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use onramp_core::ports::{Precondition, RegistrationRecord, Store, StoreError, TpmChallenge};
use onramp_model::{DeviceRegistrationState, Secret, UtcTime};
use onramp_testkit::{conformance, given};
use rusqlite::Connection;

use super::{SqliteOptions, SqliteStore};
use crate::seal::Sealer;
use onramp_core::ports::StoreExt;
use onramp_model::IdKey;
use onramp_model::IndividualEnrollment;

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

// The directory goes with the store, after it.
onramp_testkit::store_conformance!(async || {
    let dir = tempfile::tempdir().unwrap();
    (Arc::new(open(dir.path())), dir)
});

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
            store
                .put("s", rec.clone(), Precondition::None, UtcTime::now())
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for i in 0..200 {
        assert!(
            store
                .get::<RegistrationRecord>("s", &IdKey::of(&format!("d{i}")))
                .await
                .unwrap()
                .is_some()
        );
    }
    // A failing job (unknown service) does not take its group down with it.
    let (x, y) = (conformance::enrollment("x"), conformance::enrollment("y"));
    let bad = store.put("nope", x.clone(), Precondition::None, UtcTime::now());
    let good = store.put("s", y.clone(), Precondition::None, UtcTime::now());
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
        let owner = conformance::owner("b3duZXIta2V5LXNlY3JldC0x");
        store
            .create_service(&conformance::service("s", 1), &[owner])
            .await
            .unwrap();
        given(&store, "s", conformance::enrollment("dev")).await;
        given(&store, "s", conformance::hub("hub.example.net")).await;
        let challenge = TpmChallenge {
            registration_id: "tpm-dev".into(),
            key: Secret::new("dHBtLWNoYWxsZW5nZS1rZXk="),
            endorsement_key: "ek".into(),
            storage_root_key: "srk".into(),
            expires: UtcTime::now(),
            spent_by: None,
            enrollment_group_id: None,
        };
        given(&store, "s", challenge).await;
    }
    let store = open(dir.path());
    let e = store
        .get::<IndividualEnrollment>("s", &IdKey::of("dev"))
        .await
        .unwrap()
        .unwrap();
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
    let challenge = store
        .get::<TpmChallenge>("s", &IdKey::of("tpm-dev"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(challenge.key.expose(), "dHBtLWNoYWxsZW5nZS1rZXk=");
    drop(store);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            for secret in [
                key,
                "b3duZXIta2V5LXNlY3JldC0x",
                "aHViLWtleQ==",
                "dHBtLWNoYWxsZW5nZS1rZXk=",
            ] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds {secret} in plaintext",
                    path.display()
                );
            }
        }
    }
}
