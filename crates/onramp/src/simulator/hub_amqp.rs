//! The simulated device on its hub over AMQP 1.0 (and AMQP over
//! WebSockets), as the Node SDK's `azure-iot-device-amqp` speaks it: no
//! SASL; a SAS device puts its token on `$cbs` (an X.509 device's
//! certificate went in the TLS handshake); telemetry on
//! `/devices/{id}/messages/events`; the twin on a pair of links to
//! `/devices/{id}/twin`, requests told apart by the `operation` and
//! `resource` annotations and answered by correlation-id, desired-property
//! updates on the same receiving link without one.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use onramp_core::sas;
use onramp_hub::companion::twin_request_message;
use serde_json::Value as Json;

use super::amqp::websocket;
use super::hub::HubLogin;
use super::{Protocol, address, unix_now};
use onramp_net::amqp::cbs::put_token_request;
use onramp_net::client::Transport;

/// How long the hub has to answer a request.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// The twin resource whose subscription turns desired-property updates on.
const DESIRED_NOTIFICATIONS: &str = "/notifications/twin/properties/desired";

pub struct AmqpHubDevice {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    telemetry: Sender,
    twin_requests: Sender,
    twin_answers: Receiver,
    next_request: u64,
    /// Desired-property updates that came while an answer was awaited.
    updates: VecDeque<Json>,
}

/// A twin answer: its `status` annotation, its `version` and its body.
struct TwinAnswer {
    status: i64,
    version: Option<i64>,
    body: Vec<u8>,
}

impl AmqpHubDevice {
    /// Connects, authenticates (a put-token, or the TLS client certificate)
    /// and subscribes to desired-property updates.
    pub async fn connect(login: HubLogin<'_>) -> anyhow::Result<Self> {
        let (hub, device_id) = (login.hub, login.device_id);
        let transport = match login.protocol {
            Protocol::AmqpWs => websocket(),
            _ => Transport::Tls,
        };
        let address = address(hub, login.protocol);
        let io = onramp_net::client::open(&address, login.tls, &transport)
            .await
            .with_context(|| format!("AMQP connection to the hub at {address}"))?;
        let mut connection = Connection::builder()
            .container_id(device_id)
            .hostname(onramp_model::authority::host(hub))
            .open_with_stream(io)
            .await
            .with_context(|| format!("AMQP connection to the hub at {address} refused"))?;
        let mut session = Session::begin(&mut connection)
            .await
            .context("the hub refused an AMQP session")?;
        if let Some(key) = login.key {
            put_token(&mut session, hub, device_id, key).await?;
        }
        let device = format!("/devices/{device_id}");
        let refused = |what: &str| format!("the hub refused the {what} link of '{device_id}'");
        let telemetry = Sender::attach(
            &mut session,
            "telemetry",
            format!("{device}/messages/events"),
        )
        .await
        .with_context(|| refused("telemetry"))?;
        let twin_requests = Sender::attach(&mut session, "twin-sender", format!("{device}/twin"))
            .await
            .with_context(|| refused("twin sending"))?;
        let twin_answers =
            Receiver::attach(&mut session, "twin-receiver", format!("{device}/twin"))
                .await
                .with_context(|| refused("twin receiving"))?;
        let mut this = Self {
            connection,
            session,
            telemetry,
            twin_requests,
            twin_answers,
            next_request: 0,
            updates: VecDeque::new(),
        };
        let answer = this
            .twin_request("PUT", Some(DESIRED_NOTIFICATIONS), b" ")
            .await?;
        expect_status(&answer, "the desired-property subscription")?;
        Ok(this)
    }

    /// The whole twin: `{"desired": {…}, "reported": {…}}`.
    pub async fn twin(&mut self) -> anyhow::Result<Json> {
        let answer = self.twin_request("GET", None, b" ").await?;
        expect_status(&answer, "the twin request")?;
        Ok(serde_json::from_slice(&answer.body)?)
    }

    /// Patches reported properties; returns the new reported `$version`.
    pub async fn report(&mut self, patch: &Json) -> anyhow::Result<i64> {
        let body = serde_json::to_vec(patch)?;
        let answer = self
            .twin_request("PATCH", Some("/properties/reported"), &body)
            .await?;
        expect_status(&answer, "the reported patch")?;
        answer
            .version
            .context("the reported patch's answer has no version")
    }

    pub async fn send_telemetry(&mut self, body: &Json) -> anyhow::Result<()> {
        self.next_request += 1;
        let message = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(format!("m-{}", self.next_request))),
                content_type: Some(Symbol::from("application/json")),
                content_encoding: Some(Symbol::from("utf-8")),
                ..Default::default()
            })
            .data(Binary::from(serde_json::to_vec(body)?))
            .build();
        match self.telemetry.send(message).await? {
            Outcome::Accepted(_) => Ok(()),
            other => bail!("the hub did not accept a telemetry message: {other:?}"),
        }
    }

    /// The next desired-properties patch pushed by the hub.
    pub async fn desired_update(&mut self) -> anyhow::Result<Json> {
        if let Some(update) = self.updates.pop_front() {
            return Ok(update);
        }
        loop {
            let (correlation, answer) = self.next_twin_message().await?;
            if correlation.is_none() {
                return Ok(serde_json::from_slice(&answer.body)?);
            }
        }
    }

    pub async fn disconnect(mut self) {
        let _ = self.telemetry.close().await;
        let _ = self.twin_requests.close().await;
        let _ = self.twin_answers.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }

    /// Sends a twin request and waits for the answer with its
    /// correlation-id, keeping desired-property updates that come first.
    async fn twin_request(
        &mut self,
        operation: &str,
        resource: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<TwinAnswer> {
        self.next_request += 1;
        let correlation = MessageId::String(format!("twin-{}", self.next_request));
        let message = twin_request_message(operation, resource, correlation.clone(), body.to_vec());
        self.twin_requests
            .send(message)
            .await
            .with_context(|| format!("sending the twin {operation}"))?;
        tokio::time::timeout(ANSWER_WITHIN, async {
            loop {
                let (id, answer) = self.next_twin_message().await?;
                match id {
                    Some(id) if id == correlation => return Ok(answer),
                    Some(_) => {}
                    None => self
                        .updates
                        .push_back(serde_json::from_slice(&answer.body)?),
                }
            }
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer to the twin {operation} within {} s",
                ANSWER_WITHIN.as_secs()
            )
        })?
    }

    /// The next message on the twin receiving link and its correlation-id.
    async fn next_twin_message(&mut self) -> anyhow::Result<(Option<MessageId>, TwinAnswer)> {
        let delivery = self.twin_answers.recv::<Body<Value>>().await?;
        self.twin_answers.accept(&delivery).await?;
        let message = delivery.message();
        let annotation = |name: &str| {
            message
                .message_annotations
                .as_ref()
                .and_then(|a| a.0.get(&OwnedKey::Symbol(Symbol::from(name))))
                .and_then(integer)
        };
        let body = match &message.body {
            Body::Data(sections) => sections.iter().flat_map(|d| d.0.iter().copied()).collect(),
            _ => Vec::new(),
        };
        let answer = TwinAnswer {
            status: annotation("status").unwrap_or(200),
            version: annotation("version"),
            body,
        };
        let correlation = message
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        Ok((correlation, answer))
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(i64::from(*n)),
        Value::Long(n) => Some(*n),
        _ => None,
    }
}

fn expect_status(answer: &TwinAnswer, what: &str) -> anyhow::Result<()> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    bail!(
        "{what} was answered {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    )
}

/// Puts a SAS token for the device on `$cbs` and checks the answer.
async fn put_token(
    session: &mut SessionHandle<()>,
    hub: &str,
    device_id: &str,
    key: &str,
) -> anyhow::Result<()> {
    let audience = format!("{hub}/devices/{device_id}");
    let token = sas::sign(&audience, key, unix_now() + 3600, None).map_err(anyhow::Error::msg)?;
    let mut sender = Sender::attach(session, "cbs-sender", "$cbs")
        .await
        .context("the hub refused the $cbs sending link")?;
    let mut receiver = Receiver::attach(session, "cbs-receiver", "$cbs")
        .await
        .context("the hub refused the $cbs receiving link")?;
    let message = put_token_request("put-token-1", &audience, &token);
    sender
        .send(message)
        .await
        .context("sending the put-token")?;
    let delivery = tokio::time::timeout(ANSWER_WITHIN, receiver.recv::<Body<Value>>())
        .await
        .map_err(|_| anyhow::anyhow!("no answer to the put-token for {audience}"))??;
    receiver.accept(&delivery).await?;
    let properties = delivery
        .message()
        .application_properties
        .as_ref()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    let status = match properties.get("status-code") {
        Some(SimpleValue::Int(n)) => i64::from(*n),
        Some(SimpleValue::Long(n)) => *n,
        _ => 0,
    };
    if status != 200 {
        let description = match properties.get("status-description") {
            Some(SimpleValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        bail!("the hub refused the SAS token of '{device_id}' ({status}): {description}");
    }
    Ok(())
}
