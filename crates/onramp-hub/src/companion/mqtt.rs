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
use onramp_core::{sas, x509};
use onramp_model::UtcTime;
use onramp_model::authority::same_host;
use onramp_model::hub::{AuthenticationType, DeviceStatus};
use onramp_net::mqtt::{
    Admission, ConnectInfo, MqttApp, MqttSession, Outbox, Outgoing, QoS, Refusal, SessionEnd, topic,
};
use serde_json::{Map, Value, json};

use super::CompanionHub;
use super::store::HubStoreError;
use crate::twin;

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
        let record = self
            .hub
            .store()
            .device(device_id)
            .await
            .map_err(|e| Refusal::ServerUnavailable(e.to_string()))?
            .ok_or_else(|| {
                Refusal::NotAuthorized(format!("no device '{device_id}' in this hub"))
            })?;
        if record.device.status == Some(DeviceStatus::Disabled) {
            return Err(Refusal::NotAuthorized(format!(
                "device '{device_id}' is disabled"
            )));
        }
        let auth = record.device.authentication.clone().unwrap_or_default();
        match auth.kind {
            AuthenticationType::Sas => {
                let token = info
                    .password_text()
                    .ok_or_else(|| Refusal::NotAuthorized("no SAS token in the password".into()))?;
                let token = sas::parse(token).map_err(|e| Refusal::NotAuthorized(e.to_string()))?;
                let (resource_host, resource_path) = token
                    .resource
                    .split_once('/')
                    .unwrap_or((&token.resource, ""));
                if !same_host(resource_host, self.hub.host_name())
                    || !resource_path
                        .trim_end_matches('/')
                        .eq_ignore_ascii_case(&format!("devices/{device_id}"))
                {
                    return Err(Refusal::NotAuthorized(format!(
                        "the token is for '{}', not for {}/devices/{device_id}",
                        token.resource,
                        self.hub.host_name()
                    )));
                }
                token
                    .check_expiry(UtcTime::now().unix_seconds(), 300)
                    .map_err(|e| Refusal::NotAuthorized(e.to_string()))?;
                let keys = auth.symmetric_key.unwrap_or_default();
                let signed = [keys.primary_key, keys.secondary_key]
                    .iter()
                    .flatten()
                    .any(|k| token.is_signed_by(k.expose()));
                if !signed {
                    return Err(Refusal::NotAuthorized(format!(
                        "the token is not signed with a key of device '{device_id}'"
                    )));
                }
            }
            AuthenticationType::SelfSigned | AuthenticationType::CertificateAuthority => {
                let chain = &info.peer_certificates.0;
                let Some(leaf) = chain.first() else {
                    return Err(Refusal::NotAuthorized(format!(
                        "device '{device_id}' authenticates with an X.509 certificate; present it in the TLS handshake"
                    )));
                };
                let leaf = x509::Parsed::from_der(leaf.as_ref())
                    .map_err(|e| Refusal::NotAuthorized(format!("the device certificate: {e}")))?;
                let now = UtcTime::now();
                leaf.validity_at(now)
                    .map_err(|e| Refusal::NotAuthorized(e.to_string()))?;
                if auth.kind == AuthenticationType::SelfSigned {
                    let prints = auth.x509_thumbprint.unwrap_or_default();
                    let known = [prints.primary_thumbprint, prints.secondary_thumbprint]
                        .into_iter()
                        .flatten()
                        .any(|t| leaf.has_thumbprint(&t));
                    if !known {
                        return Err(Refusal::NotAuthorized(format!(
                            "the certificate (SHA-256 {}) is not one of device '{device_id}'",
                            leaf.info.sha256_thumbprint
                        )));
                    }
                } else {
                    if !leaf
                        .common_name
                        .as_deref()
                        .is_some_and(|cn| cn.eq_ignore_ascii_case(device_id))
                    {
                        return Err(Refusal::NotAuthorized(format!(
                            "the certificate's CN is not the device ID '{device_id}'"
                        )));
                    }
                    let intermediates: Vec<Vec<u8>> =
                        chain[1..].iter().map(|c| c.as_ref().to_vec()).collect();
                    let trusted =
                        self.hub.trusted_cas().iter().any(|ca| {
                            x509::verify_chain(&leaf.der, &intermediates, ca, now).is_ok()
                        });
                    if !trusted {
                        return Err(Refusal::NotAuthorized(format!(
                            "the certificate of '{device_id}' does not chain to a CA this hub trusts"
                        )));
                    }
                }
            }
            AuthenticationType::None => {
                return Err(Refusal::NotAuthorized(format!(
                    "device '{device_id}' has no credentials"
                )));
            }
        }
        let device_id = record.device.device_id.clone();
        let wants_desired = Arc::new(AtomicBool::new(false));
        let connection = self
            .hub
            .connections()
            .attach(&device_id, outbox, wants_desired.clone());
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
    fn twin_response(rid: &str, status: u16, body: Bytes, version: Option<i64>) -> Outgoing {
        let mut topic = format!("$iothub/twin/res/{status}/?$rid={rid}");
        if let Some(v) = version {
            topic.push_str(&format!("&$version={v}"));
        }
        Outgoing::at_least_once(topic, body)
    }

    fn error(rid: &str, status: u16, message: &str) -> Outgoing {
        Self::twin_response(
            rid,
            status,
            Bytes::from(json!({"message": message}).to_string()),
            None,
        )
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
        self.hub
            .store()
            .add_message(&self.device_id, properties, payload, UtcTime::now())
            .await
            .map_err(|e| SessionEnd(format!("the message could not be stored: {e}")))?;
        crate::events::MessageStored.emit();
        Ok(())
    }

    async fn twin_get(&self, rid: &str) -> Outgoing {
        match self.hub.store().device(&self.device_id).await {
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
                Self::twin_response(rid, 200, Bytes::from(body.to_string()), None)
            }
            Ok(None) => Self::error(rid, 404, "the device no longer exists"),
            Err(e) => Self::error(rid, 503, &e.to_string()),
        }
    }

    async fn reported_patch(&self, rid: &str, payload: &Bytes) -> Outgoing {
        let patch: Map<String, Value> = match serde_json::from_slice(payload) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Self::error(
                    rid,
                    400,
                    "a reported-properties patch must be a JSON object",
                );
            }
            Err(e) => return Self::error(rid, 400, &format!("the patch is not JSON: {e}")),
        };
        if let Some(bad) = patch
            .keys()
            .find(|k| k.is_empty() || k.contains(['.', '$', ' ']))
        {
            return Self::error(rid, 400, &format!("'{bad}' is not a valid property name"));
        }
        let result = self
            .hub
            .store()
            .update_twin(&self.device_id, None, move |t| {
                twin::merge(&mut t.reported, &patch);
                t.reported_version += 1;
                t.reported_updated = Some(UtcTime::now());
                Ok(true)
            })
            .await;
        match result {
            Ok(record) => {
                Self::twin_response(rid, 204, Bytes::new(), Some(record.twin.reported_version))
            }
            Err(HubStoreError::NotFound(m)) => Self::error(rid, 404, &m),
            Err(e) => Self::error(rid, 503, &e.to_string()),
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

    fn check_publish(&self, topic_name: &str) -> Result<(), SessionEnd> {
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

    async fn publish(
        &mut self,
        topic_name: &str,
        payload: Bytes,
    ) -> Result<Vec<Outgoing>, SessionEnd> {
        self.check_publish(topic_name)?;
        if self.is_telemetry(topic_name) {
            self.telemetry(topic_name, payload).await?;
            return Ok(Vec::new());
        }
        let (path, _) = topic::split(topic_name);
        let rid = topic::raw_rid(topic_name).unwrap_or_default().to_owned();
        match path {
            "$iothub/twin/GET/" => Ok(vec![self.twin_get(&rid).await]),
            "$iothub/twin/PATCH/properties/reported/" => {
                Ok(vec![self.reported_patch(&rid, &payload).await])
            }
            // Direct-method answers: this hub sends no methods, so there is nothing to match.
            p if p.starts_with("$iothub/methods/res/") => Ok(Vec::new()),
            _ => Err(SessionEnd(format!(
                "'{topic_name}' is not a topic of the IoT Hub device API"
            ))),
        }
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
