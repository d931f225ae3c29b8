//! "Why was my device refused?": each registration attempt (assigned,
//! failed or refused, on any protocol) leaves a diagnostic entry with the
//! reason, which the service API's `/diagnostics` (an Onramp extension)
//! and `onramp diagnostics` find, against a running server.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::time::Duration;

use common::{Server, WebhookReply};
use serde_json::{Value, json};

/// The newest entry of `device` with `outcome`, once the server has
/// written it: through the service API, and the same through
/// `onramp diagnostics` (JSON, and in its table).
async fn entry_of(server: &Server, device: &str, outcome: &str) -> Value {
    let entry = api_entry_of(server, device, outcome).await;
    let args = ["diagnostics", "--device", device, "--outcome", outcome];
    let listed = server.cli_json(&[&args[..], &["--since", "1h", "--output", "json"]].concat());
    assert_eq!(listed[0], entry, "onramp diagnostics --output json");
    let table = server.cli_ok(&args);
    let row = table
        .lines()
        .find(|l| l.contains(device))
        .unwrap_or_else(|| panic!("no row of {device}:\n{table}"));
    assert!(row.contains(outcome), "{table}");
    assert!(row.contains(entry["message"].as_str().unwrap()), "{table}");
    if let Some(code) = entry["errorCode"].as_u64() {
        assert!(row.contains(&code.to_string()), "{table}");
    }
    entry
}

/// [`entry_of`] through the service API alone.
async fn api_entry_of(server: &Server, device: &str, outcome: &str) -> Value {
    let cs = server.owner_connection_string().await;
    let path = format!(
        "diagnostics?api-version=2021-10-01&registrationId={device}&outcome={outcome}&top=5"
    );
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, v) = server.get(&cs, &path).await;
        assert_eq!(status, 200, "{v}");
        if let Some(first) = v.as_array().and_then(|a| a.first()) {
            return first.clone();
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {outcome} entry of {device} within 10 s: {last}");
}

fn assert_says(entry: &Value, needle: &str) {
    let message = entry["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} in {entry:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_device_is_found_with_its_hub() {
    let server = Server::start("127.0.0.1:0");
    let hub = server.embedded_hub().await.name;
    let key = server.enroll("meter-1", json!({})).await;
    server.assigned("meter-1", &key, &[]);
    let e = entry_of(&server, "meter-1", "assigned").await;
    assert_eq!(e["outcome"], "assigned", "{e}");
    assert_eq!(e["step"], "done", "{e}");
    assert_eq!(e["protocol"], "https", "{e}");
    assert_eq!(e["clientAddress"], "127.0.0.1", "{e}");
    assert_eq!(e["attestation"], "symmetricKey", "{e}");
    assert_eq!(e["enrollment"], "individual:meter-1", "{e}");
    assert_eq!(e["assignedHub"], hub.as_str(), "{e}");
    assert_eq!(e["deviceId"], "meter-1", "{e}");
    assert_eq!(e["errorCode"], Value::Null, "{e}");
    assert!(e["operationId"].is_string(), "{e}");
    assert!(e["durationMs"].is_u64(), "{e}");
    let time = e["time"].as_str().unwrap();
    assert!(onramp_model::UtcTime::parse(time).is_some(), "{e}");
    assert_says(&e, &format!("hub '{hub}'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_found_refused_with_its_enrollment() {
    let server = Server::start("127.0.0.1:0");
    server.enroll("meter-2", json!({})).await;
    let wrong = onramp_core::keys::generate();
    let (status, _, answer) = server
        .register("meter-2", wrong.expose(), "?api-version=2021-10-01")
        .await;
    assert_eq!(status, 401, "{answer}");
    let e = entry_of(&server, "meter-2", "refused").await;
    assert_eq!(e["errorCode"], 401002, "{e}");
    assert_eq!(e["step"], "attest", "{e}");
    assert_eq!(e["enrollment"], "individual:meter-2", "{e}");
    assert_eq!(e["operationId"], Value::Null, "{e}");
    assert_says(&e, "matches neither key of individual enrollment 'meter-2'");
    // The device heard no more than before: the refusal, no record.
    let (status, v) = server
        .owner_call(
            reqwest::Method::GET,
            "registrations/meter-2?api-version=2021-10-01",
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_device_is_found_refused() {
    let server = Server::start("127.0.0.1:0");
    let key = onramp_core::keys::generate();
    let (status, _, answer) = server
        .register("stranger-1", key.expose(), "?api-version=2021-10-01")
        .await;
    assert_eq!(status / 100, 4, "{answer}");
    let e = entry_of(&server, "stranger-1", "refused").await;
    assert_eq!(e["errorCode"], 404201, "{e}");
    assert_eq!(e["enrollment"], Value::Null, "{e}");
    assert_says(
        &e,
        "no individual enrollment has registration ID 'stranger-1'",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_enrollment_is_found_refused() {
    let server = Server::start("127.0.0.1:0");
    let key = server
        .enroll("meter-3", json!({"provisioningStatus": "disabled"}))
        .await;
    let (status, _, answer) = server
        .register("meter-3", &key, "?api-version=2021-10-01")
        .await;
    assert_eq!(status, 401, "{answer}");
    let e = entry_of(&server, "meter-3", "refused").await;
    assert_eq!(e["errorCode"], 401003, "{e}");
    assert_eq!(e["enrollment"], "individual:meter-3", "{e}");
    assert_says(&e, "individual enrollment 'meter-3' is disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failure_is_found_failed_at_allocation() {
    // A failing webhook is asked once: no retries on Azure's schedule.
    let server = Server::start_with(&["--webhook-retries", "0"]);
    let (url, _) = common::start_webhook(|_| WebhookReply::Answer(500, "boom".to_owned()));
    let group_key = server.enroll_custom_group("appliances", &url).await;
    let device_key = onramp_core::sas::derive_device_key(&group_key, "oven-1").unwrap();
    let (ok, status, stderr) = server.provision("oven-1", &device_key, &[]);
    assert!(!ok && status["status"] != "assigned", "{status} {stderr}");
    let e = entry_of(&server, "oven-1", "failed").await;
    assert_eq!(e["step"], "allocate", "{e}");
    assert_eq!(e["enrollment"], "group:appliances", "{e}");
    assert_says(&e, "answered HTTP 500");
    assert!(
        !e.to_string().contains("s3cret"),
        "the access code stays hidden: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_attempts_record_their_protocol() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("meter-4", json!({})).await;
    let wrong = onramp_core::keys::generate();
    server
        .assert_mqtt_refused(
            &server.mqtt_options("meter-4", wrong.expose()),
            onramp_net::mqtt::ConnectAckReason::NotAuthorized,
            "a wrong key",
        )
        .await;
    let refused = entry_of(&server, "meter-4", "refused").await;
    assert_eq!(refused["protocol"], "mqtt", "{refused}");
    assert_says(&refused, "matches neither key");
    server.assigned("meter-4", &key, &["--protocol", "mqtt"]);
    let assigned = entry_of(&server, "meter-4", "assigned").await;
    assert_eq!(assigned["protocol"], "mqtt", "{assigned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_is_refused_naming_the_parameter() {
    let server = Server::start("127.0.0.1:0");
    let cs = server.owner_connection_string().await;
    for (query, parameter) in [
        ("outcome=lost", "outcome"),
        ("since=yesterday", "since"),
        ("top=0", "top"),
        ("top=1001", "top"),
    ] {
        let (status, v) = server
            .get(&cs, &format!("diagnostics?api-version=2021-10-01&{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["errorCode"], 400004, "{query}: {v}");
        common::assert_message_says(&v, parameter);
    }
    let (status, v) = server.get(&cs, "diagnostics?api-version=2021-10-01").await;
    assert_eq!((status, v), (200, json!([])));
}
