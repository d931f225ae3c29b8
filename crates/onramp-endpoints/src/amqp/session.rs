//! Sessions, links and request messages of a DPS AMQP connection, and the
//! thin adapter over the engine.

use std::sync::Arc;

use fe2o3_amqp::acceptor::{LinkEndpoint, ListenerConnectionHandle};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Fields};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use onramp_core::ProvisioningError;
use onramp_core::engine::{OperationRequest, RegisterRequest};
use onramp_model::ErrorCode;
use onramp_net::amqp::sessions::{
    AttachedLink, ConnectionSessions, LinkGate, SessionStart, amqp_error, refuse_link,
    serve_requests, serve_sessions,
};
use tokio::sync::{mpsc, watch};

use super::{ConnectionContext, Identity};
use crate::wire::{self, Call};

/// Application property naming the request.
pub const OPERATION_TYPE: &str = "iotdps-operation-type";
/// Application property with the operation a status request asks about.
pub const OPERATION_ID: &str = "iotdps-operation-id";
/// Application property asking to register again even if assigned.
pub const FORCE_REGISTRATION: &str = "iotdps-forceRegistration";
pub const REGISTER: &str = "iotdps-register";
pub const GET_STATUS: &str = "iotdps-get-operationstatus";

/// A link address naming a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub scope: String,
    pub registration_id: String,
}

/// `{idScope}/registrations/{id}`, also with a leading `/` or as
/// `amqps://{host}[:port]/{idScope}/registrations/{id}`; the ID is
/// percent-decoded.
pub fn parse_address(address: &str) -> Option<Address> {
    let path = match address.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("amqps") => rest.split_once('/')?.1,
        Some(_) => return None,
        None => address.strip_prefix('/').unwrap_or(address),
    };
    let mut parts = path.split('/');
    let scope = parts.next()?;
    let literal = parts.next()?;
    let id = parts.next()?;
    if parts.next().is_some()
        || scope.is_empty()
        || id.is_empty()
        || !literal.eq_ignore_ascii_case("registrations")
    {
        return None;
    }
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some(Address {
        scope: scope.to_owned(),
        registration_id: id,
    })
}

/// Serves a connection's sessions until it ends or the server stops. A
/// connection not yet authenticated (an X.509 device proves itself with its
/// first link) must attach an accepted link by `start.authenticate_by`.
pub(crate) async fn serve_connection(
    connection: &mut ListenerConnectionHandle,
    context: Arc<ConnectionContext>,
    shutdown: &mut watch::Receiver<bool>,
    start: SessionStart,
) {
    let stopped = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
        None
    };
    serve_sessions(connection, context, start, stopped).await;
}

impl ConnectionSessions for ConnectionContext {
    const LATE: &'static str = "no link to a registration the certificate is enrolled for in time";

    async fn authenticated(&self) -> bool {
        self.identity.lock().await.is_some()
    }

    /// The device's sending link carries requests, its receiving link the
    /// answers.
    async fn serve_session(self: Arc<Self>, mut links: LinkGate) {
        let (answers_tx, answers_rx) = mpsc::channel::<Message<Data>>(16);
        let mut answers_rx = Some(answers_rx);
        while let Some(AttachedLink { link, address, .. }) = links.next().await {
            let identity = match check_link(&self, address.as_deref()).await {
                Ok(identity) => identity,
                Err(e) => {
                    refuse_link(link, e).await;
                    continue;
                }
            };
            match link {
                LinkEndpoint::Receiver(receiver) => {
                    let answers = answers_tx.clone();
                    links.spawn(requests(receiver, identity, self.clone(), answers));
                }
                LinkEndpoint::Sender(sender) => match answers_rx.take() {
                    Some(rx) => links.spawn(answers(sender, rx)),
                    None => {
                        let _ = sender
                            .close_with_error(amqp_error(
                                AmqpError::ResourceLimitExceeded,
                                "one receiving link per session",
                            ))
                            .await;
                    }
                },
            }
        }
        links.end().await;
    }
}

/// The registration a link may serve: the one its address names, which
/// must be the connection's (from SASL), or, for an X.509 device's first
/// link, one its certificate is checked against now.
async fn check_link(
    context: &ConnectionContext,
    address: Option<&str>,
) -> Result<Identity, definitions::Error> {
    let Some(address) = address.and_then(parse_address) else {
        return Err(amqp_error(
            AmqpError::NotFound,
            format!(
                "link address '{}' is not {{idScope}}/registrations/{{registrationId}}",
                address.unwrap_or_default()
            ),
        ));
    };
    let mut identity = context.identity.lock().await;
    if let Some(known) = identity.as_ref() {
        if known.scope == address.scope
            && known
                .registration_id
                .eq_ignore_ascii_case(&address.registration_id)
        {
            return Ok(known.clone());
        }
        return Err(amqp_error(
            AmqpError::UnauthorizedAccess,
            format!(
                "this connection is authenticated as '{}/registrations/{}', not '{}/registrations/{}'",
                known.scope, known.registration_id, address.scope, address.registration_id
            ),
        ));
    }
    context
        .engine
        .check_device(
            &address.scope,
            &address.registration_id,
            &context.credential,
            context.protocol,
            Some(context.client_addr),
        )
        .await
        .map_err(|e| rejection(&e))?;
    let checked = Identity {
        scope: address.scope,
        registration_id: address.registration_id,
    };
    *identity = Some(checked.clone());
    Ok(checked)
}

/// Sends answers on the device's receiving link, each after the device
/// gave credit for it.
async fn answers(mut sender: Sender, mut rx: mpsc::Receiver<Message<Data>>) {
    while let Some(message) = rx.recv().await {
        if let Err(e) = sender.send(message).await {
            tracing::debug!(error = %e, "an AMQP answer was not delivered");
            break;
        }
    }
    let _ = sender.close().await;
}

/// What a request message asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Register { body: Vec<u8>, force: bool },
    Status { operation_id: Option<String> },
}

/// A request as a device sends it, the shape [`decode_request`] reads: the
/// operation (and the operation a status request asks about, and
/// `force` on a register that asks for it) in application properties,
/// `correlation` as message-id and correlation-id, `body` one Data section.
/// The simulator and the tests speak through it.
pub fn request_message(
    operation_type: &str,
    correlation: &str,
    operation_id: Option<&str>,
    force: bool,
    body: Vec<u8>,
) -> Message<Body<Value>> {
    let mut props = ApplicationProperties::builder()
        .insert(OPERATION_TYPE, SimpleValue::String(operation_type.into()));
    if let Some(id) = operation_id {
        props = props.insert(OPERATION_ID, SimpleValue::String(id.into()));
    }
    if force {
        props = props.insert(FORCE_REGISTRATION, SimpleValue::Bool(true));
    }
    let correlation = MessageId::String(correlation.into());
    Message::builder()
        .properties(Properties {
            message_id: Some(correlation.clone()),
            correlation_id: Some(correlation),
            ..Default::default()
        })
        .application_properties(props.build())
        .body(Body::Data(vec![Data(Binary::from(body))].into()))
        .build()
}

/// A register request with the device's JSON `body`.
pub fn register_message(correlation: &str, body: Vec<u8>) -> Message<Body<Value>> {
    request_message(REGISTER, correlation, None, false, body)
}

/// A status request about `operation_id`.
pub fn status_message(correlation: &str, operation_id: &str) -> Message<Body<Value>> {
    request_message(
        GET_STATUS,
        correlation,
        Some(operation_id),
        false,
        Vec::new(),
    )
}

fn property<'a>(props: Option<&'a ApplicationProperties>, key: &str) -> Option<&'a SimpleValue> {
    props.and_then(|p| p.0.get(key))
}

/// Reads a request message's operation, or why it cannot be served.
pub fn decode_request(message: &Message<Body<Value>>) -> Result<Request, ProvisioningError> {
    let props = message.application_properties.as_ref();
    let op = match property(props, OPERATION_TYPE) {
        Some(SimpleValue::String(s)) => s.as_str(),
        Some(_) => {
            return Err(ProvisioningError::invalid(format!(
                "{OPERATION_TYPE} must be a string"
            )));
        }
        None => {
            return Err(ProvisioningError::invalid(format!(
                "the request carries no {OPERATION_TYPE} application property"
            )));
        }
    };
    match op {
        REGISTER => {
            let body = match &message.body {
                Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
                Body::Value(v) => match &v.0 {
                    Value::String(s) => s.clone().into_bytes(),
                    Value::Binary(b) => b.to_vec(),
                    Value::Null => Vec::new(),
                    _ => {
                        return Err(ProvisioningError::new(
                            ErrorCode::InvalidRequestBody,
                            "the register body must be a Data section of JSON",
                        ));
                    }
                },
                Body::Empty => Vec::new(),
                Body::Sequence(_) => {
                    return Err(ProvisioningError::new(
                        ErrorCode::InvalidRequestBody,
                        "the register body must be a Data section of JSON",
                    ));
                }
            };
            let force = matches!(
                property(props, FORCE_REGISTRATION),
                Some(SimpleValue::Bool(true))
            ) || matches!(property(props, FORCE_REGISTRATION), Some(SimpleValue::String(s)) if s.eq_ignore_ascii_case("true"));
            Ok(Request::Register { body, force })
        }
        // The body of a status request is ignored: the SDKs send the
        // register JSON again, an empty string, or nothing.
        GET_STATUS => {
            let operation_id = match property(props, OPERATION_ID) {
                Some(SimpleValue::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            };
            Ok(Request::Status { operation_id })
        }
        other => Err(ProvisioningError::invalid(format!(
            "'{other}' is not an operation of the DPS device API; use {REGISTER} or {GET_STATUS}"
        ))),
    }
}

/// A request refused as a `rejected` outcome: the JSON error body as the
/// description, a condition the SDKs map, and when to try again.
pub fn rejection(e: &ProvisioningError) -> definitions::Error {
    let answer = wire::error(e);
    let condition = match answer.status {
        401 | 403 => ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
        404 => ErrorCondition::AmqpError(AmqpError::NotFound),
        413 => ErrorCondition::LinkError(definitions::LinkError::MessageSizeExceeded),
        429 => ErrorCondition::Custom(Symbol::from("com.microsoft:device-container-throttled")),
        s if s >= 500 => ErrorCondition::AmqpError(AmqpError::InternalError),
        _ => ErrorCondition::AmqpError(AmqpError::InvalidField),
    };
    let info = answer.retry_after.map(|seconds| {
        let mut fields = Fields::new();
        fields.insert(Symbol::from("Retry-After"), Value::Uint(seconds));
        fields.insert(Symbol::from("retry-after"), Value::Uint(seconds));
        fields
    });
    definitions::Error::new(condition, Some(answer.body), info)
}

/// The answer message: one Data section of JSON, the request's
/// correlation-id, the status and when to poll.
pub fn answer_message(answer: &wire::Answer, correlation: Option<MessageId>) -> Message<Data> {
    let mut props = ApplicationProperties::builder()
        .insert("iotdps-status", SimpleValue::Int(i32::from(answer.status)));
    if let Some(seconds) = answer.retry_after {
        props = props
            .insert("retry-after", SimpleValue::Uint(seconds))
            .insert("Retry-After", SimpleValue::Uint(seconds));
    }
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            content_type: Some(Symbol::from("application/json")),
            content_encoding: Some(Symbol::from("utf-8")),
            ..Default::default()
        })
        .application_properties(props.build())
        .data(Binary::from(answer.body.clone().into_bytes()))
        .build()
}

/// Serves the requests of the device's sending link: each is accepted, then
/// answered, or rejected.
async fn requests(
    receiver: Receiver,
    identity: Identity,
    context: Arc<ConnectionContext>,
    answers: mpsc::Sender<Message<Data>>,
) {
    let (context, identity) = (&context, &identity);
    serve_requests(receiver, "AMQP request", answers, |message| async move {
        let correlation = message
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone().or_else(|| p.message_id.clone()));
        let answer = match decode_request(&message) {
            Ok(request) => serve_request(context, identity, request).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(answer) => Ok(answer_message(&answer, correlation)),
            Err(e) => Err(rejection(&e)),
        }
    })
    .await;
}

async fn serve_request(
    context: &ConnectionContext,
    identity: &Identity,
    request: Request,
) -> Result<wire::Answer, ProvisioningError> {
    let (call, status) = match request {
        Request::Register { body, force } => {
            let register = RegisterRequest {
                body: wire::decode_registration(&body, context.config.max_body_bytes)?,
                force_registration: force,
                id_scope: identity.scope.clone(),
                registration_id: identity.registration_id.clone(),
                credential: context.credential.clone(),
                protocol: context.protocol,
                client_addr: Some(context.client_addr),
            };
            (Call::Register, context.engine.register(register).await?)
        }
        Request::Status { operation_id } => {
            let Some(operation_id) = operation_id else {
                return Err(ProvisioningError::invalid(format!(
                    "the status request names no operation in {OPERATION_ID}"
                )));
            };
            let poll = OperationRequest {
                operation_id,
                id_scope: identity.scope.clone(),
                registration_id: identity.registration_id.clone(),
                credential: context.credential.clone(),
                protocol: context.protocol,
            };
            (Call::Poll, context.engine.operation_status(poll).await?)
        }
    };
    Ok(wire::operation(call, &status))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

    use super::*;

    #[test]
    fn addresses_in_three_spellings() {
        let want = Some(Address {
            scope: "0ne00TEST01".into(),
            registration_id: "dev:01".into(),
        });
        assert_eq!(parse_address("0ne00TEST01/registrations/dev:01"), want);
        assert_eq!(parse_address("/0ne00TEST01/registrations/dev%3a01"), want);
        assert_eq!(
            parse_address("amqps://localhost:5671/0ne00TEST01/registrations/dev%3A01"),
            want
        );
        assert_eq!(parse_address("0ne00TEST01/devices/dev"), None);
        assert_eq!(parse_address("0ne00TEST01/registrations/"), None);
        assert_eq!(parse_address("0ne00TEST01/registrations/a/b"), None);
        assert_eq!(parse_address("http://h/0ne00TEST01/registrations/a"), None);
    }

    fn request(op: Option<&str>, body: Body<Value>) -> Message<Body<Value>> {
        let mut props = ApplicationProperties::builder();
        if let Some(op) = op {
            props = props.insert(OPERATION_TYPE, SimpleValue::String(op.into()));
        }
        props = props.insert(OPERATION_ID, SimpleValue::String("op-1".into()));
        Message::builder()
            .application_properties(props.build())
            .body(body)
            .build()
    }

    #[test]
    fn requests_decode_and_unknown_operations_are_refused() {
        let data = Body::Data(vec![Data(Binary::from(b"{}".to_vec()))].into());
        assert_eq!(
            decode_request(&request(Some(REGISTER), data)).unwrap(),
            Request::Register {
                body: b"{}".to_vec(),
                force: false
            }
        );
        assert_eq!(
            decode_request(&request(Some(GET_STATUS), Body::Empty)).unwrap(),
            Request::Status {
                operation_id: Some("op-1".into())
            }
        );
        let err = decode_request(&request(Some("iotdps-delete"), Body::Empty)).unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert!(err.message.contains("iotdps-delete"), "{}", err.message);
        assert!(decode_request(&request(None, Body::Empty)).is_err());
    }

    #[test]
    fn rejections_carry_the_json_body_and_a_condition() {
        let e = rejection(&ProvisioningError::unauthorized("no"));
        assert_eq!(
            e.condition,
            ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
        );
        let body: serde_json::Value =
            serde_json::from_str(e.description.as_deref().unwrap()).unwrap();
        assert_eq!(body["message"], "no");
        let busy = rejection(&ProvisioningError::new(ErrorCode::ShuttingDown, "stop"));
        assert!(
            busy.info
                .unwrap()
                .contains_key(&Symbol::from("retry-after"))
        );
    }
}
