//! Throttling against `onramp serve` configured with `[throttle]`: a device
//! over its registrations per minute hears 429 with the Retry-After of its
//! bucket over HTTPS and MQTT; a client address that spent its failed
//! authentications is refused before any check (an MQTT CONNECT as server
//! unavailable) while a device elsewhere is served; a provisioning service
//! over its registration rate or its service-API rate throttles the surplus,
//! and one with a rate of its own (`[throttle.services.NAME]`) is held to it
//! alone; wrong keys past the failures of their registration ID or policy
//! are answered late while right keys are answered at once.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Server, unix_now};
use onramp_net::mqtt::QoS;
use serde_json::Value;

const API: &str = "?api-version=2021-06-01";

/// A server with `throttle` as its `[throttle]` section.
fn throttled_server(throttle: &str) -> Server {
    Server::with_config(&format!("[throttle]\n{throttle}\n"))
}

/// The Retry-After header of an answer, in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> u64 {
    headers["retry-after"].to_str().unwrap().parse().unwrap()
}

/// Asserts an HTTPS answer is the throttling error, naming `who`, with a
/// Retry-After (seconds) within `wait`.
fn assert_throttled(
    (status, headers, body): &(u16, reqwest::header::HeaderMap, serde_json::Value),
    who: &str,
    wait: std::ops::RangeInclusive<u64>,
) {
    common::assert_error(*status, body, 429, 429001);
    let after = retry_after(headers);
    assert!(wait.contains(&after), "Retry-After {after}");
    common::assert_message_says(body, who);
}

#[tokio::test]
async fn a_device_over_its_registrations_per_minute_is_told_when_to_come_back() {
    let server = throttled_server("device_registrations_per_minute = 2");
    let key = server.enroll("thr-dev-1", serde_json::json!({})).await;
    for _ in 0..2 {
        let (status, _, op) = server.register("thr-dev-1", &key, API).await;
        assert!(status == 200 || status == 202, "{status} {op}");
    }
    // One registration every 30 s: the next one is due within 30 s.
    let refused = server.register("thr-dev-1", &key, API).await;
    assert_throttled(&refused, "thr-dev-1", 20..=30);

    // The same budget over MQTT: the answer's topic carries 429 and retry-after.
    let mut mqtt = server
        .mqtt_connect(&server.mqtt_options("thr-dev-1", &key))
        .await
        .unwrap();
    mqtt.subscribe(&[("$dps/registrations/res/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    mqtt.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=7",
        r#"{"registrationId":"thr-dev-1"}"#,
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    let answer = mqtt.next_message().await.unwrap();
    assert!(
        answer
            .topic
            .starts_with("$dps/registrations/res/429/?$rid=7&retry-after="),
        "{}",
        answer.topic
    );
    let seconds: u64 = answer.topic.rsplit('=').next().unwrap().parse().unwrap();
    assert!((1..=30).contains(&seconds), "{}", answer.topic);

    // Another device has a budget of its own.
    let other = server.enroll("thr-dev-2", serde_json::json!({})).await;
    let (status, _, op) = server.register("thr-dev-2", &other, API).await;
    assert!(status == 200 || status == 202, "{status} {op}");

    // Both refusals are counted by their limit; the address limit, on by
    // default, refused nothing.
    let metrics = server.metrics().await;
    for (series, want) in [
        (r#"onramp_throttled_total{limit="device"} "#, "2"),
        (r#"onramp_throttled_total{limit="address"} "#, "0"),
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .unwrap_or_else(|| panic!("no {series}in\n{metrics}"));
        assert_eq!(value, want, "{series}");
    }
}

/// A client whose connections come from `addr` (any 127.0.0.0/8 address
/// reaches the server on 127.0.0.1).
fn client_from(server: &Server, addr: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls((*server.tls()).clone())
        .local_address(IpAddr::from(addr))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn register_from(
    server: &Server,
    client: &reqwest::Client,
    registration_id: &str,
    key: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let token = server.device_token(registration_id, key, unix_now() + 600);
    common::answer(
        client
            .put(server.url(&format!(
                "{}/registrations/{registration_id}/register?api-version=2021-06-01",
                server.id_scope()
            )))
            .header("Authorization", token)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(format!(r#"{{"registrationId":"{registration_id}"}}"#)),
    )
    .await
}

#[tokio::test]
async fn an_address_that_spent_its_failures_waits_and_others_are_served() {
    let server = throttled_server("failed_authentications_per_minute = 3");
    let key = server.enroll("thr-dev-3", serde_json::json!({})).await;
    let wrong = onramp_core::keys::generate().expose().to_owned();
    let guesser = client_from(&server, [127, 0, 0, 2]);
    let device = client_from(&server, [127, 0, 0, 1]);

    // Three wrong guesses fill the budget, the fourth overdraws it.
    for attempt in 0..4 {
        let (status, _, body) = register_from(&server, &guesser, "thr-dev-3", &wrong).await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    // Now the guessing address is refused before any check, even with the
    // right key, and told when to come back.
    let refused = register_from(&server, &guesser, "thr-dev-3", &key).await;
    assert_throttled(&refused, "127.0.0.2", 1..=20);
    // The device itself, from its own address, is never locked out.
    let (status, _, op) = register_from(&server, &device, "thr-dev-3", &key).await;
    assert!(status == 200 || status == 202, "{status} {op}");
    assert_eq!(op["status"], "assigned", "{op}");
}

/// `count` devices of the symmetric-key group whose key is `group_key`, in
/// the provisioning service of ID scope `scope`, register all at once; their
/// answers.
async fn register_burst(
    server: &Server,
    scope: &str,
    group_key: &str,
    prefix: &str,
    count: usize,
) -> Vec<(u16, reqwest::header::HeaderMap, Value)> {
    let mut burst = tokio::task::JoinSet::new();
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        let key = onramp_core::sas::derive_device_key(group_key, &id).unwrap();
        let token = onramp_core::sas::sign(
            &format!("{scope}/registrations/{id}"),
            &key,
            unix_now() + 600,
            Some("registration"),
        )
        .unwrap();
        let request = server
            .http()
            .put(server.url(&format!(
                "{scope}/registrations/{id}/register?api-version=2021-06-01"
            )))
            .header("Authorization", token)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(format!(r#"{{"registrationId":"{id}"}}"#));
        burst.spawn(common::answer(request));
    }
    burst.join_all().await
}

#[tokio::test]
async fn a_service_over_its_rate_throttles_the_surplus() {
    let server = throttled_server("registrations_per_second = 2");
    let group_key = server.enroll_group("thr-line", serde_json::json!({})).await;
    let answers = register_burst(&server, &server.id_scope(), &group_key, "thr-line", 8).await;
    let throttled: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    let admitted = answers.len() - throttled.len();
    // Two at once, and one more for each half second the burst took.
    assert!((2..=5).contains(&admitted), "{answers:?}");
    for (_, headers, body) in throttled {
        assert_eq!(body["errorCode"], 429001, "{body}");
        assert_eq!(retry_after(headers), 1);
    }
}

#[tokio::test]
async fn an_mqtt_connect_from_an_address_past_its_failures_is_refused_as_unavailable() {
    use onramp_net::mqtt::ConnectAckReason;
    let server = throttled_server("failed_authentications_per_minute = 2");
    let key = server.enroll("thr-mqtt", serde_json::json!({})).await;
    let wrong = onramp_core::keys::generate().expose().to_owned();
    // Two wrong guesses fill the budget, the third overdraws it: each is
    // refused as a bad credential.
    for attempt in 0..3 {
        server
            .assert_mqtt_refused(
                &server.mqtt_options("thr-mqtt", &wrong),
                ConnectAckReason::NotAuthorized,
                &format!("wrong key, attempt {attempt}"),
            )
            .await;
    }
    // Then even the right key from that address hears "server unavailable"
    // (what the SDKs retry), before any check.
    server
        .assert_mqtt_refused(
            &server.mqtt_options("thr-mqtt", &key),
            ConnectAckReason::ServiceUnavailable,
            "right key from the benched address",
        )
        .await;
    // The device from another address is served.
    let device = client_from(&server, [127, 0, 0, 3]);
    let (status, _, op) = register_from(&server, &device, "thr-mqtt", &key).await;
    assert!(status == 200 || status == 202, "{status} {op}");
    assert_eq!(op["status"], "assigned", "{op}");
    let refused = server
        .metric(r#"onramp_throttled_total{limit="address"}"#)
        .await
        .unwrap();
    assert!(refused >= 1.0, "{refused}");
}

#[tokio::test]
async fn service_api_calls_over_their_rate_are_answered_429_with_retry_after() {
    let server = throttled_server("service_api_requests_per_minute = 3");
    let owner = server.owner_connection_string().await;
    // The enrollment is the first call of the budget, two reads the rest.
    let key = server.enroll("thr-svc", serde_json::json!({})).await;
    let path = "enrollments/thr-svc?api-version=2021-10-01";
    for _ in 0..2 {
        let (status, body) = server.get(&owner, path).await;
        assert_eq!(status, 200, "{body}");
    }
    // A wrong key is refused as such and spends nothing.
    let right = owner.split("SharedAccessKey=").nth(1).unwrap();
    let wrong = owner.replace(right, onramp_core::keys::generate().expose());
    assert_eq!(server.get(&wrong, path).await.0, 401);
    let (status, headers, body) = server
        .service_call(&owner, reqwest::Method::GET, path, None, &[])
        .await;
    common::assert_error(status, &body, 429, 429001);
    assert_eq!(headers["x-ms-error-code"], "Throttled");
    // One call every 20 s.
    let wait = retry_after(&headers);
    assert!((15..=20).contains(&wait), "Retry-After {wait}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("3 service API requests a minute"),
        "{body}"
    );
    // Devices are not charged.
    let (status, _, op) = server.register("thr-svc", &key, API).await;
    assert!(status == 200 || status == 202, "{status} {op}");
    assert_eq!(
        server
            .metric(r#"onramp_throttled_total{limit="service-api"}"#)
            .await,
        Some(1.0)
    );
    // `onramp limits` shows the limit and its refusal, and what is in use.
    let config = server.data_dir.parent().unwrap().join("onramp.toml");
    let limits = server.cli_json(&["limits", "--json", "--config", config.to_str().unwrap()]);
    let row = |setting: &str| common::row(&limits, "setting", setting);
    let api = row("throttle.service_api_requests_per_minute");
    assert_eq!(
        (api["value"].as_u64(), api["refused"].as_f64()),
        (Some(3), Some(1.0)),
        "{api}"
    );
    let in_flight = row("limits.max_registrations_in_flight");
    assert_eq!(in_flight["value"], 10_000, "{in_flight}");
    assert_eq!(in_flight["inUse"], 0.0, "{in_flight}");
    assert!(row("limits.max_connections")["inUse"].as_f64().unwrap() >= 1.0);
}

#[tokio::test]
async fn a_service_with_a_rate_of_its_own_is_throttled_alone() {
    // factory-a takes one registration a second; the others, by default, any.
    let server = throttled_server("[throttle.services.factory-a]\nregistrations_per_second = 1\n");
    server.cli_ok(&["service", "create", "factory-a"]);
    let config = server.data_dir.parent().unwrap().join("onramp.toml");
    let config = config.to_str().unwrap();
    let show =
        |name: &str| server.cli_json(&["service", "show", name, "--config", config, "-o", "json"]);
    let shown = show("factory-a");
    let rates = &shown["throttle"];
    assert_eq!(
        (
            rates["registrationsPerSecond"].as_u64(),
            rates["serviceApiRequestsPerMinute"].as_u64()
        ),
        (Some(1), Some(0)),
        "{shown}"
    );
    assert_eq!(show("default")["throttle"]["registrationsPerSecond"], 0);
    let table = server.cli_ok(&[
        "service",
        "show",
        "factory-a",
        "--config",
        config,
        "-o",
        "table",
    ]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("throttle.registrationsPerSecond") && l.ends_with('1')),
        "{table}"
    );

    // A burst in factory-a: the surplus hears 429 with its service's rate.
    let owner_a = server.connection_string_of("factory-a").await;
    let (status, group) = server
        .call(
            &owner_a,
            reqwest::Method::PUT,
            "enrollmentGroups/line-a?api-version=2021-10-01",
            Some(serde_json::json!({"enrollmentGroupId": "line-a", "attestation": {"type": "symmetricKey"}})),
        )
        .await;
    assert_eq!(status, 200, "{group}");
    let key_a = common::text(&group["attestation"]["symmetricKey"]["primaryKey"]);
    let scope_a = common::text(&shown["idScope"]);
    let answers = register_burst(&server, &scope_a, &key_a, "line-a", 4).await;
    let throttled: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(!throttled.is_empty(), "{answers:?}");
    for refused in throttled {
        assert_throttled(
            refused,
            "'factory-a' takes at most 1 registrations a second",
            1..=1,
        );
    }
    // The same burst in the default service is all admitted.
    let key = server.enroll_group("line-d", serde_json::json!({})).await;
    let answers = register_burst(&server, &server.id_scope(), &key, "line-d", 4).await;
    for (status, _, op) in &answers {
        assert!(*status == 200 || *status == 202, "{status} {op}");
    }

    // `onramp limits` lists what factory-a is held to.
    let limits = server.cli_json(&["limits", "--json", "--config", config]);
    let row = |setting: &str| common::row(&limits, "setting", setting)["value"].clone();
    assert_eq!(
        row("throttle.services.factory-a.registrations_per_second"),
        1
    );
    assert_eq!(
        row("throttle.services.factory-a.service_api_requests_per_minute"),
        0
    );
    assert_eq!(row("throttle.registrations_per_second"), 0);
}

/// What `answer` resolved to, and how long it took.
async fn timed<T>(answer: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = std::time::Instant::now();
    let answer = answer.await;
    (answer, start.elapsed())
}

#[tokio::test]
async fn wrong_keys_past_their_budget_are_answered_late_and_right_keys_at_once() {
    // Two failures a minute per registration ID and per policy, then each
    // failure answer waits 2 s (the refill, 30 s, capped).
    let server = throttled_server(
        "failed_authentications_per_registration_per_minute = 2\n\
         failed_authentications_per_policy_per_minute = 2\n\
         failed_authentication_delay_max_ms = 2000",
    );
    let delay = Duration::from_millis(2000);
    // Well under the delay, far above an answer on a loaded machine.
    let prompt = Duration::from_millis(1500);
    let key_a = server.enroll("bo-dev-a", serde_json::json!({})).await;
    server.enroll("bo-dev-b", serde_json::json!({})).await;
    let wrong = onramp_core::keys::generate().expose().to_owned();

    // Device A: two wrong keys spend its budget and are answered at once.
    for attempt in 0..2 {
        let ((status, _, body), took) = timed(server.register("bo-dev-a", &wrong, API)).await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
        assert!(took < prompt, "attempt {attempt} took {took:?}");
    }
    // The third is the same 401, late.
    let ((status, _, body), took) = timed(server.register("bo-dev-a", &wrong, API)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        took >= delay,
        "the third wrong key was answered in {took:?}"
    );
    // The right key of device A is answered at once: assigned.
    let ((status, _, op), took) = timed(server.register("bo-dev-a", &key_a, API)).await;
    assert!(status == 200 || status == 202, "{status} {op}");
    assert_eq!(op["status"], "assigned", "{op}");
    assert!(took < prompt, "the right key took {took:?}");
    // Over MQTT, the same engine check: a wrong key's CONNECT is refused
    // late, the right key's accepted at once.
    let (_, took) = timed(server.assert_mqtt_refused(
        &server.mqtt_options("bo-dev-a", &wrong),
        onramp_net::mqtt::ConnectAckReason::NotAuthorized,
        "wrong key over MQTT",
    ))
    .await;
    assert!(took >= delay, "the MQTT wrong key was refused in {took:?}");
    let (connected, took) =
        timed(server.mqtt_connect(&server.mqtt_options("bo-dev-a", &key_a))).await;
    connected.unwrap();
    assert!(took < prompt, "the right key's MQTT CONNECT took {took:?}");
    // A wrong key for device B has a budget of its own.
    let ((status, _, body), took) = timed(server.register("bo-dev-b", &wrong, API)).await;
    assert_eq!(status, 401, "{body}");
    assert!(took < prompt, "device B's wrong key took {took:?}");

    // The owner policy: the same with a wrong key of the service API.
    let owner = server.owner_connection_string().await;
    let right = owner.split("SharedAccessKey=").nth(1).unwrap();
    let wrong_owner = owner.replace(right, onramp_core::keys::generate().expose());
    let path = "enrollments/bo-dev-a?api-version=2021-10-01";
    for attempt in 0..2 {
        let ((status, body), took) = timed(server.get(&wrong_owner, path)).await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
        assert!(took < prompt, "policy attempt {attempt} took {took:?}");
    }
    let ((status, body), took) = timed(server.get(&wrong_owner, path)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        took >= delay,
        "the third wrong policy key was answered in {took:?}"
    );
    let ((status, body), took) = timed(server.get(&owner, path)).await;
    assert_eq!(status, 200, "{body}");
    assert!(took < prompt, "the right policy key took {took:?}");

    // Each delay is counted by its limit, and `onramp limits` shows both.
    for (limit, delayed) in [("registration-failures", 2.0), ("policy-failures", 1.0)] {
        let series = format!(r#"onramp_throttled_total{{limit="{limit}"}}"#);
        assert_eq!(server.metric(&series).await, Some(delayed), "{series}");
    }
    let config = server.data_dir.parent().unwrap().join("onramp.toml");
    let limits = server.cli_json(&["limits", "--json", "--config", config.to_str().unwrap()]);
    let row = |setting: &str| common::row(&limits, "setting", setting);
    for setting in [
        "throttle.failed_authentications_per_registration_per_minute",
        "throttle.failed_authentications_per_policy_per_minute",
    ] {
        let shown = row(setting);
        assert_eq!(shown["value"].as_u64(), Some(2), "{shown}");
        assert!(shown["refused"].as_f64() >= Some(1.0), "{shown}");
    }
    assert_eq!(
        row("throttle.failed_authentication_delay_max_ms")["value"],
        2000
    );
}
