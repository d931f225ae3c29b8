//! What a connected device can do on the companion hub, whatever protocol it
//! speaks: read its twin, patch its reported properties, send telemetry.

use bytes::Bytes;
use onramp_model::UtcTime;
use serde_json::{Map, Value, json};

use super::CompanionHub;
use super::limits::MessageRefusal;
use super::store::{HubStoreError, Retention};
use crate::twin;

/// A twin operation's answer: an HTTP-like status, a JSON body (empty for
/// a reported patch) and the new reported version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TwinAnswer {
    pub status: u16,
    pub body: Bytes,
    pub version: Option<i64>,
}

impl TwinAnswer {
    pub fn error(status: u16, message: &str) -> Self {
        Self {
            status,
            body: Bytes::from(json!({"message": message}).to_string()),
            version: None,
        }
    }
}

/// `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`
pub(crate) async fn twin_get(hub: &CompanionHub, device_id: &str) -> TwinAnswer {
    match hub.store().device(device_id).await {
        Ok(Some(record)) => {
            let t = &record.twin;
            let collection = |m: &Map<String, Value>, v: i64| {
                let mut m = m.clone();
                m.insert("$version".into(), json!(v));
                Value::Object(m)
            };
            let body = json!({
                "desired": collection(&t.desired, t.desired_version),
                "reported": collection(&t.reported, t.reported_version),
            });
            TwinAnswer {
                status: 200,
                body: Bytes::from(body.to_string()),
                version: None,
            }
        }
        Ok(None) => TwinAnswer::error(404, "the device no longer exists"),
        Err(e) => TwinAnswer::error(503, &e.to_string()),
    }
}

/// Merges a reported-properties patch (nulls delete); answers 204 with the
/// new reported version.
pub(crate) async fn reported_patch(
    hub: &CompanionHub,
    device_id: &str,
    payload: &[u8],
) -> TwinAnswer {
    let patch: Map<String, Value> = match serde_json::from_slice(payload) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return TwinAnswer::error(400, "a reported-properties patch must be a JSON object");
        }
        Err(e) => return TwinAnswer::error(400, &format!("the patch is not JSON: {e}")),
    };
    if let Some(bad) = patch
        .keys()
        .find(|k| k.is_empty() || k.contains(['.', '$', ' ']))
    {
        return TwinAnswer::error(400, &format!("'{bad}' is not a valid property name"));
    }
    let result = hub
        .store()
        .update_twin(device_id, None, move |t| {
            twin::merge(&mut t.reported, &patch);
            t.reported_version += 1;
            t.reported_updated = Some(UtcTime::now());
            Ok(true)
        })
        .await;
    match result {
        Ok(record) => TwinAnswer {
            status: 204,
            body: Bytes::new(),
            version: Some(record.twin.reported_version),
        },
        Err(HubStoreError::NotFound(m)) => TwinAnswer::error(404, &m),
        Err(e) => TwinAnswer::error(503, &e.to_string()),
    }
}

/// A device-to-cloud message: who sent it, its property bag, its body.
pub(crate) type DeviceMessage<'a> = (&'a str, Map<String, Value>, Bytes);

/// Stores a device-to-cloud message with its properties, within the hub's
/// limits (size, the device's rate, retention).
pub(crate) async fn telemetry(
    hub: &CompanionHub,
    message: DeviceMessage<'_>,
) -> Result<(), MessageRefusal> {
    hub.message_gate().admit(message.0, message.2.len())?;
    store_telemetry(hub, message).await
}

/// Stores a message [`super::limits::MessageGate::admit`] already let in,
/// dropping what the retention limits no longer keep.
pub(crate) async fn store_telemetry(
    hub: &CompanionHub,
    (device_id, properties, payload): DeviceMessage<'_>,
) -> Result<(), MessageRefusal> {
    let limits = hub.limits();
    let now = UtcTime::now();
    let retention = Retention {
        per_device: limits.retained_messages_per_device,
        older_than: (!limits.retained_message_age.is_zero())
            .then(|| {
                let age = i128::try_from(limits.retained_message_age.as_nanos()).ok()?;
                UtcTime::from_unix_nanos(now.unix_nanos() - age)
            })
            .flatten(),
    };
    let (_, dropped) = hub
        .store()
        .add_message(device_id, properties, payload, now, retention)
        .await
        .map_err(|e| MessageRefusal::Unavailable(e.to_string()))?;
    crate::events::MessageStored.emit();
    crate::events::MessagesDropped { count: dropped }.emit();
    Ok(())
}
