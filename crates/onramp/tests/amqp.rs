//! DPS over AMQP against `onramp serve`, with fe2o3-amqp as the device: a
//! registration and a poll, and the refusals (a bad token or an unknown
//! registration fail SASL, a link to another registration is detached, an
//! unknown operation or a malformed body is rejected, a client that never
//! finishes SASL is dropped, a frame over the server's size ends the
//! connection), and a throttled register rejected with its Retry-After.
//! Every listener takes AMQP by its protocol header, so these tests use the
//! server's HTTPS port.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::time::Duration;

use common::Server;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId, Outcome};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use onramp_core::ports::{RegistrationRecord, StoreExt};
use onramp_endpoints::amqp::{register_message, request_message, status_message};
use onramp_model::IdKey;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An AMQP connection authenticated by SASL PLAIN as `registration_id`.
async fn connect(
    server: &Server,
    registration_id: &str,
    token: &str,
) -> Result<ConnectionHandle<()>, fe2o3_amqp::connection::OpenError> {
    Connection::builder()
        .container_id("onramp-test-device")
        .hostname("localhost:5671")
        .sasl_profile(SaslProfile::Plain {
            username: format!("{}/registrations/{registration_id}", server.id_scope()),
            password: token.to_owned(),
        })
        .open_with_stream(server.tls_stream().await)
        .await
}

/// A new device `id` (an individual enrollment), connected with a token its
/// key signs: the connection and a session on it.
async fn enrolled_session(server: &Server, id: &str) -> (ConnectionHandle<()>, SessionHandle<()>) {
    let key = server.enroll(id, serde_json::json!({})).await;
    let token = server.device_token(id, &key, common::unix_now() + 600);
    let mut conn = connect(server, id, &token).await.unwrap();
    let session = Session::begin(&mut conn).await.unwrap();
    (conn, session)
}

/// A register request with an empty body.
/// A receiving and a sending link on `address`.
async fn links(session: &mut SessionHandle<()>, address: &str) -> (Receiver, Sender) {
    let receiver = Receiver::attach(session, "recv", address).await.unwrap();
    let sender = Sender::attach(session, "send", address).await.unwrap();
    (receiver, sender)
}

/// Sends `message`, which must be rejected: the AMQP error and the Azure
/// error body its description carries.
async fn rejected(
    sender: &mut Sender,
    message: Message<Body<Value>>,
) -> (fe2o3_amqp::types::definitions::Error, Json) {
    let outcome = sender.send(message).await.unwrap();
    let Outcome::Rejected(rejected) = outcome else {
        panic!("not rejected: {outcome:?}")
    };
    let error = rejected.error.unwrap();
    let body = serde_json::from_str(error.description.as_deref().unwrap()).unwrap();
    (error, body)
}

fn register_request() -> Message<Body<Value>> {
    register_message("c-1", b"{}".to_vec())
}

/// The answer to a request: its status property and JSON body.
async fn answer(receiver: &mut Receiver, correlation: &str) -> (i64, Json) {
    let delivery = tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap();
    receiver.accept(&delivery).await.unwrap();
    let message = delivery.message();
    assert_eq!(
        message.properties.as_ref().unwrap().correlation_id,
        Some(MessageId::String(correlation.into()))
    );
    let props = message.application_properties.as_ref().unwrap();
    let status = match props.0.get("iotdps-status") {
        Some(SimpleValue::Int(s)) => i64::from(*s),
        other => panic!("iotdps-status: {other:?}"),
    };
    let Body::Data(data) = &message.body else {
        panic!("not a Data section: {:?}", message.body)
    };
    let bytes: Vec<u8> = data.iter().flat_map(|d| d.0.iter().copied()).collect();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_device_registers_and_polls_over_amqp() {
    let server = Server::start("127.0.0.1:0");
    let (mut conn, mut session) = enrolled_session(&server, "amqp-dev-1").await;
    // Two of the address spellings the SDKs use.
    let scope = server.id_scope();
    let address = format!("{scope}/registrations/amqp-dev-1");
    let mut receiver = Receiver::attach(&mut session, "recv", address.as_str())
        .await
        .unwrap();
    let slashed = format!("/{address}");
    let mut sender = Sender::attach(&mut session, "send", slashed).await.unwrap();
    let outcome = sender
        .send(register_message(
            "c-1",
            br#"{"registrationId":"amqp-dev-1"}"#.to_vec(),
        ))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let (status, mut op) = answer(&mut receiver, "c-1").await;
    assert_eq!(status, 202, "{op}");
    let operation_id = op["operationId"].as_str().unwrap().to_owned();
    for n in 0..50 {
        if op["status"] == "assigned" {
            break;
        }
        assert_eq!(op["status"], "assigning", "{op}");
        let correlation = format!("poll-{n}");
        let outcome = sender
            .send(status_message(&correlation, &operation_id))
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        op = answer(&mut receiver, &correlation).await.1;
    }
    assert_eq!(op["status"], "assigned", "{op}");
    assert_eq!(op["registrationState"]["deviceId"], "amqp-dev-1", "{op}");

    // An operation this API does not have is rejected with an Azure error body.
    let frobnicate = request_message("iotdps-frobnicate", "c-2", None, false, Vec::new());
    let (_, body) = rejected(&mut sender, frobnicate).await;
    assert_eq!(body["errorCode"].as_u64().unwrap() / 1000, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("iotdps-frobnicate"),
        "{body}"
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn sasl_refuses_bad_tokens_and_unknown_registrations() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("amqp-dev-2", serde_json::json!({})).await;
    let wrong = server.device_token(
        "amqp-dev-2",
        "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==",
        common::unix_now() + 600,
    );
    assert!(
        connect(&server, "amqp-dev-2", &wrong).await.is_err(),
        "a wrong key"
    );
    let stranger = server.device_token("amqp-nobody", &key, common::unix_now() + 600);
    assert!(
        connect(&server, "amqp-nobody", &stranger).await.is_err(),
        "an unknown registration"
    );
    // A token for one registration does not open another's links.
    let token = server.device_token("amqp-dev-2", &key, common::unix_now() + 600);
    assert!(
        connect(&server, "amqp-other", &token).await.is_err(),
        "a token for another registration"
    );
}

#[tokio::test]
async fn links_to_another_registration_are_refused() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("amqp-dev-3", serde_json::json!({})).await;
    server.enroll("amqp-dev-4", serde_json::json!({})).await;
    let token = server.device_token("amqp-dev-3", &key, common::unix_now() + 600);
    let mut conn = connect(&server, "amqp-dev-3", &token).await.unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let scope = server.id_scope();
    let address = format!("{scope}/registrations/amqp-dev-4");
    let result = common::send_on(&mut session, "send", &address, register_request()).await;
    assert!(
        result.is_err(),
        "a link to another registration carried a request"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_sasl_is_dropped() {
    let server = Server::with_quick_amqp_open();
    // The server's header and mechanisms come; then, with no sasl-init, the end.
    let seen = server.amqp_answer_to(b"AMQP\x03\x01\x00\x00").await;
    assert!(seen.starts_with(b"AMQP\x03\x01\x00\x00"), "{seen:02x?}");
}

/// Without SASL and without a client certificate a connection is a hub
/// device's (CBS authenticates it after the Open): the embedded hub answers
/// with its header and Open. `hub_amqp.rs` tests the hub's side.
#[tokio::test]
async fn a_client_without_sasl_or_certificate_goes_to_the_hub() {
    let server = Server::with_quick_amqp_open();
    let seen = server.amqp_answer_to(b"AMQP\x00\x01\x00\x00").await;
    // Its header, then its Open (container `onramp-hub`), then the close.
    assert!(seen.starts_with(b"AMQP\x00\x01\x00\x00"), "{seen:02x?}");
    assert!(
        seen.windows(10).any(|w| w == b"onramp-hub"),
        "the hub did not answer: {seen:02x?}"
    );
}

#[tokio::test]
async fn sessions_and_links_are_bounded() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("amqp-dev-5", serde_json::json!({})).await;
    let token = server.device_token("amqp-dev-5", &key, common::unix_now() + 600);
    let scope = server.id_scope();
    let address = format!("{scope}/registrations/amqp-dev-5");

    // Links: a session takes four; the fifth is detached at once.
    let mut conn = connect(&server, "amqp-dev-5", &token).await.unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut receivers = Vec::new();
    for n in 0..4 {
        receivers.push(
            Receiver::attach(&mut session, format!("recv-{n}"), address.as_str())
                .await
                .unwrap(),
        );
    }
    let fifth = common::send_on(&mut session, "send-5", &address, register_request()).await;
    assert!(fifth.is_err(), "a fifth link carried a request");

    // Sessions: a connection begins at most four.
    let mut conn = connect(&server, "amqp-dev-5", &token).await.unwrap();
    let mut begun = 0;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        match tokio::time::timeout(Duration::from_secs(5), Session::begin(&mut conn)).await {
            Ok(Ok(s)) => {
                begun += 1;
                sessions.push(s);
            }
            _ => break,
        }
    }
    assert!(begun <= 4, "{begun} sessions");
}

/// Sends `bytes` after the SASL header and reads until the server closes.
async fn closed_after(server: &Server, bytes: &[u8]) -> Vec<u8> {
    server
        .amqp_answer_to(&[&b"AMQP\x03\x01\x00\x00"[..], bytes].concat())
        .await
}

#[tokio::test]
async fn frames_that_lie_about_their_size_end_the_connection() {
    let server = Server::start("127.0.0.1:0");
    // A SASL frame over 512 bytes.
    closed_after(&server, &[0x00, 0x10, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00]).await;
    // A SASL frame of 20 bytes whose string declares 4 GiB (the fuzz
    // finding): refused without allocating it.
    let mut frame = vec![0x00, 0x00, 0x00, 0x14];
    frame.extend_from_slice(b"\x02\x01\xff\xfe\xb1\xff\xfe\xb1\x00\x00\x00\x29\x0e\xff\x00\x00");
    closed_after(&server, &frame).await;
    // The server is still there and serves a device.
    let key = server.enroll("amqp-dev-6", serde_json::json!({})).await;
    let token = server.device_token("amqp-dev-6", &key, common::unix_now() + 600);
    connect(&server, "amqp-dev-6", &token)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
}

/// A SASL frame (type 1) around `body`.
fn sasl_frame(body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(8 + body.len()).unwrap();
    let mut frame = size.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x02, 0x01, 0x00, 0x00]);
    frame.extend_from_slice(body);
    frame
}

/// `sasl-init` for PLAIN with `user` and `password`, encoded by hand so that
/// the test controls every byte that follows.
fn sasl_plain_init(user: &str, password: &str) -> Vec<u8> {
    let response = format!("\0{user}\0{password}");
    let mut fields = vec![0xa3, 0x05];
    fields.extend_from_slice(b"PLAIN");
    fields.push(0xb0);
    fields.extend_from_slice(&u32::try_from(response.len()).unwrap().to_be_bytes());
    fields.extend_from_slice(response.as_bytes());
    let mut body = vec![0x00, 0x53, 0x41, 0xd0];
    body.extend_from_slice(&u32::try_from(fields.len() + 4).unwrap().to_be_bytes());
    body.extend_from_slice(&2u32.to_be_bytes());
    body.extend_from_slice(&fields);
    sasl_frame(&body)
}

#[tokio::test]
async fn a_frame_over_the_max_frame_size_after_sasl_ends_the_connection() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("amqp-dev-7", serde_json::json!({})).await;
    let token = server.device_token("amqp-dev-7", &key, common::unix_now() + 600);
    let user = format!("{}/registrations/amqp-dev-7", server.id_scope());
    let mut stream = server.tls_stream().await;
    stream.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
    stream
        .write_all(&sasl_plain_init(&user, &token))
        .await
        .unwrap();
    // The server's header, its mechanisms, then the outcome: code 0 (ok).
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.windows(3).any(|w| w == [0x00, 0x53, 0x44]) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during SASL: {seen:02x?}");
        seen.extend_from_slice(&buf[..n]);
    }
    let outcome = seen
        .windows(3)
        .position(|w| w == [0x00, 0x53, 0x44])
        .unwrap();
    // sasl-outcome: list, then the code as a ubyte (0x50 0x00 is ok).
    assert!(
        seen[outcome..].windows(2).any(|w| w == [0x50, 0x00]),
        "SASL did not succeed: {seen:02x?}"
    );
    // AMQP itself, then a frame declaring 1 MiB (the server offers 64 KiB):
    // the connection ends at once, long before the Open deadline.
    stream.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
    stream
        .write_all(&[0x00, 0x10, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00])
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server ends the connection before its 10 s Open deadline")
        .ok();
}

#[tokio::test]
async fn a_register_request_with_a_malformed_body_is_rejected() {
    let server = Server::start("127.0.0.1:0");
    let (mut conn, mut session) = enrolled_session(&server, "amqp-dev-8").await;
    let address = format!("{}/registrations/amqp-dev-8", server.id_scope());
    let (_receiver, mut sender) = links(&mut session, &address).await;
    for (body, names) in [
        (&b"{\"registrationId\": "[..], "body"),
        (&b"{\"registrationId\": 7}"[..], "registrationId"),
    ] {
        let (_, error) = rejected(&mut sender, register_message("c-1", body.to_vec())).await;
        assert_eq!(error["errorCode"].as_u64().unwrap() / 1000, 400, "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(names),
            "{error}"
        );
    }
    // No registration was made.
    let store = server.any_store().await;
    let record = store
        .get::<RegistrationRecord>("default", &IdKey::of("amqp-dev-8"))
        .await
        .unwrap();
    assert!(record.is_none(), "{record:?}");
    conn.close().await.unwrap();
}

/// A device over its registrations per minute is rejected as throttled, with
/// the JSON error and the Retry-After the SDKs read from the rejection.
#[tokio::test]
async fn a_device_over_its_registrations_per_minute_is_rejected_as_throttled() {
    let server = Server::with_config("[throttle]\ndevice_registrations_per_minute = 1\n");
    let key = server.enroll("amqp-thr", serde_json::json!({})).await;
    let token = server.device_token("amqp-thr", &key, common::unix_now() + 600);
    let mut conn = connect(&server, "amqp-thr", &token).await.unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let address = format!("{}/registrations/amqp-thr", server.id_scope());
    let (mut receiver, mut sender) = links(&mut session, &address).await;
    let body = br#"{"registrationId":"amqp-thr"}"#;
    let outcome = sender
        .send(register_message("c-1", body.to_vec()))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    assert_eq!(answer(&mut receiver, "c-1").await.0, 202);

    let (error, body) = rejected(&mut sender, register_message("c-2", body.to_vec())).await;
    assert_eq!(
        error.condition,
        fe2o3_amqp::types::definitions::ErrorCondition::Custom(Symbol::from(
            "com.microsoft:device-container-throttled"
        ))
    );
    assert_eq!(body["errorCode"], 429001, "{body}");
    let info = error.info.unwrap();
    for key in ["retry-after", "Retry-After"] {
        let Some(Value::Uint(seconds)) = info.get(&Symbol::from(key)) else {
            panic!("{key}: {info:?}")
        };
        assert!((1..=60).contains(seconds), "{key} {seconds}");
    }
    conn.close().await.unwrap();
}
