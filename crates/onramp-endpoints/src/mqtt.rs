//! MQTT endpoints: the DPS device API over MQTT (and MQTT over WebSockets),
//! and the router that sends each connection to DPS or to the embedded hub
//! by the shape of its user name.
//!
//! DPS over MQTT: user name `{idScope}/registrations/{registrationId}/api-version=…`,
//! client ID = registration ID, password = SAS token (none for X.509).
//! Requests are published to `$dps/registrations/PUT/iotdps-register/?$rid=…`
//! and `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=…&operationId=…`;
//! answers come on `$dps/registrations/res/{status}/?$rid=…[&retry-after=…]`,
//! `$rid` first and verbatim, at QoS 1, after the request's PUBACK.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use onramp_core::ProvisioningError;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::{Engine, OperationRequest, RegisterRequest};
use onramp_core::events::Protocol;
use onramp_model::{ErrorCode, RegistrationOperationStatus};
use onramp_net::mqtt::{
    Admission, ConnectInfo, Incoming, MqttApp, MqttSession, Outbox, Outgoing, QoS, Refusal,
    SessionEnd, topic,
};

use crate::EndpointConfig;
use crate::wire::{self, Call};

const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const REGISTER_TOPIC: &str = "$dps/registrations/PUT/iotdps-register/";
const STATUS_TOPIC: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";

/// The DPS device API over MQTT.
pub struct DpsMqtt {
    engine: Arc<Engine>,
    config: EndpointConfig,
}

impl DpsMqtt {
    pub fn new(engine: Arc<Engine>, config: EndpointConfig) -> Self {
        Self { engine, config }
    }
}

/// `{idScope}/registrations/{registrationId}/{query}` → (scope, registration ID).
pub fn parse_dps_username(username: &str) -> Option<(&str, &str)> {
    let mut parts = username.splitn(4, '/');
    let scope = parts.next()?;
    let literal = parts.next()?;
    let registration_id = parts.next()?;
    let query = parts.next().unwrap_or("");
    (!scope.is_empty()
        && literal.eq_ignore_ascii_case("registrations")
        && !registration_id.is_empty()
        && !registration_id.starts_with('?')
        && !query.starts_with('?'))
    .then_some((scope, registration_id))
}

fn refusal(e: ProvisioningError) -> Refusal {
    match e.code {
        ErrorCode::StoreUnavailable
        | ErrorCode::ShuttingDown
        | ErrorCode::ServerBusy
        | ErrorCode::InternalError
        | ErrorCode::Throttled => Refusal::ServerUnavailable(e.message),
        _ => Refusal::NotAuthorized(e.message),
    }
}

/// A DPS user name's scope and registration ID, and the query after them.
fn dps_user_name(username: &str) -> Option<((&str, &str), &str)> {
    let query = username.splitn(4, '/').nth(3).unwrap_or("");
    parse_dps_username(username).map(|identity| (identity, query))
}

#[async_trait]
impl MqttApp for DpsMqtt {
    async fn connect(&self, info: &ConnectInfo, _outbox: Outbox) -> Admission {
        let (scope, registration_id) = info.user_name_identity(
            dps_user_name,
            "{idScope}/registrations/{registrationId}/api-version=…",
        )?;
        info.require_client_id(registration_id, "registration ID")?;
        let credential = match info.password_text() {
            Some(token) if !token.is_empty() => DeviceCredential::SasToken(token.to_owned()),
            _ if !info.peer_certificates.0.is_empty() => DeviceCredential::X509Chain(
                info.peer_certificates
                    .0
                    .iter()
                    .map(|c| c.as_ref().to_vec())
                    .collect(),
            ),
            _ => DeviceCredential::None,
        };
        let protocol = if info.websocket {
            Protocol::MqttWs
        } else {
            Protocol::Mqtt
        };
        self.engine
            .check_device(
                scope,
                registration_id,
                &credential,
                protocol,
                Some(info.remote.ip()),
            )
            .await
            .map_err(refusal)?;
        Ok(Box::new(DpsSession {
            engine: self.engine.clone(),
            config: self.config.clone(),
            scope: scope.to_owned(),
            registration_id: registration_id.to_owned(),
            credential,
            protocol,
            client_addr: info.remote.ip(),
        }))
    }
}

struct DpsSession {
    engine: Arc<Engine>,
    config: EndpointConfig,
    scope: String,
    registration_id: String,
    credential: DeviceCredential,
    protocol: Protocol,
    client_addr: std::net::IpAddr,
}

impl DpsSession {
    /// The answer on `$dps/registrations/res/{status}/?$rid={rid}`, with
    /// `&retry-after=` when the device should wait.
    fn answer(&self, rid: &str, answer: wire::Answer) -> Vec<Outgoing> {
        let mut topic = format!("$dps/registrations/res/{}/?$rid={rid}", answer.status);
        if let Some(seconds) = answer.retry_after {
            topic.push_str(&format!("&retry-after={seconds}"));
        }
        vec![Outgoing::at_least_once(topic, Bytes::from(answer.body))]
    }

    async fn register(
        &self,
        payload: &Bytes,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        let body = wire::decode_registration(payload, self.config.max_body_bytes)?;
        let request = RegisterRequest {
            id_scope: self.scope.clone(),
            registration_id: self.registration_id.clone(),
            credential: self.credential.clone(),
            body,
            force_registration: false,
            protocol: self.protocol,
            client_addr: Some(self.client_addr),
        };
        self.engine.register(request).await
    }

    async fn operation(
        &self,
        operation_id: Option<&str>,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        let Some(operation_id) = operation_id.filter(|o| !o.is_empty()) else {
            return Err(ProvisioningError::invalid(
                "the status request names no operationId in its topic",
            ));
        };
        self.engine
            .operation_status(OperationRequest {
                id_scope: self.scope.clone(),
                registration_id: self.registration_id.clone(),
                credential: self.credential.clone(),
                operation_id: operation_id.to_owned(),
                protocol: self.protocol,
            })
            .await
    }
}

#[async_trait]
impl MqttSession for DpsSession {
    /// At most QoS 1 (no QoS 2); a QoS-0 subscriber gets its responses at
    /// QoS 0, as MQTT requires (the SDKs all ask for 1).
    fn subscribe(&mut self, filter: &str, requested: QoS) -> Option<QoS> {
        (filter == RESPONSE_FILTER).then(|| requested.less_value(QoS::AtLeastOnce))
    }

    fn check_publish(&self, message: &Incoming) -> Result<(), SessionEnd> {
        let topic_name = &message.topic;
        if !matches!(message.path(), REGISTER_TOPIC | STATUS_TOPIC) {
            return Err(SessionEnd(format!(
                "'{topic_name}' is not a topic of the DPS device API"
            )));
        }
        if topic::raw_rid(topic_name).is_none() {
            return Err(SessionEnd(format!(
                "'{topic_name}' carries no $rid; the answer could not be matched"
            )));
        }
        Ok(())
    }

    async fn publish(&mut self, message: Incoming) -> Result<Vec<Outgoing>, SessionEnd> {
        self.check_publish(&message)?;
        let (call, status) = if message.path() == REGISTER_TOPIC {
            (Call::Register, self.register(&message.payload).await)
        } else {
            // A status request; its body is ignored: SDKs send " ",
            // nothing, or the register JSON again.
            let operation_id = message.property("operationId");
            (Call::Poll, self.operation(operation_id.as_deref()).await)
        };
        let answer = match status {
            Ok(status) => wire::operation(call, &status),
            Err(e) => wire::error(&e),
        };
        Ok(self.answer(message.rid(), answer))
    }
}

/// Sends each MQTT connection to the DPS endpoint or to the embedded hub:
/// DPS user names are `{idScope}/registrations/{id}/…`, hub user names
/// `{hub}/{deviceId}/?…`.
pub struct MqttRouter {
    pub dps: Arc<dyn MqttApp>,
    pub hub: Option<Arc<dyn MqttApp>>,
}

#[async_trait]
impl MqttApp for MqttRouter {
    async fn connect(&self, info: &ConnectInfo, outbox: Outbox) -> Admission {
        let is_dps = info
            .connect
            .username
            .as_deref()
            .and_then(parse_dps_username)
            .is_some();
        match (&self.hub, is_dps) {
            (Some(hub), false) => hub.connect(info, outbox).await,
            _ => self.dps.connect(info, outbox).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_tell_dps_from_hub() {
        let device = Some(("0ne00TEST01", "dev-01"));
        let cases = [
            (
                "0ne00TEST01/registrations/dev-01/api-version=2019-03-31&ClientVersion=x%2F1",
                device,
            ),
            ("0ne00TEST01/registrations/dev-01", device),
            ("localhost/dev-01/?api-version=2021-04-12", None),
            // A hub device named 'registrations'.
            ("localhost/registrations/?api-version=2021-04-12", None),
            ("", None),
        ];
        for (username, want) in cases {
            assert_eq!(parse_dps_username(username), want, "{username:?}");
        }
    }
}
