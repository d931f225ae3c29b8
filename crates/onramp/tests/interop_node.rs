//! The unmodified Azure IoT Node SDKs against `onramp serve`.
//!
//! The SDKs' HTTPS transports always use port 443, so these tests bind
//! 127.0.0.1:443 (root or CAP_NET_BIND_SERVICE) and run one at a time. The
//! SDK packages are installed by `scripts/test` into tests/interop/node.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;
use onramp_core::sas;
use onramp_model::hub::AuthenticationType;
use serde_json::Value;

/// Tests that bind port 443 take turns.
static PORT_443: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/node");
    if dir
        .join("node_modules/azure-iot-provisioning-device")
        .exists()
    {
        return Some(dir);
    }
    assert!(
        std::env::var("ONRAMP_REQUIRE_INTEROP").is_err(),
        "the Node SDKs are not installed in {}; run scripts/test",
        dir.display()
    );
    eprintln!("skipping: the Node SDKs are not installed (scripts/test installs them)");
    None
}

/// Runs a Node script; returns its last stdout line as JSON.
fn node(dir: &PathBuf, server: &Server, args: &[&str]) -> Value {
    let out = Command::new("node")
        .current_dir(dir)
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", server.ca_path())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "node {args:?} printed no JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn node_sdks_provision_devices_and_manage_enrollments() {
    let Some(dir) = node_dir() else { return };
    let _port = PORT_443.lock().await;
    let server = Server::start("127.0.0.1:443");
    assert_eq!(server.endpoint(), "localhost");
    let scope = server.id_scope();
    let cs = server.owner_connection_string().await;

    // The service SDK creates the enrollments (the service generates the keys).
    let setup = node(&dir, &server, &["service_sdk.js", "setup", &cs]);
    assert_eq!(setup["ok"], true, "{setup}");
    let keys = &setup["result"];
    let key = |k: &str| keys[k].as_str().unwrap().to_owned();

    // (a) an individual enrollment, (b) two devices of one group with derived keys.
    let mut devices = vec![(
        "node-ind-1".to_owned(),
        key("individualKey"),
        key("individualSecondaryKey"),
        "lab-1",
        5,
    )];
    for id in ["node-grp-dev-1", "node-grp-dev-2"] {
        devices.push((
            id.to_owned(),
            sas::derive_device_key(&key("groupKey"), id).unwrap(),
            sas::derive_device_key(&key("groupSecondaryKey"), id).unwrap(),
            "line-7",
            30,
        ));
    }
    let hub = server.embedded_hub().await;
    let hub_client = server.hub_client();
    for (id, primary, secondary, site, rate) in &devices {
        let out = node(
            &dir,
            &server,
            &[
                "provision_http.js",
                "localhost",
                &scope,
                id,
                primary,
                r#"{"modelId":"dtmi:onramp:test;1"}"#,
            ],
        );
        assert_eq!(out["ok"], true, "{id}: {out}");
        let result = &out["result"];
        assert_eq!(result["assignedHub"], "localhost", "{out}");
        assert_eq!(result["deviceId"], id.as_str(), "{out}");

        // The hub's REST API shows the device with the right keys and its initial twin.
        let device = hub_client
            .get_device(&hub, id)
            .await
            .unwrap()
            .expect("device in the hub");
        let auth = device.authentication.unwrap();
        assert_eq!(auth.kind, AuthenticationType::Sas);
        let hub_keys = auth.symmetric_key.unwrap();
        assert_eq!(hub_keys.primary_key.unwrap().expose(), primary);
        assert_eq!(hub_keys.secondary_key.unwrap().expose(), secondary);
        let twin = hub_client.get_twin(&hub, id).await.unwrap().expect("twin");
        assert_eq!(twin.tags.unwrap()["site"], *site);
        let desired = twin.properties.unwrap().desired.unwrap();
        assert_eq!(desired["telemetryRate"], *rate);
        assert_eq!(desired["nested"]["mode"], "eco");
    }

    // A wrong key is refused with 401 and the SDK reports it.
    let out = node(
        &dir,
        &server,
        &[
            "provision_http.js",
            "localhost",
            &scope,
            "node-ind-1",
            "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==",
        ],
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["error"]["name"], "UnauthorizedError", "{out}");

    // The service SDK: create, read, update with ETags, stale ETags refused, paging, bulk, delete.
    let manage = node(&dir, &server, &["service_sdk.js", "manage", &cs]);
    assert_eq!(manage["ok"], true, "{manage}");
    assert_eq!(manage["result"]["staleEnrollmentError"], "InvalidEtagError");
    assert!(manage["result"]["enrollmentPages"].as_u64().unwrap() >= 3);

    // Registration states of the group, paged one by one, and a delete.
    let regs = node(
        &dir,
        &server,
        &["service_sdk.js", "registrations", &cs, "node-grp-1"],
    );
    assert_eq!(regs["ok"], true, "{regs}");
    assert_eq!(
        regs["result"]["registrations"].as_array().unwrap().len(),
        2,
        "{regs}"
    );
}
