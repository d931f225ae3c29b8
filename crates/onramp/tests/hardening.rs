//! What outsiders can send and see: client-chosen strings in the log, where
//! metrics are served, how far a service token reaches, and the rules for
//! bulk items, api-version values and IoT Hub device IDs.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use common::{Server, unix_now};
use onramp_net::mqtt::ConnectAckReason;
use onramp_net::mqtt::client::ConnectOptions;
use reqwest::Method;
use serde_json::{Value, json};

/// Text a client controls that would forge a log line and colour a terminal.
const FORGED: &str = "\nFORGED 2099-01-01T00:00:00Z  INFO onramp: operator logged in\x1b[31m";
/// The same, percent-encoded for a URL path segment.
const FORGED_IN_PATH: &str =
    "x%0AFORGED%202099-01-01T00:00:00Z%20%20INFO%20onramp:%20operator%20logged%20in%1B%5B31m";

/// CONNECTs whose user name carries each of the `bad` API versions are
/// refused as a bad user name; one with `good` is accepted.
async fn versions_at_connect(
    server: &Server,
    options: impl Fn(&str) -> ConnectOptions,
    bad: &[&str],
    good: &str,
) {
    for version in bad {
        let reason = ConnectAckReason::BadUserNameOrPassword;
        server
            .assert_mqtt_refused(&options(version), reason, version)
            .await;
    }
    let accepted = server.mqtt_connect(&options(good)).await.unwrap();
    accepted.disconnect().await;
}

#[tokio::test]
async fn client_chosen_strings_reach_the_log_escaped_in_text_and_json() {
    for format in ["text", "json"] {
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        let mut server = Server::start_in(&data, "127.0.0.1:0", &["--log-format", format]);
        server.keep(temp);

        // An MQTT client ID (logged when the CONNECT is refused).
        let options = ConnectOptions {
            client_id: format!("mq{FORGED}"),
            username: Some(format!(
                "{}/registrations/mq-1/api-version=2019-03-31",
                server.id_scope()
            )),
            password: Some("SharedAccessSignature sr=x&sig=y&se=1".into()),
            keep_alive: 60,
            clean_session: true,
        };
        let reason = ConnectAckReason::IdentifierRejected;
        server.assert_mqtt_refused(&options, reason, format).await;
        // A path segment (an ID scope, quoted in the attestation failure's message).
        let (status, _, v) = server
            .register_raw(
                FORGED_IN_PATH,
                "dev-1",
                "?api-version=2021-06-01",
                None,
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(status, 404, "{v}");
        server.stop();

        let log = std::fs::read_to_string(data.join("serve.stderr")).unwrap();
        assert!(
            log.contains("FORGED 2099"),
            "{format}: the refusals were logged: {log}"
        );
        assert!(
            !log.contains('\x1b'),
            "{format}: no escape sequence reaches the log: {log:?}"
        );
        for line in log.lines() {
            assert!(
                !line.starts_with("FORGED"),
                "{format}: a client forged a line: {log}"
            );
            if format == "json" {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("{format}: {e}: {line}"));
            }
        }
        let records = log.lines().filter(|l| l.contains("FORGED 2099")).count();
        assert!(records >= 2, "{format}: MQTT and HTTPS records: {log}");
    }
}

#[tokio::test]
async fn metrics_have_a_listener_of_their_own() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("dev-1", json!({})).await;
    server.assigned("dev-1", &key, &[]);

    // The public port answers /metrics as it answers any unknown route.
    let status_of = |path: &'static str| {
        let request = server.http().get(server.url(path));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status_of("metrics").await, 404);
    assert_eq!(status_of("no-such-route").await, 404);
    assert_eq!(status_of("health").await, 200);

    // The metrics listener, on loopback, recorded in the state file.
    let listen = server.metrics_listen().unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{listen}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("onramp_registration_attempts_total"),
        "{metrics}"
    );
    let http = server.http();
    let status = common::status;
    assert_eq!(
        status(http.get(format!("http://{listen}/other"))).await,
        404
    );
    assert_eq!(
        status(http.post(format!("http://{listen}/metrics"))).await,
        405
    );

    // Switched off: no listener, nothing in the state file, still 404 in public.
    let off = Server::start_with(&["--metrics-listen", "off", "--embedded-hub", "false"]);
    assert_eq!(off.metrics_listen(), None);
    let resp = off.http().get(off.url("metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 404002, "{body}");
}

#[tokio::test]
async fn service_tokens_reach_only_the_paths_under_their_resource() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("dev-1", json!({})).await;
    server.assigned("dev-1", &key, &[]);
    let call = |connection_string: String, resource: String, method: Method, path: &'static str| {
        let cs =
            onramp_core::connection_string::ConnectionString::parse(&connection_string).unwrap();
        let token = onramp_core::sas::sign(
            &resource,
            cs.shared_access_key.unwrap().expose(),
            unix_now() + 600,
            cs.shared_access_key_name.as_deref(),
        )
        .unwrap();
        let request = server
            .http()
            .request(method, server.url(path))
            .header("Authorization", token);
        async move {
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, text)
        }
    };

    // The provisioning service.
    let dps = server.owner_connection_string().await;
    let host = server.endpoint();
    let get_enrollment = "enrollments/dev-1?api-version=2021-10-01";
    for (resource, want) in [
        (host.clone(), 200),
        (format!("{host}/enrollments"), 200),
        (format!("{host}/Enrollments/DEV-1"), 200),
        (format!("{host}/enrollments/dev-1/"), 200),
        (format!("{host}/enrollmentGroups"), 401),
        (format!("{host}/devices"), 401),
        (format!("{host}/enrollmentsX"), 401),
        (format!("{host}/enrollments/dev-10"), 401),
        (format!("{host}/registrations/dev-1"), 401),
    ] {
        let (status, body) = call(dps.clone(), resource.clone(), Method::GET, get_enrollment).await;
        assert_eq!(status, want, "{resource}: {body}");
        if want == 401 {
            assert!(body.contains("does not cover"), "{resource}: {body}");
        }
    }
    let (status, body) = call(
        dps.clone(),
        format!("{host}/enrollmentGroups"),
        Method::POST,
        "enrollmentGroups/query?api-version=2021-10-01",
    )
    .await;
    assert_eq!(status, 200, "a group token on groups: {body}");

    // The embedded hub, by the same rule.
    let hub = server.embedded_hub().await;
    let hub_cs = hub.connection_string.expose().to_owned();
    let get_device = "devices/dev-1?api-version=2021-04-12";
    for (resource, want) in [
        (hub.name.clone(), 200),
        (format!("{}/devices", hub.name), 200),
        (format!("{}/devices/dev-1", hub.name), 200),
        (format!("{}/twins", hub.name), 401),
        (format!("{}/devicesX", hub.name), 401),
        (format!("{}/devices/dev-10", hub.name), 401),
    ] {
        let (status, body) = call(hub_cs.clone(), resource.clone(), Method::GET, get_device).await;
        assert_eq!(status, want, "{resource}: {body}");
    }
}

#[tokio::test]
async fn a_bulk_item_without_an_id_refuses_the_whole_request() {
    let server = Server::start("127.0.0.1:0");
    let cs = server.owner_connection_string().await;
    let sym = json!({"type": "symmetricKey"});
    for (path, body, want) in [
        (
            "enrollments?api-version=2021-10-01",
            json!({"mode": "create", "enrollments": [
                {"registrationId": "bulk-1", "attestation": sym},
                {"attestation": sym},
            ]}),
            "enrollments[1] has no registrationId",
        ),
        (
            "enrollments/?api-version=2021-10-01",
            json!({"mode": "delete", "enrollments": [
                {"registrationId": "", "attestation": sym},
            ]}),
            "enrollments[0] has no registrationId",
        ),
        (
            "enrollmentGroups?api-version=2021-10-01",
            json!({"mode": "update", "enrollmentGroups": [
                {"enrollmentGroupId": "grp-1", "attestation": sym},
                {"enrollmentGroupId": "grp-2", "attestation": sym},
                {"enrollmentGroupId": "", "attestation": sym},
            ]}),
            "enrollmentGroups[2] has no enrollmentGroupId",
        ),
    ] {
        let (status, headers, v) = server
            .service_call(&cs, Method::POST, path, Some(body), &[])
            .await;
        common::assert_error(status, &v, 400, 400004);
        assert!(v["message"].as_str().unwrap().contains(want), "{v}");
        assert!(headers.contains_key("x-ms-error-code"));
    }
    // Nothing of a refused request was applied.
    for path in ["enrollments/bulk-1", "enrollmentGroups/grp-1"] {
        let (status, v) = server
            .get(&cs, &format!("{path}?api-version=2021-10-01"))
            .await;
        assert_eq!(status, 404, "{path}: {v}");
    }
}

#[tokio::test]
async fn api_version_must_be_a_version_on_every_route() {
    let server = Server::start("127.0.0.1:0");
    let scope = server.id_scope();
    let cs = server.owner_connection_string().await;
    let key = server.enroll("dev-1", json!({})).await;
    let token = server.device_token("dev-1", &key, unix_now() + 600);
    let five_kb = format!("2021-10-01{}", "x".repeat(5 * 1024));
    let bad = [
        "2021-10-01%00",
        "%FF",
        five_kb.as_str(),
        "latest",
        "2021-13-01",
    ];

    // DPS device and service APIs over HTTPS.
    for version in bad {
        let query = format!("?api-version={version}");
        let (status, headers, v) = server
            .register_raw(&scope, "dev-1", &query, Some(&token), b"{}".to_vec())
            .await;
        common::assert_error(status, &v, 400, 400003);
        assert!(headers.contains_key("x-ms-error-code"));
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains("api-version")
                && message.contains("2021-10-01")
                && message.len() < 300,
            "{message}"
        );
        let (status, v) = server.get(&cs, &format!("enrollments/dev-1{query}")).await;
        common::assert_error(status, &v, 400, 400003);
    }
    // Every date version devices and tools send is served.
    for version in [
        "2017-08-31-preview",
        "2018-11-01",
        "2019-03-31",
        "2021-06-01",
        "2021-10-01",
        "2025-07-01-preview",
    ] {
        let query = format!("?api-version={version}");
        let (status, _, v) = server
            .register_raw(&scope, "dev-1", &query, Some(&token), b"{}".to_vec())
            .await;
        common::assert_assigned(status, &v, 202);
        let (status, v) = server.get(&cs, &format!("enrollments/dev-1{query}")).await;
        assert_eq!(status, 200, "{version}: {v}");
    }

    // The DPS MQTT user name.
    let dps_options = |api_version: &str| ConnectOptions {
        client_id: "dev-1".into(),
        username: Some(format!(
            "{scope}/registrations/dev-1/api-version={api_version}&ClientVersion=test"
        )),
        password: Some(token.clone()),
        keep_alive: 60,
        clean_session: true,
    };
    let bad = ["2021-10-01%00", "%FF", "latest"];
    versions_at_connect(&server, dps_options, &bad, "2017-08-31-preview").await;

    // The companion hub's REST API and MQTT user name.
    let hub = server.embedded_hub().await;
    let hub_cs = hub.connection_string.expose().to_owned();
    for (query, want) in [
        ("", 400),
        ("?api-version=", 400),
        ("?api-version=2021-04-12%00", 400),
        ("?api-version=%FF", 400),
        ("?api-version=2021-04-12", 200),
        ("?api-version=2019-10-01", 200),
    ] {
        let (status, headers, v) = server
            .service_call(
                &hub_cs,
                Method::GET,
                &format!("devices/dev-1{query}"),
                None,
                &[],
            )
            .await;
        assert_eq!(status, want, "{query}: {v}");
        if want == 400 {
            assert_eq!(headers["iothub-errorcode"], "InvalidProtocolVersion", "{v}");
            assert!(
                v["Message"]
                    .as_str()
                    .unwrap()
                    .starts_with("ErrorCode:InvalidProtocolVersion;"),
                "{v}"
            );
        }
    }
    let hub_host = hub.name.split(':').next().unwrap().to_owned();
    let hub_token = onramp_core::sas::sign(
        &format!("{}/devices/dev-1", hub.name),
        &key,
        unix_now() + 600,
        None,
    )
    .unwrap();
    let hub_options = |api_version: &str| ConnectOptions {
        client_id: "dev-1".into(),
        username: Some(format!("{hub_host}/dev-1/?api-version={api_version}")),
        password: Some(hub_token.clone()),
        keep_alive: 60,
        clean_session: true,
    };
    let bad = ["2021-04-12%00", "%FF", "latest"];
    versions_at_connect(&server, hub_options, &bad, "2019-10-01").await;
}

#[tokio::test]
async fn hub_device_ids_follow_iot_hub_rules() {
    let server = Server::start("127.0.0.1:0");
    let hub = server.embedded_hub().await;
    let hub_cs = hub.connection_string.expose().to_owned();
    let call = |method: Method, path: String, body: Option<Value>| {
        let (server, hub_cs) = (&server, hub_cs.clone());
        async move {
            server
                .service_call(
                    &hub_cs,
                    method,
                    &format!("{path}?api-version=2021-04-12"),
                    body,
                    &[],
                )
                .await
        }
    };
    let long = "x".repeat(300);
    for id in [long.as_str(), "a+b", "a%23b", "a%20b", "%C3%BC"] {
        let (status, headers, v) =
            call(Method::PUT, format!("devices/{id}"), Some(json!({}))).await;
        assert_eq!(status, 400, "{id}: {v}");
        assert_eq!(headers["iothub-errorcode"], "ArgumentInvalid", "{id}");
        let message = v["Message"].as_str().unwrap();
        assert!(
            message.starts_with("ErrorCode:ArgumentInvalid;the device ID"),
            "{id}: {message}"
        );
        assert!(message.len() < 300, "{message}");
    }
    let (status, _, v) = call(
        Method::PUT,
        "devices/A.b%25c_d*e%3Ff!g(h)i,j:k=l@m$n'o".into(),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "every allowed character: {v}");
    assert_eq!(v["deviceId"], "A.b%c_d*e?f!g(h)i,j:k=l@m$n'o");
    let max = "y".repeat(128);
    let (status, _, v) = call(Method::PUT, format!("devices/{max}"), Some(json!({}))).await;
    assert_eq!(status, 200, "128 characters: {v}");

    // Bulk: a bad ID refuses the request as a whole, naming the item.
    let (status, _, v) = call(
        Method::POST,
        "devices".into(),
        Some(json!([
            {"id": "bulk-ok", "importMode": "create"},
            {"id": long, "importMode": "create"},
        ])),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let message = v["Message"].as_str().unwrap();
    assert!(
        message.contains("devices[1].id") && message.contains("300 characters"),
        "{message}"
    );
    let (status, _, v) = call(
        Method::POST,
        "devices".into(),
        Some(json!([{"id": "", "importMode": "create"}])),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["Message"].as_str().unwrap().contains("devices[0].id"),
        "{v}"
    );
    let (status, _, _) = call(Method::GET, "devices/bulk-ok".into(), None).await;
    assert_eq!(status, 404, "nothing of the refused request was applied");

    // The provisioning service refuses an enrollment whose deviceId the hub would.
    let cs = server.owner_connection_string().await;
    for device_id in [long.as_str(), "a+b", "a#b"] {
        let (status, v) = server
            .call(
                &cs,
                Method::PUT,
                "enrollments/dev-1?api-version=2021-10-01",
                Some(json!({"attestation": {"type": "symmetricKey"}, "deviceId": device_id})),
            )
            .await;
        common::assert_error(status, &v, 400, 400004);
        assert!(
            v["message"].as_str().unwrap().starts_with("deviceId:"),
            "{v}"
        );
    }
}
