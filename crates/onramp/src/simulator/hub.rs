//! The simulated device on its hub, over whichever device protocol the
//! operator chose.

use std::sync::Arc;

use serde_json::Value as Json;

use super::Protocol;
use super::hub_amqp::AmqpHubDevice;
use super::hub_mqtt::MqttHubDevice;

/// Where and as whom a device connects to its hub.
pub struct HubLogin<'a> {
    /// The assigned hub's `host[:port]`.
    pub hub: &'a str,
    pub device_id: &'a str,
    /// The device key its SAS tokens are signed with; `None` for a device
    /// whose TLS client certificate (in `tls`) authenticates it.
    pub key: Option<&'a str>,
    pub protocol: Protocol,
    pub tls: Arc<rustls::ClientConfig>,
}

/// A device connected to its IoT hub.
pub enum HubDevice {
    Mqtt(MqttHubDevice),
    Amqp(Box<AmqpHubDevice>),
}

impl HubDevice {
    pub async fn connect(login: HubLogin<'_>) -> anyhow::Result<Self> {
        match login.protocol {
            Protocol::Amqp | Protocol::AmqpWs => Ok(HubDevice::Amqp(Box::new(
                AmqpHubDevice::connect(login).await?,
            ))),
            Protocol::Mqtt | Protocol::MqttWs => {
                Ok(HubDevice::Mqtt(MqttHubDevice::connect(login).await?))
            }
            Protocol::Https => {
                anyhow::bail!(
                    "the simulated device reaches its hub over mqtt, mqtt-ws, amqp or amqp-ws"
                )
            }
        }
    }

    /// The whole twin the device sees: `{"desired": {…}, "reported": {…}}`.
    pub async fn twin(&mut self) -> anyhow::Result<Json> {
        match self {
            HubDevice::Mqtt(d) => d.twin().await,
            HubDevice::Amqp(d) => d.twin().await,
        }
    }

    /// Patches reported properties; returns the new reported `$version`.
    pub async fn report(&mut self, patch: &Json) -> anyhow::Result<i64> {
        match self {
            HubDevice::Mqtt(d) => d.report(patch).await,
            HubDevice::Amqp(d) => d.report(patch).await,
        }
    }

    pub async fn send_telemetry(&mut self, body: &Json) -> anyhow::Result<()> {
        match self {
            HubDevice::Mqtt(d) => d.send_telemetry(body).await,
            HubDevice::Amqp(d) => d.send_telemetry(body).await,
        }
    }

    /// The next desired-properties patch pushed by the hub.
    pub async fn desired_update(&mut self) -> anyhow::Result<Json> {
        match self {
            HubDevice::Mqtt(d) => d.desired_update().await,
            HubDevice::Amqp(d) => d.desired_update().await,
        }
    }

    pub async fn disconnect(self) {
        match self {
            HubDevice::Mqtt(d) => d.disconnect().await,
            HubDevice::Amqp(d) => d.disconnect().await,
        }
    }
}
