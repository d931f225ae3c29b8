//! The embedded companion hub over AMQP against `onramp serve`, with
//! fe2o3-amqp as the device (no SASL, as the Azure IoT SDKs connect): CBS
//! put-token with a good and a bad token, a link to another device's
//! address, telemetry the hub stores, the twin (GET, reported PATCH, the
//! desired-property subscription and a notification), and a connection
//! that never authenticates. Every listener takes AMQP by its protocol
//! header, so these tests use the server's HTTPS port.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::time::Duration;

use common::Server;
use common::hub::{Cbs, admitted, connect, device_token, hub_device};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use onramp_hub::companion::twin_request_message;
use serde_json::{Value as Json, json};

const WRONG_KEY: &str = "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==";
const WAIT: Duration = Duration::from_secs(10);

fn telemetry_message(body: &str) -> Message<Data> {
    Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String("m-1".into())),
            content_type: Some(Symbol::from("application/json")),
            content_encoding: Some(Symbol::from("utf-8")),
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("source", SimpleValue::String("fe2o3".into()))
                .build(),
        )
        .data(Binary::from(body.as_bytes().to_vec()))
        .build()
}

/// [`common::send_on`] with a telemetry message of an empty JSON object.
async fn telemetry_on(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
) -> Result<Outcome, String> {
    common::send_on(session, name, address, telemetry_message("{}")).await
}

/// Asserts a telemetry link `name` to `address` carries a message.
async fn assert_carries(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
) {
    let outcome = telemetry_on(session, name, address).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
}

/// Asserts a telemetry link `name` to `address` carries nothing (`why` it
/// must not is the failure's message).
async fn assert_carries_nothing(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
    why: &str,
) {
    let sent = telemetry_on(session, name, address).await;
    assert!(sent.is_err(), "{why}: {sent:?}");
}

#[tokio::test]
async fn cbs_takes_a_good_token_and_refuses_a_bad_one() {
    let server = Server::start("127.0.0.1:0");
    let (hub, key) = hub_device(&server, "hub-amqp-1").await;
    let mut conn = connect(&server).await;
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut cbs = Cbs::attach(&mut session).await;
    let audience = onramp_core::sas::encode(&format!("{hub}/devices/hub-amqp-1"));

    // A token signed with another key: 401, and no link of that device.
    let (status, description) = cbs
        .put_token(&audience, &device_token(&hub, "hub-amqp-1", WRONG_KEY))
        .await;
    assert_eq!(status, 401, "{description}");
    assert!(description.contains("not signed"), "{description}");
    let address = "/devices/hub-amqp-1/messages/events";
    assert_carries_nothing(&mut session, "events-0", address, "a link without a token").await;
    // A token for a device this hub does not have.
    let (status, description) = cbs
        .put_token(&audience, &device_token(&hub, "hub-amqp-nobody", &key))
        .await;
    assert_eq!(status, 401, "{description}");
    // Not a token at all.
    let (status, _) = cbs.put_token(&audience, "not a token").await;
    assert_eq!(status, 401);

    // The right token: 200, and the device's links work.
    let (status, description) = cbs
        .put_token(&audience, &device_token(&hub, "hub-amqp-1", &key))
        .await;
    assert_eq!(status, 200, "{description}");
    assert_carries(
        &mut session,
        "events-1",
        "/devices/hub-amqp-1/messages/events",
    )
    .await;
    // fe2o3's client reports IllegalState closing a connection one of whose
    // links the server detached; the server's side is checked above.
    let _ = conn.close().await;
}

#[tokio::test]
async fn links_to_another_device_are_refused() {
    let server = Server::start("127.0.0.1:0");
    hub_device(&server, "hub-amqp-3").await;
    let (_conn, mut session, _cbs) = admitted(&server, "hub-amqp-2").await;
    for address in [
        "/devices/hub-amqp-3/messages/events",
        "amqps://localhost:5671/devices/hub-amqp-3/messages/events",
        "/devices/hub-amqp-3/twin",
        "/devices/hub-amqp-2/modules/m/messages/events",
        "0ne00000000/registrations/hub-amqp-2",
    ] {
        assert_carries_nothing(&mut session, address, address, address).await;
    }
    // The device's own address, in the C# spelling.
    let outcome = common::send_on(
        &mut session,
        "own",
        "amqps://localhost:5671/devices/HUB-AMQP-2/messages/events",
        telemetry_message(r#"{"n":1}"#),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let stored = server.cli_ok(&["hub", "messages", "--device", "hub-amqp-3"]);
    assert!(stored.trim().is_empty(), "{stored}");
}

/// A twin request as the Node SDK sends it (annotations, correlation-id,
/// a Data body).
fn twin_request(operation: &str, resource: Option<&str>, id: &str, body: &str) -> Message<Data> {
    let correlation = MessageId::String(id.into());
    twin_request_message(operation, resource, correlation, body.as_bytes().to_vec())
}

/// A twin answer or notification: correlation-id, status, version, body.
type TwinAnswer = (Option<MessageId>, Option<i32>, Option<i64>, Vec<u8>);

/// A device's twin links, paired as the Node SDK attaches them.
struct Twin {
    requests: Sender,
    answers: Receiver,
}

impl Twin {
    async fn attach(session: &mut fe2o3_amqp::session::SessionHandle<()>, device: &str) -> Self {
        let address = format!("/devices/{device}/twin");
        let requests = Sender::attach(session, "twin-sender", address.as_str())
            .await
            .unwrap();
        let answers = Receiver::attach(session, "twin-receiver", address)
            .await
            .unwrap();
        Self { requests, answers }
    }

    /// Sends one request and reads the next message on the twin link.
    async fn call(
        &mut self,
        operation: &str,
        resource: Option<&str>,
        id: &str,
        body: &str,
    ) -> TwinAnswer {
        self.requests
            .send(twin_request(operation, resource, id, body))
            .await
            .unwrap();
        self.next().await
    }

    /// The next message on the twin link: an answer or a notification.
    async fn next(&mut self) -> TwinAnswer {
        let receiver = &mut self.answers;
        let delivery = tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
            .await
            .unwrap()
            .unwrap();
        receiver.accept(&delivery).await.unwrap();
        let m = delivery.message();
        let annotation = |k: &str| {
            m.message_annotations
                .as_ref()
                .and_then(|a| a.0.get(&OwnedKey::Symbol(Symbol::from(k))).cloned())
        };
        let status = match annotation("status") {
            Some(Value::Int(s)) => Some(s),
            None => None,
            other => panic!("status must be an int: {other:?}"),
        };
        let version = match annotation("version") {
            Some(Value::Long(v)) => Some(v),
            None => None,
            other => panic!("version must be a long: {other:?}"),
        };
        let Body::Data(data) = &m.body else {
            panic!("not one Data section: {:?}", m.body)
        };
        assert_eq!(data.len(), 1, "one Data section");
        (
            m.properties.as_ref().and_then(|p| p.correlation_id.clone()),
            status,
            version,
            data[0].0.to_vec(),
        )
    }
}

#[tokio::test]
async fn telemetry_is_stored_and_the_twin_is_served() {
    let server = Server::start("127.0.0.1:0");
    let (mut conn, mut session, _cbs) = admitted(&server, "hub-amqp-4").await;

    // Telemetry, stored with its properties.
    let mut events = Sender::attach(
        &mut session,
        "events",
        "/devices/hub-amqp-4/messages/events",
    )
    .await
    .unwrap();
    for n in 0..2 {
        let outcome = events
            .send(telemetry_message(&json!({"seq": n}).to_string()))
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
    let stored = server.hub_messages("hub-amqp-4");
    assert_eq!(stored.len(), 2, "{stored:?}");
    for (n, m) in stored.iter().enumerate() {
        let body: Json = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["seq"], n, "{m}");
        assert_eq!(m["properties"]["source"], "fe2o3", "{m}");
        assert_eq!(m["properties"]["$.ct"], "application/json", "{m}");
    }

    // The twin links, paired as the Node SDK attaches them.
    let mut links = Twin::attach(&mut session, "hub-amqp-4").await;
    let (correlation, status, _, body) = links.call("GET", None, "get-1", " ").await;
    assert_eq!(correlation, Some(MessageId::String("get-1".into())));
    assert_eq!(status, Some(200));
    let twin: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(twin["desired"]["telemetryRate"], 5, "{twin}");
    let reported_version = twin["reported"]["$version"].as_i64().unwrap();

    let (correlation, status, version, body) = links
        .call(
            "PATCH",
            Some("/properties/reported"),
            "patch-1",
            r#"{"firmware":"fe2o3-1.0"}"#,
        )
        .await;
    assert_eq!(correlation, Some(MessageId::String("patch-1".into())));
    assert_eq!(status, Some(204));
    assert_eq!(version, Some(reported_version + 1));
    assert!(body.is_empty(), "{body:?}");
    let hub_twin = server
        .hub_client()
        .get_twin(&server.embedded_hub().await, "hub-amqp-4")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        hub_twin.properties.unwrap().reported.unwrap()["firmware"],
        "fe2o3-1.0"
    );

    // A patch that is not an object: 400 with a JSON message.
    let (_, status, _, body) = links
        .call("PATCH", Some("/properties/reported"), "patch-2", "[1]")
        .await;
    assert_eq!(status, Some(400));
    let error: Json = serde_json::from_slice(&body).unwrap();
    assert!(error["message"].is_string(), "{error}");

    // Subscribe, then a desired change through the REST API arrives.
    let (correlation, status, _, _) = links
        .call(
            "PUT",
            Some("/notifications/twin/properties/desired"),
            "put-1",
            " ",
        )
        .await;
    assert_eq!(correlation, Some(MessageId::String("put-1".into())));
    assert_eq!(status, Some(200));
    let hub_cs = server
        .embedded_hub()
        .await
        .connection_string
        .expose()
        .to_owned();
    let (status, written) = server
        .call(
            &hub_cs,
            reqwest::Method::PATCH,
            "twins/hub-amqp-4?api-version=2021-04-12",
            Some(json!({"properties": {"desired": {"telemetryRate": 9}}})),
        )
        .await;
    assert_eq!(status, 200, "{written}");
    let (correlation, _, _, body) = links.next().await;
    assert_eq!(correlation, None, "a notification has no correlation-id");
    let patch: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(patch["telemetryRate"], 9, "{patch}");
    assert_eq!(
        patch["$version"], written["properties"]["desired"]["$version"],
        "{patch}"
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_dropped() {
    let server = Server::with_quick_amqp_open();
    // No Open after the header: the hub answers the header, then closes.
    let seen = server.amqp_answer_to(b"AMQP\x00\x01\x00\x00").await;
    assert!(seen.starts_with(b"AMQP\x00\x01\x00\x00"), "{seen:02x?}");

    // An Open, but no put-token: the hub closes the connection.
    let mut conn = connect(&server).await;
    let closed = tokio::time::timeout(WAIT, conn.on_close()).await;
    assert!(closed.is_ok(), "the unauthenticated connection stayed open");
}

#[tokio::test]
async fn hub_sessions_and_links_are_bounded() {
    let server = Server::start("127.0.0.1:0");
    let (_conn, mut session, _cbs) = admitted(&server, "hub-amqp-5").await;
    // Eight links per session (two are CBS): six more are taken, the
    // ninth is detached at once.
    let mut held = Vec::new();
    for n in 0..6 {
        held.push(
            Sender::attach(
                &mut session,
                format!("events-{n}"),
                "/devices/hub-amqp-5/messages/events",
            )
            .await
            .unwrap(),
        );
    }
    let address = "/devices/hub-amqp-5/messages/events";
    assert_carries_nothing(&mut session, "events-9", address, "a ninth link").await;
    // A link that was taken still carries telemetry.
    let outcome = held[0].send(telemetry_message("{}")).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");

    // Sessions: a connection begins at most four.
    let mut conn = connect(&server).await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        match tokio::time::timeout(Duration::from_secs(5), Session::begin(&mut conn)).await {
            Ok(Ok(s)) => sessions.push(s),
            _ => break,
        }
    }
    assert!(sessions.len() <= 4, "{} sessions", sessions.len());
}

/// `onramp hub serve` takes AMQP on its port; an X.509 device authenticates
/// with the certificate of its TLS handshake when it attaches a link, and
/// only for its own address.
#[tokio::test]
async fn a_standalone_hub_serves_x509_devices_over_amqp() {
    use onramp_net::pki::dev_certs::{Issued, Validity};
    let dir = tempfile::tempdir().unwrap();
    let hub = common::HubProcess::start(&dir.path().join("hub"), None);
    let device = Issued::self_signed_device("hub-x509-1", Validity::days(30)).unwrap();
    let stranger = Issued::self_signed_device("hub-x509-2", Validity::days(30)).unwrap();
    let thumbprint_of = |der: &[u8]| {
        onramp_core::x509::Parsed::from_der(der)
            .unwrap()
            .info
            .sha256_thumbprint
    };
    for (id, thumbprint) in [
        ("hub-x509-1", thumbprint_of(&device.cert_der)),
        ("hub-x509-2", thumbprint_of(&stranger.cert_der)),
    ] {
        let (status, body) = hub
            .call(
                reqwest::Method::PUT,
                &format!("devices/{id}"),
                Some(json!({
                    "deviceId": id,
                    "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": thumbprint}},
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let hub_ca = std::fs::read_to_string(hub.dir.join("tls/ca.pem")).unwrap();
    let with_cert = client_tls(&hub_ca, Some(&device));
    let without_cert = client_tls(&hub_ca, None);
    let mut conn = open_without_sasl(hub.listen, with_cert).await;
    let mut session = Session::begin(&mut conn).await.unwrap();
    assert_carries(
        &mut session,
        "events",
        "/devices/hub-x509-1/messages/events",
    )
    .await;
    // A device with another certificate, and one the hub does not have.
    for (name, address) in [
        ("other", "/devices/hub-x509-2/messages/events"),
        ("nobody", "/devices/no-such-device/messages/events"),
    ] {
        assert_carries_nothing(&mut session, name, address, address).await;
    }
    let _ = conn.close().await;

    // Without a certificate and without a token, no link is served.
    let mut conn = open_without_sasl(hub.listen, without_cert).await;
    let mut session = Session::begin(&mut conn).await.unwrap();
    let address = "/devices/hub-x509-1/messages/events";
    assert_carries_nothing(&mut session, "events", address, "no certificate, no token").await;
}

/// A TLS client trusting `ca_pem`, presenting `device`'s certificate if any.
fn client_tls(
    ca_pem: &str,
    device: Option<&onramp_net::pki::dev_certs::Issued>,
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in onramp_net::tls::certs_from_pem(ca_pem).unwrap() {
        roots.add(ca).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(onramp_net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match device {
        Some(device) => builder
            .with_client_auth_cert(
                vec![device.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes())
                    .unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// An AMQP connection without SASL to `listen`, as an X.509 device opens one.
async fn open_without_sasl(
    listen: std::net::SocketAddr,
    tls: rustls::ClientConfig,
) -> ConnectionHandle<()> {
    let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    Connection::builder()
        .container_id("x509-device")
        .hostname("localhost")
        .open_with_stream(stream)
        .await
        .unwrap()
}

/// On `onramp serve`, an X.509 device registers over AMQP and then talks to
/// the embedded hub over AMQP, on the same port with the same certificate
/// and the same host name: its first link tells the two apart.
#[tokio::test]
async fn an_x509_device_registers_and_reaches_the_embedded_hub_over_amqp() {
    use onramp_net::pki::dev_certs::{Issued, Validity};
    let server = Server::start("127.0.0.1:0");
    let id = "amqp-x509-1";
    let device = Issued::self_signed_device(id, Validity::days(30)).unwrap();
    let cs = server.owner_connection_string().await;
    let (status, body) = server
        .call(
            &cs,
            reqwest::Method::PUT,
            &format!("enrollments/{id}?api-version=2021-10-01"),
            Some(json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": device.cert_pem}}}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let files = tempfile::tempdir().unwrap();
    let (chain, key) = (files.path().join("d.pem"), files.path().join("d.key"));
    std::fs::write(&chain, &device.cert_pem).unwrap();
    std::fs::write(&key, &device.key_pem).unwrap();
    let (chain, key) = (chain.to_str().unwrap(), key.to_str().unwrap());
    let as_device = |command: &'static str, more: &[&'static str]| {
        let mut args = vec!["device", command, "--registration-id", id];
        args.extend(["--certificate", chain, "--certificate-key", key]);
        args.extend(more);
        server.cli(&args)
    };
    let out = as_device("provision", &["--protocol", "amqp"]);
    assert!(out.status.success(), "{out:?}");
    let state: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["registrationState"]["deviceId"], id, "{state}");

    let ca = std::fs::read_to_string(server.ca_path()).unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
    let mut conn = open_without_sasl(listen, client_tls(&ca, Some(&device))).await;
    let mut session = Session::begin(&mut conn).await.unwrap();
    assert_carries(
        &mut session,
        "events",
        &format!("/devices/{id}/messages/events"),
    )
    .await;
    assert_carries_nothing(
        &mut session,
        "other",
        "/devices/someone-else/messages/events",
        "the certificate speaks for its own device only",
    )
    .await;
    let _ = conn.close().await;

    // The simulator does the same over WebSockets: provisions, then reaches
    // the hub with its certificate.
    let out = as_device(
        "run",
        &[
            "--protocol",
            "amqp-ws",
            "--hub-protocol",
            "amqp-ws",
            "--messages",
            "2",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("sent 2 telemetry messages"), "{stderr}");
    let stored = server.cli_ok(&["hub", "messages", "--device", id]);
    assert_eq!(stored.lines().count(), 3, "{stored}");
}

/// `onramp device run --hub-protocol amqp`: the simulated device reads its
/// twin, reports properties and sends telemetry over AMQP after a CBS
/// put-token, as the SDKs' AMQP transports do.
#[tokio::test]
async fn the_simulator_uses_its_hub_over_amqp() {
    let server = Server::start("127.0.0.1:0");
    let (_, key) = hub_device(&server, "hub-amqp-sim").await;
    for (i, protocol) in ["amqp", "amqp-ws"].into_iter().enumerate() {
        let report = json!({"firmware": format!("sim-{protocol}")}).to_string();
        let out = server.cli(&[
            "device",
            "run",
            "--registration-id",
            "hub-amqp-sim",
            "--key",
            &key,
            "--hub-protocol",
            protocol,
            "--report",
            &report,
            "--messages",
            "2",
        ]);
        let stdout = common::succeeded(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let twin: Json = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .find(|v| v.get("desired").is_some())
            .unwrap_or_else(|| panic!("no twin in: {stdout}"));
        assert_eq!(twin["desired"]["telemetryRate"], 5, "{twin}");
        assert!(
            stderr.contains("reported properties at version"),
            "{stderr}"
        );
        let stored = server.cli_ok(&["hub", "messages", "--device", "hub-amqp-sim"]);
        assert_eq!(stored.lines().count(), 2 * (i + 1), "{stored}");
        let hub = server.embedded_hub().await;
        let twin = server
            .hub_client()
            .get_twin(&hub, "hub-amqp-sim")
            .await
            .unwrap()
            .unwrap();
        let reported = twin.properties.unwrap().reported.unwrap();
        assert_eq!(reported["firmware"], format!("sim-{protocol}").as_str());
    }
}
