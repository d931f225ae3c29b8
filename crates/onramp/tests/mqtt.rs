//! MQTT against `onramp serve`: the protocol's rules and every kind of bad input.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, unix_now};
use onramp_net::mqtt::client::{ConnectOptions, MqttClient, Transport};
use onramp_net::mqtt::{ConnectAckReason, QoS, SubscribeReturnCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn dps_options(server: &Server, registration_id: &str, token: String) -> ConnectOptions {
    ConnectOptions {
        client_id: registration_id.into(),
        username: Some(format!(
            "{}/registrations/{registration_id}/api-version=2019-03-31",
            server.id_scope()
        )),
        password: Some(token),
        keep_alive: 60,
        clean_session: false,
    }
}

async fn dps_client(server: &Server, registration_id: &str, key: &str) -> MqttClient {
    let options = dps_options(
        server,
        registration_id,
        server.device_token(registration_id, key, unix_now() + 600),
    );
    let mut c = server.mqtt_connect(&options).await.unwrap();
    let granted = c
        .subscribe(&[("$dps/registrations/res/#", QoS::ExactlyOnce)])
        .await
        .unwrap();
    assert_eq!(
        granted,
        vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)],
        "QoS 2 is granted as 1"
    );
    c
}

/// Publishes a request and returns its response, which must come on
/// `response_topic`.
async fn ask(
    c: &mut MqttClient,
    topic: &str,
    payload: impl Into<bytes::Bytes>,
    qos: QoS,
    response_topic: &str,
) -> onramp_net::mqtt::client::Message {
    c.publish(topic, payload, qos).await.unwrap();
    let m = c.next_message().await.unwrap();
    assert_eq!(m.topic, response_topic);
    m
}

/// A register request with `$rid` `rid`, answered with `status`.
async fn register(
    c: &mut MqttClient,
    rid: u32,
    body: impl Into<bytes::Bytes>,
    qos: QoS,
    status: u16,
) -> onramp_net::mqtt::client::Message {
    let topic = format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}");
    let response_topic = format!("$dps/registrations/res/{status}/?$rid={rid}");
    ask(c, &topic, body, qos, &response_topic).await
}

/// What the server sends on `raw` until it closes the connection, which it
/// must do within ten seconds.
async fn until_closed(raw: &mut (impl AsyncReadExt + Unpin), what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut received))
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection stayed open"))
        .ok();
    received
}

/// Waits for the server to close the connection.
async fn assert_closed(client: MqttClient, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), client.closed())
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection stayed open"))
        .unwrap();
}

#[tokio::test]
async fn register_and_poll_over_mqtt_with_the_topics_sdks_expect() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("mq-1", json!({})).await;
    let mut c = dps_client(&server, "mq-1", &key).await;
    // C# sends no body at all; identity comes from the connection.
    let m = register(&mut c, 42, Vec::new(), QoS::AtLeastOnce, 202).await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["status"], "assigned", "{v}");
    let op = v["operationId"].as_str().unwrap();
    // The poll echoes a UUID $rid verbatim and ignores its body.
    let rid = "47cf275a-8210-443b-a1ae-63c137aca13a";
    let m = ask(
        &mut c,
        &format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"),
        " ",
        QoS::AtLeastOnce,
        &format!("$dps/registrations/res/200/?$rid={rid}"),
    )
    .await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["registrationState"]["deviceId"], "mq-1");
    // QoS 0 requests are answered too (C and Java send them).
    register(
        &mut c,
        7,
        "{\"registrationId\":\"mq-1\"}",
        QoS::AtMostOnce,
        202,
    )
    .await;
    c.ping().await.unwrap();
    // Subscriptions outside the API are refused one by one.
    assert_eq!(
        c.subscribe(&[("devices/#", QoS::AtLeastOnce)])
            .await
            .unwrap(),
        vec![SubscribeReturnCode::Failure]
    );
    // A QoS-0 subscription is granted 0, and its responses come at QoS 0.
    assert_eq!(
        c.subscribe(&[("$dps/registrations/res/#", QoS::AtMostOnce)])
            .await
            .unwrap(),
        vec![SubscribeReturnCode::Success(QoS::AtMostOnce)]
    );
    let m = register(
        &mut c,
        5,
        "{\"registrationId\":\"mq-1\"}",
        QoS::AtLeastOnce,
        202,
    )
    .await;
    assert_eq!(m.qos, QoS::AtMostOnce);
    // Node and Python unsubscribe before they disconnect: UNSUBACK, and no
    // more responses.
    c.unsubscribe(&["$dps/registrations/res/#"]).await.unwrap();
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=8",
        "{\"registrationId\":\"mq-1\"}",
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    // The server answers a publish before it reads the next packet, so a
    // response would have come before the PINGRESP (and been kept by the
    // client): nothing may be waiting once the ping is answered.
    c.ping().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::ZERO, c.next_message())
            .await
            .is_err(),
        "no response without a subscription"
    );
    c.disconnect().await;
    // The credential was checked once at CONNECT, then at each request; the
    // metric tells the steps apart so one device is not counted as several.
    let metrics = server.metrics().await;
    let attempts = |step: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("onramp_attestation_attempts_total{"))
            .filter(|l| l.contains("protocol=\"mqtt\"") && l.contains("outcome=\"success\""))
            .filter(|l| l.contains(&format!("step=\"{step}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(attempts("connect"), 1, "{metrics}");
    assert_eq!(attempts("register"), 4, "{metrics}");
    assert_eq!(attempts("operation-status"), 1, "{metrics}");
}

#[tokio::test]
async fn bad_connects_are_refused_and_closed() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("mq-2", json!({})).await;
    let addr = server.mqtt_endpoint();
    let cases = [
        (
            "wrong key",
            dps_options(
                &server,
                "mq-2",
                server.device_token(
                    "mq-2",
                    "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==",
                    unix_now() + 600,
                ),
            ),
            ConnectAckReason::NotAuthorized,
        ),
        (
            "expired token",
            dps_options(
                &server,
                "mq-2",
                server.device_token("mq-2", &key, unix_now() - 3600),
            ),
            ConnectAckReason::NotAuthorized,
        ),
        (
            "token of another device",
            dps_options(
                &server,
                "mq-2",
                server.device_token("mq-3", &key, unix_now() + 600),
            ),
            ConnectAckReason::NotAuthorized,
        ),
        (
            "client ID is not the registration ID",
            ConnectOptions {
                client_id: "someone".into(),
                ..dps_options(
                    &server,
                    "mq-2",
                    server.device_token("mq-2", &key, unix_now() + 600),
                )
            },
            ConnectAckReason::IdentifierRejected,
        ),
        (
            "user name of no known shape",
            ConnectOptions {
                username: Some("nonsense".into()),
                ..dps_options(&server, "mq-2", String::new())
            },
            ConnectAckReason::BadUserNameOrPassword,
        ),
    ];
    for (what, options, code) in cases {
        let started = Instant::now();
        server.assert_mqtt_refused(&options, code, what).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: refused at once"
        );
    }
    // The refused connection is closed by the server after CONNACK.
    let mut raw = onramp_net::mqtt::client::connect_tls_stream(&addr, server.tls())
        .await
        .unwrap();
    raw.write_all(&connect_packet(
        "mq-2",
        &format!(
            "{}/registrations/mq-2/api-version=2019-03-31",
            server.id_scope()
        ),
        "bad",
    ))
    .await
    .unwrap();
    let buf = until_closed(&mut raw, "refused CONNECT").await;
    assert_eq!(
        buf,
        [0x20, 0x02, 0x00, 0x05],
        "CONNACK not authorized, then end of stream"
    );

    // The hub refuses a wrong or expired device token the same way.
    let hub = server.embedded_hub().await.name;
    let hub_host = hub.split(':').next().unwrap();
    let device_key = server.enroll("mq-hub", json!({})).await;
    let (status, _, _) = server
        .register("mq-hub", &device_key, "?api-version=2021-06-01")
        .await;
    assert_eq!(status, 202);
    for (what, key, expiry) in [
        (
            "wrong key",
            "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==",
            unix_now() + 600,
        ),
        ("expired", device_key.as_str(), unix_now() - 3600),
    ] {
        let token =
            onramp_core::sas::sign(&format!("{hub}/devices/mq-hub"), key, expiry, None).unwrap();
        let options = ConnectOptions {
            client_id: "mq-hub".into(),
            username: Some(format!("{hub_host}/mq-hub/?api-version=2021-04-12")),
            password: Some(token),
            keep_alive: 60,
            clean_session: false,
        };
        let reason = ConnectAckReason::NotAuthorized;
        server
            .assert_mqtt_refused(&options, reason, &format!("hub, {what}"))
            .await;
    }
}

/// A CONNECT packet with user name and password, MQTT 3.1.1, CleanSession 1.
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    connect_packet_with_flags(client_id, username, password, 0b1100_0010)
}

fn connect_packet_with_flags(
    client_id: &str,
    username: &str,
    password: &str,
    flags: u8,
) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    for field in [client_id, username, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    packet(0x10, body)
}

/// A packet: its first byte, the remaining length, then `body`.
fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut packet = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// Reads one packet: its first byte and its body.
async fn read_packet(raw: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    let first = raw.read_u8().await.unwrap();
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let byte = raw.read_u8().await.unwrap();
        len |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    raw.read_exact(&mut body).await.unwrap();
    (first, body)
}

/// What the C# SDK depends on, byte for byte: CleanSession 0 is accepted
/// with SessionPresent 0, and the PUBACK of a register publish comes before
/// the response, which is sent at QoS 1.
#[tokio::test]
async fn clean_session_zero_and_puback_before_the_response() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("mq-raw", json!({})).await;
    let token = server.device_token("mq-raw", &key, unix_now() + 600);
    let mut raw =
        onramp_net::mqtt::client::connect_tls_stream(&server.mqtt_endpoint(), server.tls())
            .await
            .unwrap();
    let username = format!(
        "{}/registrations/mq-raw/api-version=2019-03-31",
        server.id_scope()
    );
    raw.write_all(&connect_packet_with_flags(
        "mq-raw",
        &username,
        &token,
        0b1100_0000,
    ))
    .await
    .unwrap();
    let timeout = Duration::from_secs(10);
    let connack = tokio::time::timeout(timeout, read_packet(&mut raw))
        .await
        .unwrap();
    assert_eq!(connack, (0x20, vec![0x00, 0x00]), "accepted, no session");

    let filter = "$dps/registrations/res/#";
    let mut body = vec![0x00, 0x07];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    raw.write_all(&packet(0x82, body)).await.unwrap();
    let suback = tokio::time::timeout(timeout, read_packet(&mut raw))
        .await
        .unwrap();
    assert_eq!(suback, (0x90, vec![0x00, 0x07, 0x01]));

    let topic = "$dps/registrations/PUT/iotdps-register/?$rid=9";
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&[0x12, 0x34]);
    body.extend_from_slice(br#"{"registrationId":"mq-raw"}"#);
    raw.write_all(&packet(0x32, body)).await.unwrap();
    let first = tokio::time::timeout(timeout, read_packet(&mut raw))
        .await
        .unwrap();
    assert_eq!(first, (0x40, vec![0x12, 0x34]), "PUBACK first");
    let (header, body) = tokio::time::timeout(timeout, read_packet(&mut raw))
        .await
        .unwrap();
    assert_eq!(header & 0xF0, 0x30, "then the response");
    assert_eq!((header >> 1) & 0x03, 1, "at QoS 1");
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = std::str::from_utf8(&body[2..2 + topic_len]).unwrap();
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=9");
}

#[tokio::test]
async fn bad_requests_get_errors_or_end_the_connection() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("mq-4", json!({})).await;

    // Malformed JSON: an Azure error on the response topic; the connection stays.
    let mut c = dps_client(&server, "mq-4", &key).await;
    let m = register(&mut c, 1, "{\"registrationId\": ", QoS::AtLeastOnce, 400).await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["errorCode"], 400001, "{v}");
    // A body over 96 KB: 413 on the response topic.
    let big = serde_json::to_vec(&json!({"payload": {"blob": "x".repeat(100 * 1024)}})).unwrap();
    register(&mut c, 2, big, QoS::AtLeastOnce, 413).await;
    // A poll without an operationId, and one for an unknown operation.
    ask(
        &mut c,
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=3",
        "",
        QoS::AtLeastOnce,
        "$dps/registrations/res/400/?$rid=3",
    )
    .await;
    ask(
        &mut c,
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=4&operationId=nope",
        "",
        QoS::AtLeastOnce,
        "$dps/registrations/res/404/?$rid=4",
    )
    .await;
    c.ping().await.unwrap();

    // A publish to a topic outside the API ends the connection.
    let _ = c
        .publish("devices/mq-4/messages/events/", "hello", QoS::AtLeastOnce)
        .await;
    assert_closed(c, "topic outside the API").await;

    // A packet over the size limit (256 KiB) ends the connection.
    let mut c = dps_client(&server, "mq-4", &key).await;
    let huge = vec![b'x'; 300 * 1024];
    let _ = c
        .publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=5",
            huge,
            QoS::AtLeastOnce,
        )
        .await;
    assert_closed(c, "oversized packet").await;

    // QoS 2 is not supported: the connection ends.
    let mut c = dps_client(&server, "mq-4", &key).await;
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=6",
        "{}",
        QoS::ExactlyOnce,
    )
    .await
    .unwrap();
    assert_closed(c, "QoS 2").await;

    // Garbage instead of MQTT after CONNECT.
    let mut raw =
        onramp_net::mqtt::client::connect_tls_stream(&server.mqtt_endpoint(), server.tls())
            .await
            .unwrap();
    let token = server.device_token("mq-4", &key, unix_now() + 600);
    raw.write_all(&connect_packet(
        "mq-4",
        &format!(
            "{}/registrations/mq-4/api-version=2019-03-31",
            server.id_scope()
        ),
        &token,
    ))
    .await
    .unwrap();
    raw.write_all(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
        .await
        .unwrap();
    let buf = until_closed(&mut raw, "garbage after CONNECT").await;
    assert_eq!(
        &buf[..4],
        &[0x20, 0x02, 0x00, 0x00],
        "accepted, then closed on the garbage"
    );
}

#[tokio::test]
async fn clients_that_never_connect_are_dropped() {
    let server = Server::start_with(&["--mqtt-connect-timeout-ms", "300"]);
    for address in [server.mqtt_endpoint(), server.endpoint()] {
        let started = Instant::now();
        let mut raw = onramp_net::mqtt::client::connect_tls_stream(&address, server.tls())
            .await
            .unwrap();
        // Send a first byte of CONNECT, then nothing.
        raw.write_all(&[0x10]).await.unwrap();
        let buf = until_closed(&mut raw, &address).await;
        let waited = started.elapsed();
        assert!(buf.is_empty());
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "dropped after {waited:?}"
        );
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The stated bound: 1,000 idle MQTT connections cost less than 64 MiB.
const IDLE_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_stay_within_the_memory_bound() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("idle", json!({})).await;
    let pid = server.pid();
    // Warm up: the first connections allocate what every later one shares.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(dps_client(&server, "idle", &key).await);
    }
    let before = rss_kib(pid);
    let server = Arc::new(server);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (server, key) = (server.clone(), key.clone());
        tasks.spawn(async move { dps_client(&server, "idle", &key).await });
        while tasks.len() >= 50 {
            clients.push(tasks.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(c) = tasks.join_next().await {
        clients.push(c.unwrap());
    }
    assert_eq!(clients.len(), 1020);
    let held = rss_kib(pid);
    // Idle for a while: nothing grows.
    for c in clients.iter_mut().take(10) {
        c.ping().await.unwrap();
    }
    // An observation window, not a wait for a condition: idle connections must not grow.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = rss_kib(pid);
    let growth = held.saturating_sub(before);
    // The allocator commits memory in segments and the server has timers of its own (hub
    // latency probes), so a megabyte or so may appear in any window. A leak per idle
    // connection scales with the thousand connections: 4 MiB of slack catches any leak
    // of 4 KiB or more per connection in the window.
    let idle_slack: u64 = 4 * 1024;
    eprintln!(
        "1,000 idle MQTT connections: {growth} KiB ({} KiB each); {} KiB more after 2 s idle",
        growth / 1000,
        later.saturating_sub(held)
    );
    assert!(
        growth < IDLE_BOUND_KIB,
        "1,000 connections cost {growth} KiB; the bound is {IDLE_BOUND_KIB} KiB"
    );
    assert!(
        later <= held + idle_slack,
        "memory grew while idle: {held} → {later} KiB, more than {idle_slack} KiB"
    );
    for c in clients.iter_mut().step_by(97) {
        c.ping().await.unwrap();
    }
}

#[tokio::test]
async fn keep_alive_is_enforced_and_pings_keep_a_connection() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("ka", json!({})).await;
    let token = server.device_token("ka", &key, unix_now() + 600);
    let options = ConnectOptions {
        keep_alive: 1,
        ..dps_options(&server, "ka", token)
    };
    // Pinging inside the keep-alive period keeps the connection…
    let mut c = server.mqtt_connect(&options).await.unwrap();
    let started = Instant::now();
    let mut silent = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        c.ping().await.unwrap();
        silent = Instant::now();
        // Pacing the pings (the point of the test), not waiting for luck.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // …and silence for 1.5 × keep-alive ends it.
    assert_closed(c, "keep-alive").await;
    let waited = silent.elapsed();
    let expected = Duration::from_millis(1400)..Duration::from_secs(5);
    assert!(expected.contains(&waited), "closed after {waited:?}");
}

/// An HTTP upgrade to a WebSocket at the SDKs' path, asking for `subprotocol`.
async fn websocket_upgrade(server: &Server, subprotocol: &str) -> reqwest::Response {
    server
        .http()
        .get(server.url("/$iothub/websocket"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Protocol", subprotocol)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn websocket_paths_and_subprotocol_spellings_of_every_sdk() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("ws-dev", json!({})).await;
    // C, Python, Node: /$iothub/websocket; C#: /; Java (Paho): /mqtt. C sends "MQTT".
    for (path, protocol) in [
        ("/$iothub/websocket", "MQTT"),
        ("/", "mqtt"),
        ("/mqtt", "mqtt"),
    ] {
        let transport = Transport::WebSocket {
            path: path.into(),
            subprotocol: protocol.into(),
        };
        let options = dps_options(
            &server,
            "ws-dev",
            server.device_token("ws-dev", &key, unix_now() + 600),
        );
        let mut c = MqttClient::connect(
            &server.endpoint(),
            server.tls(),
            &transport,
            &options,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{path} {protocol}: {e}"));
        c.subscribe(&[("$dps/registrations/res/#", QoS::AtLeastOnce)])
            .await
            .unwrap();
        c.publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            "{}",
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
        let m = c.next_message().await.unwrap();
        assert_eq!(m.topic, "$dps/registrations/res/202/?$rid=1", "{path}");
        c.disconnect().await;
    }
    // The server echoes the client's spelling of the subprotocol.
    let resp = websocket_upgrade(&server, "MQTT").await;
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "MQTT");
    assert_eq!(
        resp.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    // An upgrade for anything but MQTT is refused.
    let resp = websocket_upgrade(&server, "chat").await;
    assert_eq!(resp.status().as_u16(), 400);
}

/// A registration that outlives the reply budget is answered `assigning`
/// (HTTPS: 202 with Retry-After and Location; MQTT: the 202 topic with
/// `retry-after`), polls say `assigning` while it runs, and then give its
/// result. Here the allocation webhook is busy (503) on each device's first
/// call and is asked again a second later, well past a 200 ms budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_registrations_answer_assigning_then_their_result() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("onramp.toml");
    std::fs::write(&config, "[limits]\nregister_reply_budget_ms = 200\n").unwrap();
    let server = Server::start_in(
        &temp.path().join("data"),
        "127.0.0.1:0",
        &[
            "--config",
            config.to_str().unwrap(),
            "--webhook-retries",
            "1",
        ],
    );
    let hub = server.embedded_hub().await.name;
    let busy_once = std::sync::Mutex::new(std::collections::HashSet::new());
    // The retry is answered only when the test has seen an `assigning` poll.
    let go = Arc::new(tokio::sync::Notify::new());
    let go_webhook = go.clone();
    // A payload with non-ASCII text: devices receive it escaped (\u00fc),
    // as some SDKs' JSON readers need.
    let answer = json!({"iotHubHostName": hub, "payload": {"city": "Zürich"}}).to_string();
    let (url, _) = common::start_webhook(move |request| {
        let id = request["deviceRuntimeContext"]["registrationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if busy_once.lock().unwrap().insert(id) {
            common::WebhookReply::Answer(503, "warming up".into())
        } else {
            common::WebhookReply::AnswerWhen(go_webhook.clone(), 200, answer.clone())
        }
    });
    let group_key = server.enroll_custom_group("slow", &url).await;
    let scope = server.id_scope();

    // HTTPS.
    let id = "slow-https";
    let key = onramp_core::sas::derive_device_key(&group_key, id).unwrap();
    let token = server.device_token(id, &key, unix_now() + 600);
    let (status, headers, body) = server
        .register_raw(
            &scope,
            id,
            "?api-version=2021-06-01",
            Some(&token),
            json!({"registrationId": id}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "assigning", "{body}");
    let op = common::text(&body["operationId"]);
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    let location = headers["location"].to_str().unwrap();
    // As Azure's: the register URL, not the operation's.
    assert!(
        location.starts_with("https://")
            && location.ends_with(&format!("/{scope}/registrations/{id}/register")),
        "{location}"
    );
    let poll = || async {
        let resp = server
            .http()
            .get(server.url(&format!(
                "{scope}/registrations/{id}/operations/{op}?api-version=2021-06-01"
            )))
            .header("Authorization", &token)
            .send()
            .await
            .unwrap();
        let (status, retry) = (
            resp.status().as_u16(),
            resp.headers().contains_key("retry-after"),
        );
        let bytes = resp.bytes().await.unwrap();
        assert!(bytes.is_ascii(), "{bytes:?}");
        (
            status,
            retry,
            serde_json::from_slice::<Value>(&bytes).unwrap(),
        )
    };
    let (status, retry, v) = poll().await;
    assert_eq!((status, retry), (202, true), "{v}");
    assert_eq!(v["status"], "assigning");
    assert_eq!(v["registrationState"]["registrationId"], id);
    assert_eq!(v["registrationState"]["status"], "assigning");
    go.notify_one();
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let (status, retry, v) = poll().await;
        if status == 200 {
            assert!(!retry, "a terminal answer has no Retry-After");
            break v;
        }
        assert!(Instant::now() < deadline, "still {status}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], hub);
    assert_eq!(done["registrationState"]["payload"]["city"], "Zürich");

    // MQTT.
    let id = "slow-mqtt";
    let key = onramp_core::sas::derive_device_key(&group_key, id).unwrap();
    let mut c = dps_client(&server, id, &key).await;
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        json!({"registrationId": id}).to_string(),
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    let m = c.next_message().await.unwrap();
    assert!(
        m.topic
            .starts_with("$dps/registrations/res/202/?$rid=1&retry-after="),
        "{}",
        m.topic
    );
    assert_eq!(m.qos, QoS::AtLeastOnce);
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["status"], "assigning", "{v}");
    let op = common::text(&v["operationId"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rid = 1;
    let done = loop {
        rid += 1;
        c.publish(
            &format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
            ),
            "",
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
        let m = c.next_message().await.unwrap();
        assert!(m.payload.is_ascii(), "{:?}", m.payload);
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.topic == format!("$dps/registrations/res/200/?$rid={rid}") {
            assert!(rid > 2, "the first poll says assigning: {v}");
            break v;
        }
        assert!(
            m.topic.starts_with(&format!(
                "$dps/registrations/res/202/?$rid={rid}&retry-after="
            )),
            "{}",
            m.topic
        );
        assert_eq!(v["registrationState"]["status"], "assigning", "{v}");
        go.notify_one();
        assert!(Instant::now() < deadline, "still assigning: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], hub);
    assert_eq!(done["registrationState"]["payload"]["city"], "Zürich");
    c.disconnect().await;

    // The device simulator polls such a registration to its end too.
    for protocol in ["https", "mqtt"] {
        let id = format!("slow-cli-{protocol}");
        let key = onramp_core::sas::derive_device_key(&group_key, &id).unwrap();
        go.notify_one();
        let state = server.assigned(&id, &key, &["--protocol", protocol]);
        assert_eq!(state["assignedHub"], hub, "{protocol}");
    }
}

/// Connects raw, publishes at QoS 1 to `topic`, and returns every byte the
/// server sent after the CONNACK until it closed.
async fn publish_raw_until_closed(
    server: &Server,
    client_id: &str,
    username: &str,
    password: &str,
    topic: &str,
) -> Vec<u8> {
    let mut raw =
        onramp_net::mqtt::client::connect_tls_stream(&server.mqtt_endpoint(), server.tls())
            .await
            .unwrap();
    raw.write_all(&connect_packet(client_id, username, password))
        .await
        .unwrap();
    let connack = tokio::time::timeout(Duration::from_secs(10), read_packet(&mut raw))
        .await
        .unwrap();
    assert_eq!(connack, (0x20, vec![0x00, 0x00]), "{username}: accepted");
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&[0x00, 0x42]);
    body.extend_from_slice(b"{\"hello\": 1}");
    raw.write_all(&packet(0x32, body)).await.unwrap();
    until_closed(&mut raw, topic).await
}

/// A PUBLISH to a topic the client may not use ends the connection without
/// a PUBACK, so the client does not believe the message was delivered; on
/// the DPS endpoint and on the embedded hub.
#[tokio::test]
async fn a_forbidden_publish_is_not_acknowledged() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("mq-forbid", json!({})).await;
    let token = server.device_token("mq-forbid", &key, unix_now() + 600);
    let username = format!(
        "{}/registrations/mq-forbid/api-version=2019-03-31",
        server.id_scope()
    );
    for topic in [
        "devices/mq-forbid/messages/events/",
        "$dps/registrations/PUT/iotdps-register/",
        "$dps/registrations/PUT/elsewhere/?$rid=1",
    ] {
        let rest = publish_raw_until_closed(&server, "mq-forbid", &username, &token, topic).await;
        assert!(
            rest.is_empty(),
            "DPS, {topic}: sent {rest:?} (a PUBACK is 0x40)"
        );
    }

    let state = server.assigned("mq-forbid", &key, &[]);
    let hub = state["assignedHub"].as_str().unwrap();
    let device = state["deviceId"].as_str().unwrap();
    let hub_token = onramp_core::sas::sign(
        &format!("{hub}/devices/{device}"),
        &key,
        unix_now() + 600,
        None,
    )
    .unwrap();
    let hub_user = format!("{hub}/{device}/?api-version=2021-04-12");
    for topic in [
        "devices/someone-else/messages/events/",
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
    ] {
        let rest = publish_raw_until_closed(&server, device, &hub_user, &hub_token, topic).await;
        assert!(
            rest.is_empty(),
            "hub, {topic}: sent {rest:?} (a PUBACK is 0x40)"
        );
    }
}
