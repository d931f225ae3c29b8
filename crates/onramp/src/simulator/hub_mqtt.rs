//! The simulated device on its hub over MQTT (and MQTT over WebSockets), as
//! the SDKs speak IoT Hub's MQTT: the user name names the hub and device,
//! the password is a SAS token (none for X.509), the twin on
//! `$iothub/twin/…` topics with request IDs.

use std::time::Duration;

use anyhow::{Context, bail};
use onramp_core::sas;
use onramp_net::mqtt::client::{ConnectOptions, MqttClient, Transport};
use onramp_net::mqtt::{QoS, topic};

use super::hub::HubLogin;
use super::{CLIENT_VERSION, HUB_API_VERSION, Protocol, address, unix_now};

/// A device connected to its IoT hub over MQTT.
pub struct MqttHubDevice {
    client: MqttClient,
    device_id: String,
    rid: u32,
}

impl MqttHubDevice {
    /// Connects with a SAS token signed by the device's key; `hub` is the
    /// assigned hub's `host[:port]`.
    pub async fn connect(login: HubLogin<'_>) -> anyhow::Result<Self> {
        let HubLogin {
            hub,
            device_id,
            key,
            protocol,
            tls,
        } = login;
        let host = onramp_model::authority::host(hub);
        let resource = format!("{hub}/devices/{device_id}");
        let token = key
            .map(|k| sas::sign(&resource, k, unix_now() + 3600, None).map_err(anyhow::Error::msg))
            .transpose()?;
        let options = ConnectOptions {
            client_id: device_id.to_owned(),
            username: Some(format!(
                "{host}/{device_id}/?api-version={HUB_API_VERSION}&DeviceClientType={}",
                sas::encode(CLIENT_VERSION)
            )),
            password: token,
            keep_alive: 60,
            clean_session: false,
        };
        let transport = match protocol {
            Protocol::MqttWs => Transport::WebSocket {
                path: "/$iothub/websocket".into(),
                subprotocol: "mqtt".into(),
            },
            _ => Transport::Tls,
        };
        let address = address(
            hub,
            if protocol == Protocol::MqttWs {
                Protocol::MqttWs
            } else {
                Protocol::Mqtt
            },
        );
        let mut client =
            MqttClient::connect(&address, tls, &transport, &options, Duration::from_secs(30))
                .await
                .with_context(|| format!("MQTT connection to the hub at {address}"))?;
        client
            .subscribe(&[
                ("$iothub/twin/res/#", QoS::AtLeastOnce),
                ("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce),
            ])
            .await?;
        Ok(Self {
            client,
            device_id: device_id.to_owned(),
            rid: 0,
        })
    }

    fn next_rid(&mut self) -> u32 {
        self.rid += 1;
        self.rid
    }

    /// The whole twin the device sees: `{"desired": {…}, "reported": {…}}`.
    pub async fn twin(&mut self) -> anyhow::Result<serde_json::Value> {
        let rid = self.next_rid();
        self.client
            .publish(
                &format!("$iothub/twin/GET/?$rid={rid}"),
                Vec::new(),
                QoS::AtMostOnce,
            )
            .await?;
        let m = self.client.next_message_on("$iothub/twin/res/").await?;
        if !m.topic.starts_with("$iothub/twin/res/200/") {
            bail!("twin request answered {}", m.topic);
        }
        Ok(serde_json::from_slice(&m.payload)?)
    }

    /// Patches reported properties; returns the new reported `$version`.
    pub async fn report(&mut self, patch: &serde_json::Value) -> anyhow::Result<i64> {
        let rid = self.next_rid();
        self.client
            .publish(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                serde_json::to_vec(patch)?,
                QoS::AtMostOnce,
            )
            .await?;
        let m = self.client.next_message_on("$iothub/twin/res/").await?;
        let (path, pairs) = topic::split(&m.topic);
        if path != "$iothub/twin/res/204/" {
            bail!(
                "reported patch answered {} {}",
                m.topic,
                String::from_utf8_lossy(&m.payload)
            );
        }
        topic::get(&pairs, "$version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no $version in {}", m.topic))
    }

    pub async fn send_telemetry(&mut self, body: &serde_json::Value) -> anyhow::Result<()> {
        let topic = format!(
            "devices/{}/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8",
            self.device_id
        );
        self.client
            .publish(&topic, serde_json::to_vec(body)?, QoS::AtLeastOnce)
            .await?;
        Ok(())
    }

    /// The next desired-properties patch pushed by the hub.
    pub async fn desired_update(&mut self) -> anyhow::Result<serde_json::Value> {
        let m = self
            .client
            .next_message_on("$iothub/twin/PATCH/properties/desired/")
            .await?;
        Ok(serde_json::from_slice(&m.payload)?)
    }

    pub async fn disconnect(self) {
        self.client.disconnect().await;
    }
}
