//! `onramp serve` on PostgreSQL: chosen by `--store-url`, a device
//! registers and its record is in the database; the admin commands read the
//! same store through `ONRAMP_STORE_URL`; a second node on the same database
//! answers the device's poll of an operation the first node finished, or
//! still runs; the newest registration of a device wins across nodes; and
//! `onramp store migrate` copies an embedded store into PostgreSQL.
//!
//! Each test makes a database of its own (see `onramp_testkit::postgres`):
//! skipped without a server, failed when `ONRAMP_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Server, answer, assert_assigned, share_ca};
use onramp_core::ports::{RegistrationRecord, Store, StoreExt};
use onramp_model::IndividualEnrollment;
use onramp_store::{PgStore, Sealer};
use onramp_testkit::postgres::TestDatabase;
use onramp_testkit::stored;
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
    let record = stored::<RegistrationRecord>(&*store, "default", "pg-dev-1")
        .await
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
    common::succeeded(&out);
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
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, polled) = poll_once(server, registration_id, key, operation).await;
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

/// Two nodes on one database, each with a register reply budget of 300 ms,
/// and a custom-allocation webhook that holds its answer to the first
/// request until the test releases it, and answers the others at once.
/// Node B shares A's keys and CA and runs no hub; the service's hub is A's.
struct TwoNodes {
    a: Server,
    b: Server,
    key: String,
    /// Releases the webhook's answer to the first request.
    release: std::sync::Arc<tokio::sync::Notify>,
    /// The requests the webhook received.
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    _db: TestDatabase,
}

async fn two_nodes_with_a_held_webhook(registration_id: &str) -> Option<TwoNodes> {
    let db = TestDatabase::create().await?;
    let temp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (temp.path().join("a"), temp.path().join("b"));
    let config = temp.path().join("onramp.toml");
    std::fs::write(&config, "[limits]\nregister_reply_budget_ms = 300\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let common_args = [
        "--store-url",
        db.url(),
        "--config",
        &config,
        "--webhook-timeout-ms",
        "30000",
    ];
    let mut a = Server::start_in(&dir_a, "127.0.0.1:0", &common_args);
    share_keys(&dir_a, &dir_b);
    share_ca(&dir_a, &dir_b);
    let mut b_args = common_args.to_vec();
    b_args.extend(["--embedded-hub", "false"]);
    let b = Server::start_in(&dir_b, "127.0.0.1:0", &b_args);
    let hub = a.embedded_hub().await.name;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let (url, seen) = common::start_webhook(move |_| {
        let answer = json!({ "iotHubHostName": hub }).to_string();
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            common::WebhookReply::AnswerWhen(held.clone(), 200, answer)
        } else {
            common::WebhookReply::Answer(200, answer)
        }
    });
    let key = a
        .enroll(
            registration_id,
            json!({
                "allocationPolicy": "custom",
                "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
            }),
        )
        .await;
    a.keep(temp);
    Some(TwoNodes {
        a,
        b,
        key,
        release,
        seen,
        _db: db,
    })
}

/// Registers through `node`; the operation ID of the `assigning` answer.
async fn register_assigning(node: &Server, registration_id: &str, key: &str) -> String {
    let (status, _, op) = node
        .register(registration_id, key, "?api-version=2021-06-01")
        .await;
    assert_eq!(status, 202, "{op}");
    assert_eq!(op["status"], "assigning", "{op}");
    op["operationId"].as_str().unwrap().to_owned()
}

/// One poll of `operation` through `node`: its status and body.
async fn poll_once(
    node: &Server,
    registration_id: &str,
    key: &str,
    operation: &str,
) -> (u16, serde_json::Value) {
    let token = node.device_token(registration_id, key, common::unix_now() + 600);
    let url = node.url(&format!(
        "{}/registrations/{registration_id}/operations/{operation}?api-version=2021-06-01",
        node.id_scope()
    ));
    let (status, _, body) = answer(
        node.http()
            .request(Method::GET, &url)
            .header("Authorization", &token),
    )
    .await;
    (status, body)
}

/// A registration still running on node A (its webhook holds the answer)
/// is `assigning` to a poll through node B, which has no trace of it in
/// memory: B reads it from the running operations in the database. Once A
/// finishes, B answers `assigned` from the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_through_another_node_hears_assigning_then_assigned() {
    let Some(mut nodes) = two_nodes_with_a_held_webhook("held-dev").await else {
        return;
    };
    let TwoNodes { a, b, key, .. } = &nodes;
    let operation = register_assigning(a, "held-dev", key).await;

    let (status, polled) = poll_once(b, "held-dev", key, &operation).await;
    assert_eq!(status, 202, "{polled}");
    assert_eq!(polled["status"], "assigning", "{polled}");
    assert_eq!(polled["operationId"], operation.as_str());

    nodes.release.notify_one();
    let (status, polled) = poll_until_done(&nodes.b, "held-dev", &nodes.key, &operation).await;
    assert_assigned(status, &polled, 200);
    assert_eq!(polled["operationId"], operation.as_str());
    nodes.b.stop();
    nodes.a.stop();
}

/// The same device registers through node A (held at its webhook) and then
/// through node B, which finishes first. A, finishing last with the older
/// registration, does not overwrite B's record: the database refuses it as
/// overtaken (A's in-memory check cannot see B), A leaves the identity B's
/// record names, and the device ends with B's record and its identity in
/// the hub; a poll of A's operation reads B's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_registration_wins_across_nodes() {
    let Some(mut nodes) = two_nodes_with_a_held_webhook("twice-dev").await else {
        return;
    };
    let older = register_assigning(&nodes.a, "twice-dev", &nodes.key).await;
    let seen = nodes.seen.clone();
    common::wait_for(
        std::time::Duration::from_secs(10),
        "node A's webhook request",
        || (!seen.lock().unwrap().is_empty()).then_some(()),
    );
    // B's registration starts later and its webhook answers at once.
    let (status, _, op) = nodes
        .b
        .register("twice-dev", &nodes.key, "?api-version=2021-06-01")
        .await;
    assert!(matches!(status, 200 | 202), "{status} {op}");
    let newer = op["operationId"].as_str().unwrap().to_owned();
    if op["status"] != "assigned" {
        let (status, polled) = poll_until_done(&nodes.b, "twice-dev", &nodes.key, &newer).await;
        assert_assigned(status, &polled, 200);
    }
    // Now A's webhook answers: A's registration, the older, ends without a
    // record of its own, and a poll of its operation reads B's.
    nodes.release.notify_one();
    let (status, polled) = poll_until_done(&nodes.a, "twice-dev", &nodes.key, &older).await;
    assert_assigned(status, &polled, 200);
    let store = nodes.a.any_store().await;
    let record = stored::<RegistrationRecord>(&*store, "default", "twice-dev")
        .await
        .expect("one record");
    assert_eq!(
        record.operation_id, newer,
        "the newer registration's record"
    );
    let hub = nodes.a.embedded_hub().await;
    let device = nodes
        .a
        .hub_client()
        .get_device(&hub, "twice-dev")
        .await
        .unwrap();
    assert!(device.is_some(), "the device's identity stays in its hub");
    nodes.b.stop();
    nodes.a.stop();
}

/// `onramp store migrate` copies a stopped SQLite deployment's store into an
/// empty PostgreSQL database: the records read back alike (secrets unsealed
/// with the same keys, creation times kept), the counts are checked, and a
/// database that already holds a service is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_migrates_into_postgresql() {
    if common::sqlite_only("the source of a migration is an embedded store") {
        return;
    }
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let mut server = Server::start_in(&dir, "127.0.0.1:0", &[]);
    let key = server.enroll("moved-dev", json!({})).await;
    server.enroll_group("moved-group", json!({})).await;
    let (status, _, op) = server
        .register("moved-dev", &key, "?api-version=2021-06-01")
        .await;
    assert!(matches!(status, 200 | 202), "{status} {op}");
    if op["status"] != "assigned" {
        let operation = op["operationId"].as_str().unwrap();
        let (status, polled) = poll_until_done(&server, "moved-dev", &key, operation).await;
        assert_assigned(status, &polled, 200);
    }
    server.stop();
    let source = server.store();
    let enrollment = stored::<IndividualEnrollment>(&*source, "default", "moved-dev")
        .await
        .unwrap();
    let registration = stored::<RegistrationRecord>(&*source, "default", "moved-dev")
        .await
        .unwrap();
    let hubs = source.linked_hubs("default").await.unwrap();
    drop(source);

    let migrate = || {
        common::onramp()
            .args(["store", "migrate", "--from"])
            .arg(&dir)
            .args(["--to", db.url()])
            .env_remove("ONRAMP_MASTER_KEY")
            .env_remove("ONRAMP_CONFIG")
            .output()
            .unwrap()
    };
    let stdout = common::succeeded(&migrate());
    assert!(stdout.contains("migrated 1 service(s)"), "{stdout}");
    assert!(stdout.contains("1 enrollments"), "{stdout}");
    assert!(stdout.contains("1 groups"), "{stdout}");
    assert!(stdout.contains("1 registrations"), "{stdout}");

    let sealer = Arc::new(Sealer::load_or_create(&dir.join("keys")).unwrap());
    let target = PgStore::open(db.url(), sealer, Default::default())
        .await
        .unwrap();
    let moved = stored::<IndividualEnrollment>(&target, "default", "moved-dev")
        .await
        .expect("the enrollment, in PostgreSQL");
    assert_eq!(
        moved.attestation, enrollment.attestation,
        "keys unsealed alike"
    );
    assert_eq!(
        moved.created_date_time_utc,
        enrollment.created_date_time_utc
    );
    assert_eq!(
        moved.last_updated_date_time_utc,
        enrollment.last_updated_date_time_utc
    );
    let moved = stored::<RegistrationRecord>(&target, "default", "moved-dev")
        .await
        .expect("the registration, in PostgreSQL");
    assert_eq!(moved.operation_id, registration.operation_id);
    assert_eq!(moved.placement, registration.placement);
    assert_eq!(moved.state.assigned_hub, registration.state.assigned_hub);
    assert_eq!(
        moved.state.created_date_time_utc,
        registration.state.created_date_time_utc
    );
    assert_eq!(target.linked_hubs("default").await.unwrap(), hubs);
    assert_eq!(
        target.policies("default").await.unwrap().len(),
        server.store().policies("default").await.unwrap().len()
    );

    // A database that holds a service already is refused, and left alone.
    let out = migrate();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already holds 1 provisioning service"),
        "{stderr}"
    );
}
