//! A device of the embedded companion hub: provisioned through DPS, with a
//! SAS token for the hub, and over AMQP admitted by a CBS put-token.

use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{Body, MessageId, Outcome};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use serde_json::json;

use super::Server;

const WAIT: Duration = Duration::from_secs(10);

/// An AMQP connection without SASL, as the SDKs open one to a hub.
pub async fn connect(server: &Server) -> ConnectionHandle<()> {
    Connection::builder()
        .container_id("onramp-hub-test-device")
        .hostname("localhost")
        .open_with_stream(server.tls_stream().await)
        .await
        .unwrap()
}

/// A device provisioned to the embedded hub (an individual enrollment with
/// an initial twin): the hub's name and the device's key.
pub async fn hub_device(server: &Server, id: &str) -> (String, String) {
    let key = server
        .enroll(
            id,
            json!({"initialTwin": {"properties": {"desired": {"telemetryRate": 5}}}}),
        )
        .await;
    let state = server.assigned(id, &key, &[]);
    let hub = server.embedded_hub().await.name;
    assert_eq!(state["deviceId"], id, "{state}");
    (hub, key)
}

pub fn device_token(hub: &str, id: &str, key: &str) -> String {
    onramp_core::sas::sign(
        &format!("{hub}/devices/{id}"),
        key,
        super::unix_now() + 600,
        None,
    )
    .unwrap()
}

/// A device provisioned to the embedded hub (see [`hub_device`]) on a new
/// connection, admitted by a put-token on `$cbs`: the connection, its
/// session and the session's CBS links.
pub async fn admitted(server: &Server, id: &str) -> (ConnectionHandle<()>, SessionHandle<()>, Cbs) {
    let (hub, key) = hub_device(server, id).await;
    let mut conn = connect(server).await;
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut cbs = Cbs::attach(&mut session).await;
    let (status, description) = cbs
        .put_token("audience", &device_token(&hub, id, &key))
        .await;
    assert_eq!(status, 200, "{description}");
    (conn, session, cbs)
}

/// The CBS links of a session.
pub struct Cbs {
    sender: Sender,
    receiver: Receiver,
    next: u64,
}

impl Cbs {
    pub async fn attach(session: &mut fe2o3_amqp::session::SessionHandle<()>) -> Cbs {
        let sender = Sender::attach(session, "cbs-sender", "$cbs").await.unwrap();
        let receiver = Receiver::attach(session, "cbs-receiver", "$cbs")
            .await
            .unwrap();
        Cbs {
            sender,
            receiver,
            next: 0,
        }
    }

    /// A put-token as the Node SDK sends it; the answer's status and
    /// description.
    pub async fn put_token(&mut self, audience: &str, token: &str) -> (i32, String) {
        self.next += 1;
        let id = format!("put-{}", self.next);
        let message = onramp_net::amqp::cbs::put_token_request(&id, audience, token);
        let outcome = self.sender.send(message).await.unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        let delivery = tokio::time::timeout(WAIT, self.receiver.recv::<Body<Value>>())
            .await
            .unwrap()
            .unwrap();
        self.receiver.accept(&delivery).await.unwrap();
        let message = delivery.message();
        assert_eq!(
            message.properties.as_ref().unwrap().correlation_id,
            Some(MessageId::String(id)),
            "the answer carries the request's message-id"
        );
        let props = &message.application_properties.as_ref().unwrap().0;
        let status = match props.get("status-code") {
            Some(SimpleValue::Int(s)) => *s,
            other => panic!("status-code: {other:?}"),
        };
        let description = match props.get("status-description") {
            Some(SimpleValue::String(s)) => s.clone(),
            other => panic!("status-description: {other:?}"),
        };
        (status, description)
    }
}
