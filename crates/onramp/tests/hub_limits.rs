//! The companion hub's limits on device-to-cloud messages against `onramp
//! serve` configured with them in `[hub]`: a message over the size limit is
//! refused as IoT Hub refuses it on HTTPS (413 `MessageTooLarge`), AMQP
//! (`amqp:link:message-size-exceeded`) and MQTT (the connection closed); a
//! device over its message rate hears 429 `ThrottlingException` with
//! Retry-After (AMQP: `com.microsoft:device-container-throttled` with
//! `retry-after`), and is served again once it waited that long; the hub
//! keeps only the newest messages of a device, and none past their age.
//! Each refusal and drop is counted, and `onramp limits` shows them.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::time::{Duration, Instant};

use common::Server;
use common::hub::{admitted, device_token, hub_device};
use fe2o3_amqp::types::definitions::{ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::{Data, Message, Outcome};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use onramp_net::mqtt::QoS;
use onramp_net::mqtt::client::{ConnectOptions, MqttClient};

/// A server whose `[hub]` section holds `hub`.
fn hub_server(hub: &str) -> Server {
    Server::with_config(&format!("[hub]\n{hub}\n"))
}

/// A device-to-cloud message over HTTPS, as IoT Hub's device API takes it.
async fn send_https(
    server: &Server,
    hub: &str,
    id: &str,
    key: &str,
    n: usize,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let answer = server
        .http()
        .post(server.url(&format!(
            "/devices/{id}/messages/events?api-version=2020-09-30"
        )))
        .header("authorization", device_token(hub, id, key))
        .header("iothub-app-n", n.to_string())
        .header("iothub-messageid", format!("m-{n}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    (status, headers, answer.text().await.unwrap())
}

/// A device provisioned to the embedded hub and connected to it over MQTT,
/// and its telemetry topic.
async fn hub_mqtt(server: &Server, id: &str) -> (MqttClient, String) {
    let (hub, key) = hub_device(server, id).await;
    let host = hub.split(':').next().unwrap();
    let options = ConnectOptions {
        client_id: id.into(),
        username: Some(format!("{host}/{id}/?api-version=2021-04-12")),
        password: Some(device_token(&hub, id, &key)),
        keep_alive: 60,
        clean_session: true,
    };
    let mqtt = server.mqtt_connect(&options).await.unwrap();
    (mqtt, format!("devices/{id}/messages/events/"))
}

fn data(len: usize) -> Message<Data> {
    Message::builder()
        .data(Binary::from(vec![b'x'; len]))
        .build()
}

/// The sample of `series` on the server's `/metrics`.
async fn metric(server: &Server, series: &str) -> f64 {
    let metrics = server.metrics().await;
    common::value_of(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_on_every_protocol() {
    let server = hub_server("max_message_bytes = 1024\ndevice_messages_per_second = 0");
    let (hub, key) = hub_device(&server, "lim-size-1").await;

    // HTTPS: at the limit 204, one byte over 413 MessageTooLarge.
    let (status, _, body) =
        send_https(&server, &hub, "lim-size-1", &key, 1, vec![b'a'; 1024]).await;
    assert_eq!(status, 204, "{body}");
    let (status, headers, body) =
        send_https(&server, &hub, "lim-size-1", &key, 2, vec![b'a'; 1025]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(headers["iothub-errorcode"], "MessageTooLarge");
    assert!(body.contains("ErrorCode:MessageTooLarge"), "{body}");
    assert!(
        body.contains("max_message_bytes"),
        "the fix is named: {body}"
    );

    // AMQP: the delivery is rejected as IoT Hub rejects it.
    let (_conn, mut session, _cbs) = admitted(&server, "lim-size-2").await;
    let address = "/devices/lim-size-2/messages/events";
    let outcome = common::send_on(&mut session, "events", address, data(4096))
        .await
        .unwrap();
    match outcome {
        Outcome::Rejected(r) => {
            let error = r.error.unwrap();
            assert_eq!(
                error.condition,
                ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
                "{error:?}"
            );
        }
        other => panic!("a message too large was {other:?}"),
    }
    let outcome = common::send_on(&mut session, "events-2", address, data(100))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");

    // MQTT has no negative PUBACK: the connection is closed, nothing stored.
    let (mut mqtt, topic) = hub_mqtt(&server, "lim-size-3").await;
    let topic = topic.as_str();
    mqtt.publish(topic, vec![b'b'; 100], QoS::AtLeastOnce)
        .await
        .unwrap();
    let refused = mqtt
        .publish(topic, vec![b'b'; 2048], QoS::AtLeastOnce)
        .await;
    assert!(refused.is_err(), "the connection stays open: {refused:?}");

    assert_eq!(server.hub_messages("lim-size-1").len(), 1);
    assert_eq!(server.hub_messages("lim-size-2").len(), 1);
    assert_eq!(server.hub_messages("lim-size-3").len(), 1);
    assert_eq!(
        metric(
            &server,
            r#"onramp_hub_messages_refused_total{reason="too-large"}"#
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn a_device_over_its_message_rate_is_throttled_until_it_waits() {
    let server = hub_server("device_messages_per_second = 2");
    let (hub, key) = hub_device(&server, "lim-rate-1").await;

    // A second's worth at once, then 429 ThrottlingException with Retry-After.
    for n in 0..2 {
        let (status, _, body) =
            send_https(&server, &hub, "lim-rate-1", &key, n, b"{}".to_vec()).await;
        assert_eq!(status, 204, "{body}");
    }
    let (status, headers, body) =
        send_https(&server, &hub, "lim-rate-1", &key, 2, b"{}".to_vec()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["iothub-errorcode"], "ThrottlingException");
    assert!(body.contains("ErrorCode:ThrottlingException"), "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1, "a token every half second");
    // A device that waits as told is served.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _, body) = send_https(&server, &hub, "lim-rate-1", &key, 3, b"{}".to_vec()).await;
    assert_eq!(status, 204, "after Retry-After: {body}");

    // AMQP: rejected as throttled, with when to come back.
    let (_conn, mut session, _cbs) = admitted(&server, "lim-rate-2").await;
    let address = "/devices/lim-rate-2/messages/events";
    let mut throttled = None;
    for n in 0..5 {
        let outcome = common::send_on(&mut session, &format!("events-{n}"), address, data(10))
            .await
            .unwrap();
        if let Outcome::Rejected(r) = outcome {
            throttled = r.error;
            break;
        }
    }
    let error = throttled.expect("the third message in a second is throttled");
    assert_eq!(
        error.condition,
        ErrorCondition::Custom(Symbol::from("com.microsoft:device-container-throttled"))
    );
    let info = error.info.unwrap();
    assert_eq!(
        info.get(&Symbol::from("retry-after")),
        Some(&Value::Uint(1))
    );

    // MQTT: the connection is closed; the SDK reconnects after its back-off.
    let (mut mqtt, topic) = hub_mqtt(&server, "lim-rate-3").await;
    let topic = topic.as_str();
    let mut sent = 0;
    while mqtt.publish(topic, "{}", QoS::AtLeastOnce).await.is_ok() {
        sent += 1;
        assert!(sent <= 5, "the rate never closed the connection");
    }
    assert_eq!(sent, 2, "a second's worth went through");

    // Another device has a budget of its own, and the refusals are counted.
    let (status, _, body) = send_https(&server, &hub, "lim-rate-1", &key, 4, b"{}".to_vec()).await;
    assert!(status == 204 || status == 429, "{body}");
    assert!(metric(&server, r#"onramp_throttled_total{limit="hub-messages"}"#).await >= 3.0);
    let config = server.data_dir.parent().unwrap().join("onramp.toml");
    let limits = server.cli_ok(&["limits", "--config", config.to_str().unwrap()]);
    let row = limits
        .lines()
        .find(|l| l.starts_with("hub.device_messages_per_second"))
        .unwrap_or_else(|| panic!("{limits}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1], "2", "the configured rate: {row}");
    assert!(
        columns[3].parse::<f64>().unwrap() >= 3.0,
        "the refusals: {row}"
    );
}

#[tokio::test]
async fn the_hub_keeps_the_newest_messages_and_none_past_their_age() {
    let server = hub_server(
        "device_messages_per_second = 0\nretained_messages_per_device = 5\nretained_message_age_seconds = 2",
    );
    let (hub, key) = hub_device(&server, "lim-keep-1").await;
    for n in 0..8 {
        // The first under IoT Hub's default limit but over the DPS routes' body limit.
        let message = if n == 0 {
            vec![b'x'; 250 * 1024]
        } else {
            b"{}".to_vec()
        };
        let (status, _, body) = send_https(&server, &hub, "lim-keep-1", &key, n, message).await;
        assert_eq!(status, 204, "{body}");
    }
    let kept: Vec<String> = server
        .hub_messages("lim-keep-1")
        .iter()
        .map(|m| common::text(&m["properties"]["n"]))
        .collect();
    assert_eq!(kept, ["3", "4", "5", "6", "7"], "the oldest went first");
    assert_eq!(
        metric(&server, "onramp_hub_messages_dropped_total").await,
        3.0
    );

    // Past two seconds a message is dropped by the next write, whoever's.
    let (other, other_key) = (hub.clone(), hub_device(&server, "lim-keep-2").await.1);
    let started = Instant::now();
    let mut n = 100;
    while !server.hub_messages("lim-keep-1").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "messages past their age are still kept"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        n += 1;
        let (status, _, body) =
            send_https(&server, &other, "lim-keep-2", &other_key, n, b"{}".to_vec()).await;
        assert_eq!(status, 204, "{body}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "dropped too soon"
    );
    assert!(metric(&server, "onramp_hub_messages_dropped_total").await >= 8.0);
}
