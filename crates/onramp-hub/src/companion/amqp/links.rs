//! What each link of a hub device carries: CBS put-token requests and
//! their answers, telemetry into the hub's store, and the twin's requests,
//! answers and desired-property notifications.

use super::*;
use crate::companion::limits::MessageRefusal;
use fe2o3_amqp::types::definitions::{ErrorCondition, Fields};

/// Sends the queued messages on a link the device receives from, each
/// after it gave credit, until it detaches; gives the queue back.
pub(super) async fn answers(
    mut sender: Sender,
    mut rx: mpsc::Receiver<Message<Data>>,
) -> mpsc::Receiver<Message<Data>> {
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                if let Err(e) = sender.send(message).await {
                    tracing::debug!(error = %e, "a hub AMQP message was not delivered");
                    break;
                }
            }
            _ = sender.on_detach() => break,
        }
    }
    let _ = sender.close().await;
    rx
}

/// A message with one Data section (empty when there is nothing to say).
pub(super) fn data_message(correlation: Option<MessageId>, body: Bytes) -> Message<Data> {
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Default::default()
        })
        .data(Binary::from(body.to_vec()))
        .build()
}

pub(super) fn annotation<'a>(message: &'a Message<Body<Value>>, key: &str) -> Option<&'a str> {
    match message
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))?
    {
        Value::String(s) => Some(s.as_str()),
        Value::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The body's bytes: Data sections, or an AmqpValue string or binary.
pub(super) fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, String> {
    match body {
        Body::Data(batch) => Ok(batch.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(v) => match &v.0 {
            Value::String(s) => Ok(s.clone().into_bytes()),
            Value::Binary(b) => Ok(b.to_vec()),
            Value::Null => Ok(Vec::new()),
            _ => Err("the body must be Data sections or a string or binary value".into()),
        },
        Body::Empty => Ok(Vec::new()),
        Body::Sequence(_) => Err("the body must be Data sections, not AMQP sequences".into()),
    }
}

/// A CBS answer: the request's message-id as correlation-id (same type),
/// `status-code` (int) and `status-description`.
pub(super) fn cbs_answer(
    correlation: Option<MessageId>,
    status: i32,
    description: &str,
) -> Message<Data> {
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("status-code", SimpleValue::Int(status))
                .insert(
                    "status-description",
                    SimpleValue::String(description.to_owned()),
                )
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build()
}

/// Checks a put-token request; (status, description).
pub(super) async fn put_token(state: &ConnState, message: &Message<Body<Value>>) -> (i32, String) {
    let app = message.application_properties.as_ref();
    let prop = |k: &str| match app.and_then(|p| p.0.get(k)) {
        Some(SimpleValue::String(s)) => Some(s.as_str()),
        Some(SimpleValue::Symbol(s)) => Some(s.as_str()),
        _ => None,
    };
    match prop("operation") {
        Some("put-token") => {}
        other => {
            return (
                400,
                format!(
                    "operation '{}' is not served on $cbs; use put-token",
                    other.unwrap_or_default()
                ),
            );
        }
    }
    let token = match &message.body {
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.clone(),
            _ => String::new(),
        },
        Body::Data(_) => body_bytes(&message.body)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default(),
        _ => String::new(),
    };
    if token.is_empty() {
        return (
            400,
            "the put-token body must be the SAS token as a string".into(),
        );
    }
    let device_id = match device_auth::token_device(&token, state.hub.host_name()) {
        Ok(id) => id,
        Err(Denied::NotAuthorized(m) | Denied::Unavailable(m)) => return (401, m),
    };
    let proof = Proof {
        token: Some(&token),
        chain: &state.peer.0,
    };
    match device_auth::authenticate(&state.hub, &device_id, proof).await {
        Ok(admitted) => {
            state.admit(&admitted.record.device.device_id, admitted.token_expiry);
            (200, "OK".into())
        }
        Err(Denied::NotAuthorized(m)) => (401, m),
        Err(Denied::Unavailable(m)) => (503, m),
    }
}

/// Serves put-token requests; each is accepted, then answered on the
/// session's `$cbs` receiving link.
pub(super) async fn cbs_requests(
    receiver: Receiver,
    state: Arc<ConnState>,
    answers: mpsc::Sender<Message<Data>>,
) {
    let state = &state;
    serve_requests(receiver, "hub $cbs", answers, |message| async move {
        let correlation = message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let (status, description) = put_token(state, &message).await;
        if status != 200 {
            tracing::debug!(status, %description, "put-token refused");
        }
        Ok(cbs_answer(correlation, status, &description))
    })
    .await;
}

/// A simple value of an application property as JSON text for the store.
pub(super) fn property_text(value: &SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        _ => return None,
    })
}

pub(super) fn message_id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// A telemetry message's properties as the store keeps them (the names of
/// the MQTT property bag: `$.mid`, `$.cid`, `$.ct`, `$.ce`, and the
/// application properties).
pub(super) fn telemetry_properties(message: &Message<Body<Value>>) -> Map<String, Json> {
    let mut out = Map::new();
    if let Some(p) = &message.properties {
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.insert(k.to_owned(), Json::String(v));
            }
        };
        put("$.mid", p.message_id.as_ref().map(message_id_text));
        put("$.cid", p.correlation_id.as_ref().map(message_id_text));
        put(
            "$.ct",
            p.content_type.as_ref().map(|s| s.as_str().to_owned()),
        );
        put(
            "$.ce",
            p.content_encoding.as_ref().map(|s| s.as_str().to_owned()),
        );
    }
    if let Some(app) = &message.application_properties {
        for (k, v) in app.0.iter() {
            if let Some(text) = property_text(v) {
                out.insert(k.clone(), Json::String(text));
            }
        }
    }
    out
}

/// A message the hub did not take, as IoT Hub rejects it: too large
/// `amqp:link:message-size-exceeded`; over the device's rate
/// `com.microsoft:device-container-throttled` (which the SDKs retry), with
/// `retry-after` in its info; a store failure `amqp:internal-error`.
fn telemetry_rejection(refusal: &MessageRefusal) -> definitions::Error {
    let condition = match refusal {
        MessageRefusal::TooLarge { .. } => {
            ErrorCondition::LinkError(definitions::LinkError::MessageSizeExceeded)
        }
        MessageRefusal::Throttled { .. } => {
            ErrorCondition::Custom(Symbol::from("com.microsoft:device-container-throttled"))
        }
        MessageRefusal::Unavailable(_) => ErrorCondition::AmqpError(AmqpError::InternalError),
    };
    let info = matches!(refusal, MessageRefusal::Throttled { .. }).then(|| {
        let seconds = u32::try_from(refusal.retry_after_seconds()).unwrap_or(u32::MAX);
        let mut fields = Fields::new();
        fields.insert(Symbol::from("retry-after"), Value::Uint(seconds));
        fields
    });
    definitions::Error::new(condition, Some(refusal.to_string()), info)
}

/// Stores each telemetry message, then settles it `accepted` (or
/// `rejected` with the reason).
pub(super) async fn telemetry(mut receiver: Receiver, state: Arc<ConnState>, device_id: String) {
    while let Some(delivery) = next_delivery(&mut receiver, "hub telemetry").await {
        let message = delivery.message();
        let stored = match state.authorized(&device_id) {
            Err(e) => Err(e),
            Ok(_) => match body_bytes(&message.body) {
                Err(m) => Err(amqp_error(AmqpError::DecodeError, m)),
                Ok(body) => device_ops::telemetry(
                    &state.hub,
                    (&device_id, telemetry_properties(message), Bytes::from(body)),
                )
                .await
                .map_err(|refusal| telemetry_rejection(&refusal)),
            },
        };
        let settled = match stored {
            Ok(()) => receiver.accept(&delivery).await,
            Err(e) => receiver.reject(&delivery, e).await,
        };
        if settled.is_err() {
            break;
        }
    }
    let _ = receiver.close().await;
}

/// The twin resource desired-property notifications are subscribed on.
pub(super) const DESIRED_NOTIFICATIONS: &str = "/notifications/twin/properties/desired";

/// A twin answer: correlation-id, `status` (int), `version` (long) when
/// known, and one Data section (empty for a success without a body).
pub(super) fn twin_message(correlation: Option<MessageId>, answer: TwinAnswer) -> Message<Data> {
    let mut annotations = OrderedMap::new();
    annotations.insert(
        OwnedKey::Symbol(Symbol::from("status")),
        Value::Int(i32::from(answer.status)),
    );
    if let Some(v) = answer.version {
        annotations.insert(OwnedKey::Symbol(Symbol::from("version")), Value::Long(v));
    }
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Default::default()
        })
        .message_annotations(MessageAnnotations(annotations))
        .data(Binary::from(answer.body.to_vec()))
        .build()
}

/// A twin request as a device sends it, the shape [`twin_request`] reads:
/// `operation` (and `resource`) as message annotations, `correlation` as
/// correlation-id, `body` one Data section. The simulator and the tests
/// speak through it.
pub fn twin_request_message(
    operation: &str,
    resource: Option<&str>,
    correlation: MessageId,
    body: Vec<u8>,
) -> Message<Data> {
    let mut annotations = MessageAnnotations::builder().insert(
        OwnedKey::Symbol(Symbol::from("operation")),
        Value::String(operation.into()),
    );
    if let Some(resource) = resource {
        annotations = annotations.insert(
            OwnedKey::Symbol(Symbol::from("resource")),
            Value::String(resource.into()),
        );
    }
    Message::builder()
        .properties(Properties {
            correlation_id: Some(correlation),
            ..Default::default()
        })
        .message_annotations(annotations.build())
        .data(Binary::from(body))
        .build()
}

/// What a twin request asks for.
pub(super) async fn twin_request(
    state: &ConnState,
    device_id: &str,
    message: &Message<Body<Value>>,
    wants_desired: &AtomicBool,
) -> TwinAnswer {
    let operation = annotation(message, "operation").unwrap_or_default();
    let resource = annotation(message, "resource");
    let ok = || TwinAnswer {
        status: 200,
        body: Bytes::new(),
        version: None,
    };
    match (operation, resource) {
        ("GET", _) => device_ops::twin_get(&state.hub, device_id).await,
        ("PATCH", Some("/properties/reported")) => match body_bytes(&message.body) {
            Ok(body) => device_ops::reported_patch(&state.hub, device_id, &body).await,
            Err(m) => TwinAnswer::error(400, &m),
        },
        ("PUT", Some(DESIRED_NOTIFICATIONS)) => {
            wants_desired.store(true, Ordering::Relaxed);
            ok()
        }
        ("DELETE", Some(DESIRED_NOTIFICATIONS)) => {
            wants_desired.store(false, Ordering::Relaxed);
            ok()
        }
        (op, resource) => TwinAnswer::error(
            400,
            &format!(
                "operation '{op}' on '{}' is not a twin operation; use GET, PATCH /properties/reported, or PUT/DELETE {DESIRED_NOTIFICATIONS}",
                resource.unwrap_or_default()
            ),
        ),
    }
}

/// Serves twin requests; answers go on the device's twin receiving link.
pub(super) async fn twin_requests(
    mut receiver: Receiver,
    state: Arc<ConnState>,
    device_id: String,
) {
    while let Some(delivery) = next_delivery(&mut receiver, "hub twin").await {
        if let Err(e) = state.authorized(&device_id) {
            let _ = receiver.reject(&delivery, e.clone()).await;
            let _ = receiver.close_with_error(e).await;
            return;
        }
        let Some((twin_tx, wants_desired)) = state.twin_tx(&device_id) else {
            break;
        };
        let message = delivery.message();
        let correlation = message
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let answer = twin_request(&state, &device_id, message, &wants_desired).await;
        if receiver.accept(&delivery).await.is_err() {
            break;
        }
        if twin_tx.try_send(twin_message(correlation, answer)).is_err() {
            tracing::debug!(%device_id, "a twin answer was dropped: the device reads none");
        }
    }
    let _ = receiver.close().await;
}
