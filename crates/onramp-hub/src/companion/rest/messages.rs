//! Device-to-cloud messages over HTTPS, IoT Hub's device API:
//! `POST /devices/{id}/messages/events` with the device's SAS token in
//! `Authorization`, application properties in `iothub-app-*` headers and
//! system properties in `iothub-messageid`, `iothub-correlationid`,
//! `iothub-contenttype` and `iothub-contentencoding`. Answered 204; a
//! message too large 413 `MessageTooLarge`, one over the device's rate 429
//! `ThrottlingException` with `Retry-After`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;

use super::*;
use crate::companion::device_auth::{self, Denied, Proof};
use crate::companion::device_ops;
use crate::companion::limits::MessageRefusal;

/// The hub's largest body when it has no size limit: a bound all the same.
const UNLIMITED_BODY: usize = 16 * 1024 * 1024;

pub(super) async fn send_event(
    State(hub): State<Arc<CompanionHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> HubResult {
    let token = headers.get("authorization").and_then(|v| v.to_str().ok());
    device_auth::authenticate(&hub, &id, Proof { token, chain: &[] })
        .await
        .map_err(|denied| match denied {
            Denied::NotAuthorized(m) => {
                HubFailure::new(StatusCode::UNAUTHORIZED, "IotHubUnauthorizedAccess", m)
            }
            Denied::Unavailable(m) => {
                HubFailure::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m)
            }
        })?;
    let limit = match hub.limits().max_message_bytes {
        0 => UNLIMITED_BODY,
        n => n,
    };
    // One byte past the limit is enough to know the message is too large.
    let payload = axum::body::to_bytes(body, limit.saturating_add(1))
        .await
        .map_err(|e| {
            if is_length_limit(&e) {
                refusal(&MessageRefusal::TooLarge {
                    size: limit.saturating_add(1),
                    limit,
                })
            } else {
                HubFailure::new(
                    StatusCode::BAD_REQUEST,
                    "ArgumentInvalid",
                    format!("the message body could not be read ({e}); send it again"),
                )
            }
        })?;
    device_ops::telemetry(&hub, (&id, properties(&headers), payload))
        .await
        .map_err(|r| refusal(&r))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether reading a body failed on its length limit, not on the client.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A refusal as IoT Hub answers it.
fn refusal(r: &MessageRefusal) -> HubFailure {
    let (status, code) = match r {
        MessageRefusal::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "MessageTooLarge"),
        MessageRefusal::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"),
        MessageRefusal::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
    };
    let mut failure = HubFailure::new(status, code, r);
    if matches!(r, MessageRefusal::Throttled { .. }) {
        failure.retry_after = Some(r.retry_after_seconds());
    }
    failure
}

/// The message's properties as the store keeps them (the names of the MQTT
/// property bag).
fn properties(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        let name = name.as_str();
        let key = match name {
            "iothub-messageid" => "$.mid".to_owned(),
            "iothub-correlationid" => "$.cid".to_owned(),
            "iothub-contenttype" => "$.ct".to_owned(),
            "iothub-contentencoding" => "$.ce".to_owned(),
            _ => match name.strip_prefix("iothub-app-") {
                Some(app) if !app.is_empty() => app.to_owned(),
                _ => continue,
            },
        };
        out.insert(key, Value::String(value.to_owned()));
    }
    out
}
