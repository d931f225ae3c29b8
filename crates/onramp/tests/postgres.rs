//! `onramp serve` on PostgreSQL: chosen by `--store-url`, a device
//! registers and its record is in the database; the admin commands read the
//! same store through `ONRAMP_STORE_URL`; a second node on the same database
//! answers the device's poll of an operation the first node finished.
//!
//! Each test makes a database of its own (see `onramp_testkit::postgres`):
//! skipped without a server, failed when `ONRAMP_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Server, answer, assert_assigned, share_ca};
use onramp_core::ports::{RegistrationRecord, StoreExt};
use onramp_model::IdKey;
use onramp_testkit::postgres::TestDatabase;
use reqwest::Method;
use serde_json::json;

/// Gives the node in `to` the master keys of the node in `from`: nodes that
/// share a database must share the keys its secrets are sealed with.
fn share_keys(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("keys")).unwrap();
    for entry in std::fs::read_dir(from.join("keys")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join("keys").join(path.file_name().unwrap())).unwrap();
    }
}

#[tokio::test]
async fn serve_on_postgresql_registers_a_device() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let mut server = Server::start_in(&dir, "127.0.0.1:0", &["--store-url", db.url()]);
    server.keep(temp);
    assert!(
        !dir.join("onramp.db").exists(),
        "no SQLite store is made when the data lives in PostgreSQL"
    );

    let key = server.enroll("pg-dev-1", json!({})).await;
    let (status, _, op) = server
        .register("pg-dev-1", &key, "?api-version=2021-06-01")
        .await;
    assert!(matches!(status, 200 | 202), "{status} {op}");
    // Assigned at once, or after a poll of the operation.
    let op = if op["status"] == "assigned" {
        op
    } else {
        let operation = op["operationId"].as_str().unwrap();
        let (status, polled) = poll_until_done(&server, "pg-dev-1", &key, operation).await;
        assert_assigned(status, &polled, 200);
        polled
    };
    assert_eq!(op["registrationState"]["deviceId"], "pg-dev-1", "{op}");

    // The record is in PostgreSQL.
    let store = server.any_store().await;
    let record = store
        .get::<RegistrationRecord>("default", &IdKey::of("pg-dev-1"))
        .await
        .unwrap()
        .expect("the registration record, in PostgreSQL");
    assert_eq!(record.state.device_id.as_deref(), Some("pg-dev-1"));

    // The offline admin commands open the same store.
    let out = common::onramp()
        .args(["service", "list", "--data-dir"])
        .arg(&server.data_dir)
        .env("ONRAMP_STORE_URL", db.url())
        .env_remove("ONRAMP_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&server.id_scope()),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.stop();
}

/// Polls the operation through `server` until it is no longer
/// `assigning` (within 30 s); the last status and body.
async fn poll_until_done(
    server: &Server,
    registration_id: &str,
    key: &str,
    operation: &str,
) -> (u16, serde_json::Value) {
    let token = server.device_token(registration_id, key, common::unix_now() + 600);
    let url = server.url(&format!(
        "{}/registrations/{registration_id}/operations/{operation}?api-version=2021-06-01",
        server.id_scope()
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let poll = server
            .http()
            .request(Method::GET, &url)
            .header("Authorization", &token);
        let (status, _, polled) = answer(poll).await;
        if polled["status"] != "assigning" {
            return (status, polled);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still assigning after 30 s: {polled}"
        );
        // A condition poll, as devices do: ends as soon as the status changes.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Two nodes on one database: a device registers through node A and polls
/// its operation through node B, which answers from the record A wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_polls_through_another_node() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (temp.path().join("a"), temp.path().join("b"));
    let a = Server::start_in(&dir_a, "127.0.0.1:0", &["--store-url", db.url()]);
    // Node B shares A's master keys and development CA, and runs no
    // embedded hub of its own (the service's hub is A's).
    share_keys(&dir_a, &dir_b);
    share_ca(&dir_a, &dir_b);
    let mut b = Server::start_in(
        &dir_b,
        "127.0.0.1:0",
        &["--store-url", db.url(), "--embedded-hub", "false"],
    );
    assert_eq!(a.id_scope(), b.id_scope(), "one service, in the database");

    let key = a.enroll("two-node-dev", json!({})).await;
    let (status, _, op) = a
        .register("two-node-dev", &key, "?api-version=2021-06-01")
        .await;
    assert!(matches!(status, 200 | 202), "{status} {op}");
    let operation = op["operationId"].as_str().unwrap().to_owned();
    let polled = poll_until_done(&b, "two-node-dev", &key, &operation).await;
    assert_assigned(polled.0, &polled.1, 200);
    assert_eq!(polled.1["operationId"], operation.as_str());
    b.stop();
    drop(a);
}
