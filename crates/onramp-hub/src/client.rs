//! [`HubClient`]: the engine's `HubRegistry` over the IoT Hub service REST API
//! (api-version 2021-04-12). One adapter serves Azure IoT Hub and Onramp's
//! companion hub alike.
//!
//! Registering a device is: `PUT /devices/{id}` without `If-Match` (create);
//! on 409 the device exists and the same PUT with `If-Match: "*"` updates it;
//! then `PUT /twins/{id}` sets the initial tags and desired properties when
//! the engine asks for them, or a bulk `updateTwin` carries a whole twin
//! from the hub a device left. An Onramp companion hub gets all of it in one
//! bulk registry call instead (identity and twin in one transaction).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use onramp_core::connection_string::ConnectionString;
use onramp_core::ports::{
    DeviceIdentity, HubError, HubRegistry, IdentityAuth, TwinSetup, TwinSnapshot,
};
use onramp_core::sas;
use onramp_core::tenant::LinkedHub;
use onramp_model::TwinCollection;
use onramp_model::hub::{
    AuthenticationMechanism, AuthenticationType, BulkRegistryOperationResult, Device, DeviceStatus,
    ExportImportDevice, HUB_API_VERSION, HubErrorBody, ImportMode, SymmetricKey, Twin,
    TwinProperties, X509Thumbprint,
};
use reqwest::StatusCode;

/// Why a [`HubClient`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HubClientError {
    #[error("cannot build the hub HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Lifetime of the SAS tokens the client signs; they are reused until close to expiry.
const TOKEN_TTL_SECONDS: i64 = 3600;

#[derive(Clone)]
struct Credentials {
    host: String,
    key_name: String,
    key: String,
}

struct CachedToken {
    token: String,
    expires: i64,
}

/// REST client for linked hubs.
pub struct HubClient {
    http: reqwest::Client,
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// (hub, CA thumbprint) pairs a companion hub was told to trust, and when.
    trusted: Mutex<HashMap<(String, String), std::time::Instant>>,
    trust_refresh: Duration,
}

/// How long a companion hub is taken to still trust a CA it was handed. After
/// this the CA is handed over again, so a hub whose operator removed it, or
/// whose store was replaced, trusts it again within this time.
pub const TRUST_REFRESH: Duration = Duration::from_secs(300);

impl HubClient {
    /// `tls` decides which hub certificates are trusted (the machine's roots
    /// plus, in development, Onramp's own CA).
    pub fn new(tls: rustls::ClientConfig, timeout: Duration) -> Result<Self, HubClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // Shorter than the idle timeout of the servers it calls (Onramp's
            // own, embedded hub included, closes idle connections after 10 s),
            // so a request never races the server closing its connection.
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(HubClientError::Build)?;
        Ok(Self {
            http,
            tokens: Mutex::new(HashMap::new()),
            trusted: Mutex::new(HashMap::new()),
            trust_refresh: TRUST_REFRESH,
        })
    }

    /// Hands CAs to companion hubs again after `refresh` instead of
    /// [`TRUST_REFRESH`].
    pub fn with_trust_refresh(mut self, refresh: Duration) -> Self {
        self.trust_refresh = refresh;
        self
    }

    fn credentials(hub: &LinkedHub) -> Result<Credentials, HubError> {
        let cs = ConnectionString::parse(hub.connection_string.expose()).map_err(|e| {
            HubError::Unauthorized(format!("the hub's connection string is unusable: {e}"))
        })?;
        let (Some(key_name), Some(key)) = (cs.shared_access_key_name, cs.shared_access_key) else {
            return Err(HubError::Unauthorized(
                "the hub's connection string needs SharedAccessKeyName and SharedAccessKey".into(),
            ));
        };
        Ok(Credentials {
            host: cs.host_name,
            key_name,
            key: key.expose().to_owned(),
        })
    }

    fn token(&self, creds: &Credentials) -> Result<String, HubError> {
        let now = unix_now();
        let cache_key = format!("{}|{}|{}", creds.host, creds.key_name, creds.key);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tokens.get(&cache_key)
            && t.expires - now > 300
        {
            return Ok(t.token.clone());
        }
        let expires = now + TOKEN_TTL_SECONDS;
        let token = sas::sign(&creds.host, &creds.key, expires, Some(&creds.key_name))
            .map_err(|e| HubError::Unauthorized(format!("the hub's SharedAccessKey {e}")))?;
        tokens.insert(
            cache_key,
            CachedToken {
                token: token.clone(),
                expires,
            },
        );
        Ok(token)
    }

    fn url(creds: &Credentials, path: &str) -> String {
        format!(
            "https://{}/{path}?api-version={HUB_API_VERSION}",
            creds.host
        )
    }

    async fn send(
        &self,
        creds: &Credentials,
        method: reqwest::Method,
        path: &str,
        if_match: Option<&str>,
        body: Option<&impl serde::Serialize>,
    ) -> Result<(StatusCode, bytes::Bytes), HubError> {
        let mut req = self
            .http
            .request(method, Self::url(creds, path))
            .header("Authorization", self.token(creds)?);
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                HubError::Unreachable(format!("no answer from {} in time", creds.host))
            } else {
                HubError::Unreachable(format!("{}: {}", creds.host, onramp_core::error::chain(&e)))
            }
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            HubError::Unreachable(format!("{}: reading the answer: {e}", creds.host))
        })?;
        Ok((status, body))
    }

    /// Hands a companion hub the CA certificate a group's devices chain to
    /// (`PUT /onramp/certificates/{sha256}`, an Onramp extension), once per hub
    /// and [`TRUST_REFRESH`].
    async fn ensure_trusted(&self, creds: &Credentials, anchor: &[u8]) -> Result<(), HubError> {
        let thumbprint = onramp_core::x509::thumbprint(&aws_lc_rs::digest::SHA256, anchor);
        let key = (creds.host.clone(), thumbprint.clone());
        {
            // Claimed before the call, so that when the refresh comes due the
            // registrations in flight send one PUT, not one each.
            let mut trusted = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
            if trusted
                .get(&key)
                .is_some_and(|at| at.elapsed() < self.trust_refresh)
            {
                return Ok(());
            }
            trusted.insert(key.clone(), std::time::Instant::now());
        }
        let body = serde_json::json!({ "certificate": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, anchor) });
        let sent = self
            .send(
                creds,
                reqwest::Method::PUT,
                &format!("onramp/certificates/{thumbprint}"),
                None,
                Some(&body),
            )
            .await;
        let outcome = sent.and_then(succeeded);
        if outcome.is_err() {
            // Not handed over: the next registration tries again.
            self.trusted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        outcome
    }

    /// Reads a device identity (keys included, as IoT Hub returns them).
    pub async fn get_device(
        &self,
        hub: &LinkedHub,
        device_id: &str,
    ) -> Result<Option<Device>, HubError> {
        self.read(hub, "devices", device_id, "device").await
    }

    /// Reads a device twin.
    pub async fn get_twin(
        &self,
        hub: &LinkedHub,
        device_id: &str,
    ) -> Result<Option<Twin>, HubError> {
        self.read(hub, "twins", device_id, "twin").await
    }

    /// GETs `{collection}/{device_id}`: the document, or `None` when the hub
    /// has no such device; `what` names it in an error.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        hub: &LinkedHub,
        collection: &str,
        device_id: &str,
        what: &str,
    ) -> Result<Option<T>, HubError> {
        let creds = Self::credentials(hub)?;
        let (status, body) = self
            .send(
                &creds,
                reqwest::Method::GET,
                &format!("{collection}/{}", encode(device_id)),
                None,
                None::<&()>,
            )
            .await?;
        match status {
            StatusCode::OK => serde_json::from_slice(&body).map(Some).map_err(|e| {
                HubError::Rejected(format!("the hub answered an unreadable {what}: {e}"))
            }),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(failure(other, &body)),
        }
    }
}

#[async_trait]
impl HubRegistry for HubClient {
    async fn register_device(
        &self,
        hub: &LinkedHub,
        device: &DeviceIdentity,
    ) -> Result<(), HubError> {
        let creds = Self::credentials(hub)?;
        let authentication = match &device.auth {
            IdentityAuth::SymmetricKey { primary, secondary } => AuthenticationMechanism {
                kind: AuthenticationType::Sas,
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some(primary.clone()),
                    secondary_key: Some(secondary.clone()),
                }),
                x509_thumbprint: None,
            },
            IdentityAuth::SelfSigned {
                primary_thumbprint,
                secondary_thumbprint,
            } => AuthenticationMechanism {
                kind: AuthenticationType::SelfSigned,
                symmetric_key: None,
                x509_thumbprint: Some(X509Thumbprint {
                    primary_thumbprint: Some(primary_thumbprint.clone()),
                    secondary_thumbprint: Some(secondary_thumbprint.clone()),
                }),
            },
            IdentityAuth::CertificateAuthority { anchor } => {
                if hub.companion {
                    self.ensure_trusted(&creds, anchor).await?;
                }
                AuthenticationMechanism {
                    kind: AuthenticationType::CertificateAuthority,
                    symmetric_key: None,
                    x509_thumbprint: None,
                }
            }
        };
        if hub.companion {
            return self
                .register_in_one_call(&creds, device, authentication)
                .await;
        }
        let body = Device {
            device_id: device.device_id.clone(),
            status: Some(DeviceStatus::Enabled),
            authentication: Some(authentication),
            capabilities: Some(device.capabilities),
            ..Default::default()
        };
        let path = format!("devices/{}", encode(&device.device_id));
        let (status, resp) = self
            .send(&creds, reqwest::Method::PUT, &path, None, Some(&body))
            .await?;
        let existed = match status {
            StatusCode::OK | StatusCode::CREATED => false,
            StatusCode::CONFLICT => {
                let updated = self
                    .send(
                        &creds,
                        reqwest::Method::PUT,
                        &path,
                        Some("\"*\""),
                        Some(&body),
                    )
                    .await?;
                succeeded(updated)?;
                true
            }
            other => return Err(failure(other, &resp)),
        };
        match &device.twin {
            TwinSetup::Migrate(snapshot) => {
                self.import_twin(&creds, &device.device_id, snapshot).await
            }
            // A new device's twin starts empty; an existing one's is reset.
            TwinSetup::Initial(initial) if existed || !initial.is_empty() => {
                self.put_twin(&creds, device).await
            }
            TwinSetup::Initial(_) | TwinSetup::Keep => Ok(()),
        }
    }

    async fn twin(
        &self,
        hub: &LinkedHub,
        device_id: &str,
    ) -> Result<Option<TwinSnapshot>, HubError> {
        let Some(twin) = self.get_twin(hub, device_id).await? else {
            return Ok(None);
        };
        let props = twin.properties.unwrap_or_default();
        let clean = |m: Option<serde_json::Map<String, serde_json::Value>>| {
            let mut m = m.unwrap_or_default();
            crate::twin::strip_system_members(&mut m);
            m
        };
        Ok(Some(TwinSnapshot {
            tags: twin.tags.unwrap_or_default(),
            desired: clean(props.desired),
            reported: clean(props.reported),
        }))
    }

    async fn remove_device(&self, hub: &LinkedHub, device_id: &str) -> Result<(), HubError> {
        let creds = Self::credentials(hub)?;
        let (status, body) = self
            .send(
                &creds,
                reqwest::Method::DELETE,
                &format!("devices/{}", encode(device_id)),
                Some("\"*\""),
                None::<&()>,
            )
            .await?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Ok(()),
            other => Err(failure(other, &body)),
        }
    }
}

impl HubClient {
    /// Creates or overwrites the identity and sets its twin in one bulk
    /// registry call (`importMode: update`), which an Onramp companion hub
    /// applies in one transaction: half the round trips and commits of
    /// `PUT /devices` then `PUT /twins`.
    async fn register_in_one_call(
        &self,
        creds: &Credentials,
        device: &DeviceIdentity,
        authentication: AuthenticationMechanism,
    ) -> Result<(), HubError> {
        let (tags, properties) = twin_parts(&device.twin);
        let item = ExportImportDevice {
            id: device.device_id.clone(),
            import_mode: Some(ImportMode::Update),
            status: Some(DeviceStatus::Enabled),
            authentication: Some(authentication),
            capabilities: Some(device.capabilities),
            tags,
            properties,
            ..Default::default()
        };
        self.bulk(creds, &[item]).await
    }

    async fn bulk(
        &self,
        creds: &Credentials,
        items: &[ExportImportDevice],
    ) -> Result<(), HubError> {
        let (status, body) = self
            .send(creds, reqwest::Method::POST, "devices", None, Some(&items))
            .await?;
        if status.is_success() {
            return Ok(());
        }
        match serde_json::from_slice::<BulkRegistryOperationResult>(&body) {
            Ok(result) if !result.errors.is_empty() => Err(HubError::Rejected(
                result
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.error_code, e.error_status))
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
            _ => Err(failure(status, &body)),
        }
    }

    /// Sets a device's twin to the initial tags and desired properties.
    async fn put_twin(&self, creds: &Credentials, device: &DeviceIdentity) -> Result<(), HubError> {
        let (tags, properties) = twin_parts(&device.twin);
        let twin = Twin {
            device_id: device.device_id.clone(),
            tags,
            properties,
            ..Default::default()
        };
        let path = format!("twins/{}", encode(&device.device_id));
        let sent = self
            .send(
                creds,
                reqwest::Method::PUT,
                &path,
                Some("\"*\""),
                Some(&twin),
            )
            .await?;
        succeeded(sent)
    }

    /// Overwrites a twin with one carried from another hub, reported
    /// properties included: the service API cannot write those, the bulk
    /// registry operation (`importMode: updateTwin`) can.
    async fn import_twin(
        &self,
        creds: &Credentials,
        device_id: &str,
        snapshot: &TwinSnapshot,
    ) -> Result<(), HubError> {
        let (tags, properties) = snapshot_parts(snapshot);
        let item = ExportImportDevice {
            id: device_id.to_owned(),
            import_mode: Some(ImportMode::UpdateTwin),
            tags,
            properties,
            ..Default::default()
        };
        self.bulk(creds, &[item]).await
    }
}

/// The tags and properties a twin is set to (nothing for `Keep`).
fn twin_parts(twin: &TwinSetup) -> (Option<TwinCollection>, Option<TwinProperties>) {
    match twin {
        TwinSetup::Keep => (None, None),
        TwinSetup::Initial(initial) => (
            Some(initial.tags.clone().unwrap_or_default()),
            Some(TwinProperties {
                desired: Some(initial.desired().cloned().unwrap_or_default()),
                reported: None,
            }),
        ),
        TwinSetup::Migrate(snapshot) => snapshot_parts(snapshot),
    }
}

/// A twin carried from another hub, reported properties included.
fn snapshot_parts(snapshot: &TwinSnapshot) -> (Option<TwinCollection>, Option<TwinProperties>) {
    (
        Some(snapshot.tags.clone()),
        Some(TwinProperties {
            desired: Some(snapshot.desired.clone()),
            reported: Some(snapshot.reported.clone()),
        }),
    )
}

/// A success answer, or the failure the hub reports.
fn succeeded((status, body): (StatusCode, bytes::Bytes)) -> Result<(), HubError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(failure(status, &body))
    }
}

fn failure(status: StatusCode, body: &[u8]) -> HubError {
    let text = serde_json::from_slice::<HubErrorBody>(body)
        .ok()
        .map(|b| b.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let message = format!("HTTP {}: {text}", status.as_u16());
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HubError::Unauthorized(message),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            HubError::Unreachable(message)
        }
        _ => HubError::Rejected(message),
    }
}

fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Shared handle, for callers that hold one client for everything.
pub type SharedHubClient = Arc<HubClient>;
