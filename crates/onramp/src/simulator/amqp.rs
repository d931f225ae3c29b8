//! The simulated device over AMQP 1.0 (and AMQP over WebSockets), as the
//! Node SDK's `Amqp` and `AmqpWs` transports speak to DPS: SASL `PLAIN`
//! with the registration path and the SAS token (an X.509 device skips
//! SASL, its certificate went in the TLS handshake), a sending and a
//! receiving link on the registration path, then register and poll requests
//! told apart by `iotdps-operation-type` and matched by correlation-id.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fe2o3_amqp::link::builder::{Builder, WithName, WithoutName};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId, Outcome};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use onramp_endpoints::amqp::request_message;
use onramp_model::RegistrationOperationStatus;
use onramp_net::client::Transport;

use super::{CLIENT_VERSION, DEVICE_API_VERSION, DeviceSpec, Polling, Protocol, address};

/// How long one request may wait for its answer (the C# SDK gives a whole
/// AMQP registration a minute).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// The WebSocket path and subprotocol of the SDKs' `AmqpWs` transports.
pub fn websocket() -> Transport {
    Transport::WebSocket {
        path: "/$iothub/websocket".into(),
        subprotocol: "AMQPWSB10".into(),
    }
}

/// Registers over AMQP (or AMQP over WebSockets) and polls until finished.
pub(super) async fn provision_amqp(
    spec: &DeviceSpec,
    tls: Arc<rustls::ClientConfig>,
    protocol: Protocol,
    transport: &Transport,
) -> anyhow::Result<RegistrationOperationStatus> {
    let address = address(&spec.endpoint, protocol);
    let io = onramp_net::client::open(&address, tls, transport)
        .await
        .with_context(|| format!("AMQP connection to {address}"))?;
    let registration = format!("{}/registrations/{}", spec.id_scope, spec.registration_id);
    let builder = Connection::builder()
        .container_id(uuid::Uuid::new_v4().to_string())
        .hostname(onramp_model::authority::host(&spec.endpoint));
    let opened = match spec.dps_token()? {
        Some(token) => {
            builder
                .sasl_profile(SaslProfile::Plain {
                    username: registration.clone(),
                    password: token,
                })
                .open_with_stream(io)
                .await
        }
        None => builder.open_with_stream(io).await,
    };
    let mut connection = opened.map_err(|e| {
        anyhow::anyhow!("AMQP connection to {address} refused: {e} (check the key or certificate)")
    })?;
    let result = exchange(&mut connection, spec, &registration).await;
    let _ = connection.close().await;
    result
}

async fn exchange(
    connection: &mut fe2o3_amqp::connection::ConnectionHandle<()>,
    spec: &DeviceSpec,
    registration: &str,
) -> anyhow::Result<RegistrationOperationStatus> {
    let mut session = Session::begin(connection)
        .await
        .context("AMQP session refused")?;
    let mut receiver = link(Receiver::builder(), "provision-receiver")
        .source(registration.to_owned())
        .attach(&mut session)
        .await
        .context("the receiving link was refused")?;
    let mut sender = link(Sender::builder(), "provision-sender")
        .target(registration.to_owned())
        .attach(&mut session)
        .await
        .context("the sending link was refused")?;
    let body = serde_json::to_vec(&spec.register_body())?;
    let mut status = request(
        &mut sender,
        &mut receiver,
        "iotdps-register",
        None,
        body,
        spec.force,
    )
    .await?;
    let polling = Polling::start();
    while polling.again(&status).await? {
        let operation = status.operation_id.clone();
        status = request(
            &mut sender,
            &mut receiver,
            "iotdps-get-operationstatus",
            Some(&operation),
            Vec::new(),
            false,
        )
        .await?;
    }
    let _ = sender.close().await;
    let _ = receiver.close().await;
    let _ = session.end().await;
    Ok(status)
}

/// A link named `name` that carries the SDK's api-version and client-version
/// properties, as both links on the registration path do.
fn link<Role, T, SS, TS>(
    builder: Builder<Role, T, WithoutName, SS, TS>,
    name: &str,
) -> Builder<Role, T, WithName, SS, TS> {
    builder.name(name).properties(link_properties())
}

fn link_properties() -> Fields {
    let mut fields = Fields::default();
    fields.insert(
        Symbol::from("com.microsoft:api-version"),
        Value::String(DEVICE_API_VERSION.into()),
    );
    fields.insert(
        Symbol::from("com.microsoft:client-version"),
        Value::String(CLIENT_VERSION.into()),
    );
    fields
}

/// Sends one request and waits for the answer with its correlation-id.
async fn request(
    sender: &mut Sender,
    receiver: &mut Receiver,
    operation_type: &str,
    operation_id: Option<&str>,
    body: Vec<u8>,
    force: bool,
) -> anyhow::Result<RegistrationOperationStatus> {
    let correlation = uuid::Uuid::new_v4().to_string();
    let message = request_message(operation_type, &correlation, operation_id, force, body);
    let outcome = sender
        .send(message)
        .await
        .with_context(|| format!("sending {operation_type}"))?;
    match outcome {
        Outcome::Accepted(_) => {}
        Outcome::Rejected(rejected) => {
            let error = rejected.error;
            let text = error
                .as_ref()
                .and_then(|e| e.description.clone())
                .unwrap_or_default();
            return Err(refusal(operation_type, &text, error.map(|e| e.condition)));
        }
        other => bail!("{operation_type} was not accepted: {other:?}"),
    }
    let answer = tokio::time::timeout(ANSWER_WITHIN, async {
        loop {
            let delivery = receiver.recv::<Body<Value>>().await?;
            receiver.accept(&delivery).await?;
            let message = delivery.message();
            let matches = message
                .properties
                .as_ref()
                .and_then(|p| p.correlation_id.as_ref())
                == Some(&MessageId::String(correlation.clone()));
            if matches {
                return anyhow::Ok(answer_of(message));
            }
        }
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no answer to {operation_type} within {} s",
            ANSWER_WITHIN.as_secs()
        )
    })??;
    let (code, text) = answer?;
    super::parse_status(code, &text)
}

/// The `iotdps-status` and JSON text of an answer.
fn answer_of(message: &Message<Body<Value>>) -> anyhow::Result<(u16, String)> {
    let code = message
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get("iotdps-status"))
        .and_then(|v| match v {
            SimpleValue::Int(n) => u16::try_from(*n).ok(),
            SimpleValue::Long(n) => u16::try_from(*n).ok(),
            SimpleValue::String(s) => s.parse().ok(),
            _ => None,
        })
        .context("the answer has no iotdps-status")?;
    let Body::Data(sections) = &message.body else {
        bail!("the answer is not a Data section: {:?}", message.body);
    };
    let bytes: Vec<u8> = sections.iter().flat_map(|d| d.0.iter().copied()).collect();
    Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
}

/// A rejected request: its description is the service's JSON error body.
fn refusal(
    operation_type: &str,
    description: &str,
    condition: Option<fe2o3_amqp::types::definitions::ErrorCondition>,
) -> anyhow::Error {
    match serde_json::from_str::<onramp_model::ErrorBody>(description) {
        Ok(err) => anyhow::anyhow!(
            "{operation_type} rejected {}: {}",
            err.error_code,
            err.message
        ),
        Err(_) => anyhow::anyhow!("{operation_type} rejected ({condition:?}): {description}"),
    }
}
