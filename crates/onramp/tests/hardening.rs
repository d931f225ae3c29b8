//! What outsiders can send and see: client-chosen strings in the log.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Server;
use onramp_net::mqtt::ConnectAckReason;
use onramp_net::mqtt::client::{ClientError, ConnectOptions, MqttClient, Transport};
use serde_json::Value;

/// Text a client controls that would forge a log line and colour a terminal.
const FORGED: &str = "\nFORGED 2099-01-01T00:00:00Z  INFO onramp: operator logged in\x1b[31m";
/// The same, percent-encoded for a URL path segment.
const FORGED_IN_PATH: &str =
    "x%0AFORGED%202099-01-01T00:00:00Z%20%20INFO%20onramp:%20operator%20logged%20in%1B%5B31m";

fn tls(server: &Server) -> Arc<rustls::ClientConfig> {
    Arc::new(onramp_net::tls::client_config(Some(&server.ca_pem)).unwrap())
}

async fn mqtt_connect(
    server: &Server,
    options: &ConnectOptions,
) -> Result<MqttClient, ClientError> {
    MqttClient::connect(
        &server.mqtt_endpoint(),
        tls(server),
        &Transport::Tls,
        options,
        Duration::from_secs(10),
    )
    .await
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
        match mqtt_connect(&server, &options).await {
            Err(ClientError::Refused(ConnectAckReason::IdentifierRejected)) => {}
            Err(e) => panic!("{format}: {e}"),
            Ok(_) => panic!("{format}: accepted"),
        }
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
