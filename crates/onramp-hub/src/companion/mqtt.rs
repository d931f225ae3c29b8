//! The companion hub's device side over MQTT (and MQTT over WebSockets), as
//! Azure IoT Hub speaks it:
//!
//! - CONNECT: client ID = device ID, user name `{hub}/{deviceId}/?api-version=…`,
//!   password = a SAS token for `{hub}/devices/{deviceId}` signed with the
//!   device's key;
//! - telemetry on `devices/{deviceId}/messages/events/{property bag}`;
//! - twin: `$iothub/twin/GET/?$rid=…` answered on `$iothub/twin/res/200/?$rid=…`,
//!   reported patches on `$iothub/twin/PATCH/properties/reported/?$rid=…`
//!   answered `204` with the new `$version`, desired-property changes pushed
//!   on `$iothub/twin/PATCH/properties/desired/?$version=…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use onramp_model::authority::same_host;
use onramp_net::mqtt::{
    Admission, ConnectInfo, Incoming, MqttApp, MqttSession, Outbox, Outgoing, QoS, Refusal,
    SessionEnd, topic,
};
use serde_json::{Map, Value};

use super::CompanionHub;
use super::device_auth::{self, Denied, Proof};
use super::device_ops::{self, TwinAnswer};

/// The MQTT application of a companion hub.
pub struct HubMqtt {
    hub: Arc<CompanionHub>,
}

impl HubMqtt {
    pub fn new(hub: Arc<CompanionHub>) -> Self {
        Self { hub }
    }
}

/// `{hub}/{deviceId}/?{query}` → (hub, device ID). Module identities
/// (`{hub}/{deviceId}/{moduleId}/?…`) are not served.
pub fn parse_hub_username(username: &str) -> Option<(&str, &str)> {
    let (host, rest) = username.split_once('/')?;
    let (device, rest) = rest.split_once('/')?;
    (rest.is_empty() || rest.starts_with('?'))
        .then_some((host, device))
        .filter(|(h, d)| !h.is_empty() && !d.is_empty())
}

/// A hub user name's host and device ID, and the query after them.
fn hub_user_name(username: &str) -> Option<((&str, &str), &str)> {
    let query = username.split_once('?').map_or("", |(_, q)| q);
    parse_hub_username(username).map(|identity| (identity, query))
}

#[async_trait]
impl MqttApp for HubMqtt {
    async fn connect(&self, info: &ConnectInfo, outbox: Outbox) -> Admission {
        let (host, device_id) =
            info.user_name_identity(hub_user_name, "{hub}/{deviceId}/?api-version=…")?;
        if !same_host(host, self.hub.host_name()) {
            return Err(Refusal::NotAuthorized(format!(
                "this hub is {}, not {host}",
                self.hub.host_name()
            )));
        }
        info.require_client_id(device_id, "device ID")?;
        let proof = Proof {
            token: info.password_text(),
            chain: &info.peer_certificates.0,
        };
        let record = match device_auth::authenticate(&self.hub, device_id, proof).await {
            Ok(admitted) => admitted.record,
            Err(Denied::NotAuthorized(m)) => return Err(Refusal::NotAuthorized(m)),
            Err(Denied::Unavailable(m)) => return Err(Refusal::ServerUnavailable(m)),
        };
        let device_id = record.device.device_id.clone();
        let wants_desired = Arc::new(AtomicBool::new(false));
        let connection =
            self.hub
                .connections()
                .attach(&device_id, Box::new(outbox), wants_desired.clone());
        tracing::debug!(device_id = %device_id, websocket = info.websocket, "device connected to the hub");
        Ok(Box::new(HubSession {
            hub: self.hub.clone(),
            device_id,
            connection,
            wants_desired,
        }))
    }
}

struct HubSession {
    hub: Arc<CompanionHub>,
    device_id: String,
    connection: u64,
    wants_desired: Arc<AtomicBool>,
}

impl HubSession {
    fn twin_response(rid: &str, answer: TwinAnswer) -> Outgoing {
        let mut topic = format!("$iothub/twin/res/{}/?$rid={rid}", answer.status);
        if let Some(v) = answer.version {
            topic.push_str(&format!("&$version={v}"));
        }
        Outgoing::at_least_once(topic, answer.body)
    }

    /// `devices/{id}/messages/events/…`, the device's own telemetry topic.
    fn is_telemetry(&self, topic_name: &str) -> bool {
        let events = format!("devices/{}/messages/events/", self.device_id);
        topic_name
            .get(..events.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(&events))
    }

    async fn telemetry(&self, topic_name: &str, payload: Bytes) -> Result<(), SessionEnd> {
        let prefix_len = format!("devices/{}/messages/events/", self.device_id).len();
        let bag = topic_name.get(prefix_len..).unwrap_or_default();
        let properties: Map<String, Value> = topic::pairs(bag.trim_start_matches('?'))
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        // Admitted by `check_publish`, before the PUBACK.
        device_ops::store_telemetry(&self.hub, (&self.device_id, properties, payload))
            .await
            .map_err(|refusal| SessionEnd(refusal.to_string()))
    }

    /// Whether a device may publish to `topic_name` at all.
    fn allowed_topic(&self, topic_name: &str) -> Result<(), SessionEnd> {
        if self.is_telemetry(topic_name) {
            return Ok(());
        }
        match topic::split(topic_name).0 {
            "$iothub/twin/GET/" | "$iothub/twin/PATCH/properties/reported/" => Ok(()),
            p if p.starts_with("$iothub/methods/res/") => Ok(()),
            _ => Err(SessionEnd(format!(
                "'{topic_name}' is not a topic of the IoT Hub device API"
            ))),
        }
    }
}

#[async_trait]
impl MqttSession for HubSession {
    fn subscribe(&mut self, filter: &str, requested: QoS) -> Option<QoS> {
        let granted = requested.less_value(QoS::AtLeastOnce);
        let c2d = format!("devices/{}/messages/devicebound/#", self.device_id);
        match filter {
            "$iothub/twin/res/#" | "$iothub/methods/POST/#" => Some(granted),
            "$iothub/twin/PATCH/properties/desired/#" => {
                self.wants_desired.store(true, Ordering::Relaxed);
                Some(granted)
            }
            f if f.eq_ignore_ascii_case(&c2d) => Some(granted),
            _ => None,
        }
    }

    fn unsubscribe(&mut self, filter: &str) {
        if filter == "$iothub/twin/PATCH/properties/desired/#" {
            self.wants_desired.store(false, Ordering::Relaxed);
        }
    }

    /// MQTT 3.1.1 has no negative PUBACK: as IoT Hub does, a message the
    /// hub cannot take (too large, over the device's rate) closes the
    /// connection unacknowledged, and the SDK reconnects after its back-off
    /// and sends it again.
    fn check_publish(&self, message: &Incoming) -> Result<(), SessionEnd> {
        self.allowed_topic(&message.topic)?;
        if self.is_telemetry(&message.topic) {
            self.hub
                .message_gate()
                .admit(&self.device_id, message.payload.len())
                .map_err(|refusal| SessionEnd(refusal.to_string()))?;
        }
        Ok(())
    }

    async fn publish(&mut self, message: Incoming) -> Result<Vec<Outgoing>, SessionEnd> {
        let topic_name = &message.topic;
        self.allowed_topic(topic_name)?;
        if self.is_telemetry(topic_name) {
            self.telemetry(topic_name, message.payload).await?;
            return Ok(Vec::new());
        }
        let answer = match message.path() {
            "$iothub/twin/GET/" => device_ops::twin_get(&self.hub, &self.device_id).await,
            "$iothub/twin/PATCH/properties/reported/" => {
                device_ops::reported_patch(&self.hub, &self.device_id, &message.payload).await
            }
            // Direct-method answers: this hub sends no methods, so there is nothing to match.
            p if p.starts_with("$iothub/methods/res/") => return Ok(Vec::new()),
            _ => {
                return Err(SessionEnd(format!(
                    "'{topic_name}' is not a topic of the IoT Hub device API"
                )));
            }
        };
        Ok(vec![Self::twin_response(message.rid(), answer)])
    }

    async fn closed(&mut self) {
        self.hub
            .connections()
            .detach(&self.device_id, self.connection);
        tracing::debug!(device_id = %self.device_id, "device disconnected from the hub");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert_eq!(
            parse_hub_username("localhost/dev-1/?api-version=2021-04-12&DeviceClientType=x"),
            Some(("localhost", "dev-1"))
        );
        assert_eq!(
            parse_hub_username("hub.example.net/dev-1/"),
            Some(("hub.example.net", "dev-1"))
        );
        assert_eq!(
            parse_hub_username("hub/dev-1/module-1/?api-version=1"),
            None
        );
        assert_eq!(parse_hub_username("nothing"), None);
    }
}
