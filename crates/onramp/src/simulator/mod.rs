//! A simulated device speaking the DPS device API (HTTPS, MQTT, AMQP, and
//! MQTT or AMQP over WebSockets) and the IoT Hub device API (MQTT or AMQP,
//! each also over WebSockets), exactly as the Azure SDKs do. `onramp device …` and load generators drive it.

pub mod amqp;
mod hub;
mod hub_amqp;
mod hub_mqtt;

pub use hub::{HubDevice, HubLogin};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_core::sas;
use onramp_core::tpm::device::SoftTpm;
use onramp_model::{
    DeviceRegistration, ErrorBody, RegistrationOperationStatus, RegistrationStatus, TpmAttestation,
    TpmRegistrationChallenge,
};
use onramp_net::mqtt::client::{ConnectOptions, MqttClient, Transport};
use onramp_net::mqtt::{QoS, topic};

/// The api-versions the simulator sends (what the SDKs send today).
pub const DEVICE_API_VERSION: &str = "2021-06-01";
pub const MQTT_API_VERSION: &str = "2019-03-31";
pub const HUB_API_VERSION: &str = "2021-04-12";
const CLIENT_VERSION: &str = concat!("onramp-simulator/", env!("CARGO_PKG_VERSION"));

/// Transport to the provisioning service or the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Https,
    Mqtt,
    MqttWs,
    Amqp,
    AmqpWs,
}

impl Protocol {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "https" | "http" => Ok(Protocol::Https),
            "mqtt" => Ok(Protocol::Mqtt),
            "mqtt-ws" | "mqttws" | "mqtt_ws" => Ok(Protocol::MqttWs),
            "amqp" => Ok(Protocol::Amqp),
            "amqp-ws" | "amqpws" | "amqp_ws" => Ok(Protocol::AmqpWs),
            other => {
                bail!("protocol '{other}' is unknown; use https, mqtt, mqtt-ws, amqp or amqp-ws")
            }
        }
    }

    /// The port the SDKs use for this transport.
    pub fn default_port(&self) -> u16 {
        match self {
            Protocol::Https | Protocol::MqttWs | Protocol::AmqpWs => 443,
            Protocol::Mqtt => 8883,
            Protocol::Amqp => 5671,
        }
    }
}

/// The TLS settings of a simulated fleet: devices do not share TLS sessions
/// (no resumption), and HTTPS devices speak HTTP/1.1 as the SDKs do.
pub fn fleet_tls(base: &rustls::ClientConfig, protocol: Protocol) -> Arc<rustls::ClientConfig> {
    let mut tls = base.clone();
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = if protocol == Protocol::Https {
        vec![b"http/1.1".to_vec()]
    } else {
        Vec::new()
    };
    Arc::new(tls)
}

/// `host[:port]` with the transport's default port filled in.
pub fn address(endpoint: &str, protocol: Protocol) -> String {
    // An endpoint that does not parse is kept as given: connecting to it
    // fails with an error that names it.
    onramp_model::authority::with_default_port(endpoint, protocol.default_port())
        .unwrap_or_else(|_| endpoint.to_owned())
}

/// One device's credentials and target.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// `host[:port]` of the provisioning service.
    pub endpoint: String,
    pub id_scope: String,
    pub registration_id: String,
    /// The device's own key (for a group device: derived from the group key);
    /// `None` for an X.509 device, whose certificate is in the TLS configuration.
    pub key: Option<String>,
    pub payload: Option<serde_json::Value>,
    pub force: bool,
    /// A TPM device's TPM (in software): it answers the nonce challenge
    /// over HTTPS, and opens the hub key the `assigned` answer carries.
    pub tpm: Option<Arc<SoftTpm>>,
}

impl DeviceSpec {
    fn dps_token(&self) -> anyhow::Result<Option<String>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let resource = format!("{}/registrations/{}", self.id_scope, self.registration_id);
        sas::sign(&resource, key, unix_now() + 3600, Some("registration"))
            .map(Some)
            .map_err(anyhow::Error::msg)
    }

    fn register_body(&self) -> DeviceRegistration {
        DeviceRegistration {
            registration_id: Some(self.registration_id.clone()),
            payload: self.payload.clone(),
            // The SDKs send their TPM's keys in every register request.
            tpm: self.tpm.as_ref().map(|tpm| TpmAttestation {
                endorsement_key: tpm.endorsement_key().to_base64(),
                storage_root_key: Some(tpm.storage_root_key().to_base64()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The hub key an `assigned` answer wraps for this device's TPM (base64).
    pub fn tpm_hub_key(
        &self,
        status: &RegistrationOperationStatus,
    ) -> anyhow::Result<Option<String>> {
        let Some(tpm) = &self.tpm else {
            return Ok(None);
        };
        let wrapped = status
            .registration_state
            .as_ref()
            .and_then(|s| s.tpm.as_ref())
            .context("the assigned answer carries no tpm.authenticationKey")?;
        let blob = STANDARD
            .decode(&wrapped.authentication_key)
            .context("tpm.authenticationKey is not base64")?;
        Ok(Some(STANDARD.encode(tpm.open(&blob)?)))
    }
}

/// A TPM device's first request, its keys and no token, answered 401 with
/// the challenge: the key the blob carries, opened in the TPM, signs the
/// device's token.
async fn tpm_token(
    client: &reqwest::Client,
    url: &str,
    spec: &DeviceSpec,
    tpm: &SoftTpm,
) -> anyhow::Result<String> {
    let resp = client
        .put(url)
        .json(&spec.register_body())
        .send()
        .await
        .with_context(|| format!("cannot reach {}", spec.endpoint))?;
    let code = resp.status().as_u16();
    let text = resp.text().await?;
    let challenge: TpmRegistrationChallenge = match code {
        401 => serde_json::from_str(&text)
            .with_context(|| format!("HTTP 401 without a TPM challenge: {text}"))?,
        _ => {
            parse_status(code, &text)?;
            bail!("expected the TPM challenge (HTTP 401), got HTTP {code}: {text}")
        }
    };
    let blob = STANDARD
        .decode(&challenge.authentication_key)
        .context("authenticationKey is not base64")?;
    let key = tpm.open(&blob)?;
    let resource = format!("{}/registrations/{}", spec.id_scope, spec.registration_id);
    sas::sign(
        &resource,
        &STANDARD.encode(key),
        unix_now() + 3600,
        Some(&challenge.key_name),
    )
    .map_err(anyhow::Error::msg)
}

/// Provisions over `protocol` and polls until the operation is finished.
pub async fn provision(
    spec: &DeviceSpec,
    protocol: Protocol,
    http: &reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<RegistrationOperationStatus> {
    match protocol {
        Protocol::Https => provision_https(http, spec).await,
        _ => provision_over_session(spec, protocol, tls).await,
    }
}

/// Provisions over MQTT or AMQP (either over WebSockets): a connection of the
/// device's own, as each device of a fleet has.
pub async fn provision_over_session(
    spec: &DeviceSpec,
    protocol: Protocol,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<RegistrationOperationStatus> {
    if spec.tpm.is_some() && protocol != Protocol::Https {
        // The TPM challenge is answered over HTTPS (MQTT has none; the
        // simulator's TPM does not speak AMQP's SASL TPM).
        bail!("a TPM device provisions over HTTPS; use --protocol https");
    }
    match protocol {
        Protocol::Https => bail!("HTTPS has no session; use provision"),
        Protocol::Mqtt => provision_mqtt(spec, tls, protocol, &Transport::Tls).await,
        Protocol::MqttWs => {
            let ws = Transport::WebSocket {
                path: "/$iothub/websocket".into(),
                subprotocol: "mqtt".into(),
            };
            provision_mqtt(spec, tls, protocol, &ws).await
        }
        Protocol::Amqp => amqp::provision_amqp(spec, tls, protocol, &Transport::Tls).await,
        Protocol::AmqpWs => amqp::provision_amqp(spec, tls, protocol, &amqp::websocket()).await,
    }
}

/// Registers over HTTPS and polls until the operation is finished.
pub async fn provision_https(
    client: &reqwest::Client,
    spec: &DeviceSpec,
) -> anyhow::Result<RegistrationOperationStatus> {
    let base = format!(
        "https://{}/{}/registrations/{}",
        address(&spec.endpoint, Protocol::Https),
        sas::encode(&spec.id_scope),
        sas::encode(&spec.registration_id)
    );
    let mut url = format!("{base}/register?api-version={DEVICE_API_VERSION}");
    if spec.force {
        url.push_str("&forceRegistration=true");
    }
    let token = match &spec.tpm {
        Some(tpm) => Some(tpm_token(client, &url, spec, tpm).await?),
        None => spec.dps_token()?,
    };
    let mut put = client.put(&url).json(&spec.register_body());
    if let Some(token) = &token {
        put = put.header("Authorization", token);
    }
    let resp = put
        .send()
        .await
        .with_context(|| format!("cannot reach {}", spec.endpoint))?;
    let mut status = read_status(resp).await?;
    let polling = Polling::start();
    while polling.again(&status).await? {
        let mut get = client.get(format!(
            "{base}/operations/{}?api-version={DEVICE_API_VERSION}",
            status.operation_id
        ));
        if let Some(token) = &token {
            get = get.header("Authorization", token);
        }
        status = read_status(get.send().await?).await?;
    }
    Ok(status)
}

/// How long a simulated device polls an `assigning` operation: longer than
/// the default schedule on which a busy allocation webhook is asked again
/// (10 attempts of up to 10 s, with 333 s of waits between them), so that the
/// device sees the registration's own end.
const POLL_FOR: Duration = Duration::from_secs(8 * 60);

/// The pace of polling while an operation is `assigning`: once a second, for
/// at most [`POLL_FOR`].
struct Polling {
    deadline: tokio::time::Instant,
}

impl Polling {
    fn start() -> Self {
        Self {
            deadline: tokio::time::Instant::now() + POLL_FOR,
        }
    }

    /// Whether to poll again (after a pause); an error once time is up.
    async fn again(&self, status: &RegistrationOperationStatus) -> anyhow::Result<bool> {
        if status.status != RegistrationStatus::Assigning {
            return Ok(false);
        }
        if tokio::time::Instant::now() > self.deadline {
            bail!(
                "the registration is still assigning after {} s (operation {})",
                POLL_FOR.as_secs(),
                status.operation_id
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(true)
    }
}

async fn read_status(resp: reqwest::Response) -> anyhow::Result<RegistrationOperationStatus> {
    let code = resp.status();
    let text = resp.text().await?;
    parse_status(code.as_u16(), &text)
}

fn parse_status(code: u16, text: &str) -> anyhow::Result<RegistrationOperationStatus> {
    if code >= 300 {
        if let Ok(err) = serde_json::from_str::<ErrorBody>(text) {
            bail!("HTTP {code} {}: {}", err.error_code, err.message);
        }
        bail!("HTTP {code}: {text}");
    }
    serde_json::from_str(text).with_context(|| format!("unreadable answer: {text}"))
}

/// Registers over MQTT (`protocol`: MQTT, or MQTT over WebSockets on
/// `transport`) and polls until finished.
async fn provision_mqtt(
    spec: &DeviceSpec,
    tls: Arc<rustls::ClientConfig>,
    protocol: Protocol,
    transport: &Transport,
) -> anyhow::Result<RegistrationOperationStatus> {
    let options = ConnectOptions {
        client_id: spec.registration_id.clone(),
        username: Some(format!(
            "{}/registrations/{}/api-version={MQTT_API_VERSION}&ClientVersion={}",
            spec.id_scope,
            spec.registration_id,
            sas::encode(CLIENT_VERSION)
        )),
        password: spec.dps_token()?,
        keep_alive: 60,
        clean_session: true,
    };
    let address = address(&spec.endpoint, protocol);
    let mut client =
        MqttClient::connect(&address, tls, transport, &options, Duration::from_secs(30))
            .await
            .with_context(|| format!("MQTT connection to {address}"))?;
    client
        .subscribe(&[("$dps/registrations/res/#", QoS::AtLeastOnce)])
        .await?;
    let body = serde_json::to_vec(&spec.register_body())?;
    client
        .publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            body,
            QoS::AtLeastOnce,
        )
        .await?;
    let mut status = mqtt_answer(&mut client).await?;
    let polling = Polling::start();
    let mut rid = 1;
    while polling.again(&status).await? {
        rid += 1;
        let poll = format!(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={}",
            status.operation_id
        );
        client.publish(&poll, " ", QoS::AtLeastOnce).await?;
        status = mqtt_answer(&mut client).await?;
    }
    client.disconnect().await;
    Ok(status)
}

async fn mqtt_answer(client: &mut MqttClient) -> anyhow::Result<RegistrationOperationStatus> {
    let message = client.next_message_on("$dps/registrations/res/").await?;
    let (path, _) = topic::split(&message.topic);
    let code: u16 = path
        .trim_start_matches("$dps/registrations/res/")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("no status in the topic {}", message.topic))?;
    parse_status(code, &String::from_utf8_lossy(&message.payload))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_default_ports() {
        assert_eq!(address("localhost", Protocol::Mqtt), "localhost:8883");
        assert_eq!(address("localhost", Protocol::MqttWs), "localhost:443");
        assert_eq!(address("localhost:9000", Protocol::Mqtt), "localhost:9000");
        assert_eq!(address("::1", Protocol::Mqtt), "[::1]:8883");
        assert_eq!(Protocol::parse("MQTT-WS").unwrap(), Protocol::MqttWs);
        assert_eq!(address("localhost", Protocol::Amqp), "localhost:5671");
        assert_eq!(address("localhost", Protocol::AmqpWs), "localhost:443");
        assert_eq!(Protocol::parse("amqp-ws").unwrap(), Protocol::AmqpWs);
        assert!(Protocol::parse("coap").is_err());
    }
}
