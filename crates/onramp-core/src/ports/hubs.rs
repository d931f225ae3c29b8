//! IoT hubs: the registry the engine creates device identities in, and the
//! round trips measured to each hub.

use async_trait::async_trait;
use onramp_model::{DeviceCapabilities, InitialTwin, Secret};

use crate::tenant::LinkedHub;

/// The identity the engine asks a hub to hold for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceIdentity {
    pub device_id: String,
    pub auth: IdentityAuth,
    pub capabilities: DeviceCapabilities,
    pub twin: TwinSetup,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdentityAuth {
    SymmetricKey {
        primary: Secret,
        secondary: Secret,
    },
    /// X.509 device certificates known by thumbprint (individual enrollments).
    SelfSigned {
        primary_thumbprint: String,
        secondary_thumbprint: String,
    },
    /// Any certificate that chains to a CA the hub trusts (enrollment groups).
    /// `anchor` is the group's certificate (DER): hubs that learn their trust
    /// from the provisioning service use it; Azure IoT Hub ignores it.
    CertificateAuthority {
        anchor: Vec<u8>,
    },
}

/// What to do with the device's twin.
#[derive(Debug, Clone, PartialEq)]
pub enum TwinSetup {
    /// Set tags and desired properties to these (a first assignment, or a
    /// move that resets the device's data).
    Initial(InitialTwin),
    /// Leave the twin as the hub has it (the device is back on the same hub).
    Keep,
    /// Carry a twin over from the device's previous hub (a move that
    /// migrates the device's data): tags, desired and reported properties.
    Migrate(TwinSnapshot),
}

/// A device's twin as a hub holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TwinSnapshot {
    pub tags: serde_json::Map<String, serde_json::Value>,
    pub desired: serde_json::Map<String, serde_json::Value>,
    pub reported: serde_json::Map<String, serde_json::Value>,
}

/// Why a hub refused or failed a registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The hub rejected Onramp's credentials (401/403).
    #[error("{0}")]
    Unauthorized(String),
    /// The hub could not be reached or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// The hub answered with an error.
    #[error("{0}")]
    Rejected(String),
}

/// The IoT Hub registry, reached through each linked hub's connection string.
#[async_trait]
pub trait HubRegistry: Send + Sync + 'static {
    /// Creates or updates the device identity and applies the twin setup.
    async fn register_device(
        &self,
        hub: &LinkedHub,
        device: &DeviceIdentity,
    ) -> Result<(), HubError>;

    /// The device's twin, or `None` when the hub has no such device.
    async fn twin(
        &self,
        hub: &LinkedHub,
        device_id: &str,
    ) -> Result<Option<TwinSnapshot>, HubError>;

    /// Deletes the device identity; a device that is already gone is fine.
    async fn remove_device(&self, hub: &LinkedHub, device_id: &str) -> Result<(), HubError>;
}

/// Round trips measured from this node to linked hubs.
pub trait HubLatency: Send + Sync + 'static {
    /// The smoothed round trip to `hub` (host name), if it has been measured
    /// and the hub answered its last probe.
    fn latency_ms(&self, hub: &str) -> Option<f64>;
}

/// No measurements: lowest-latency allocation falls back to hashing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLatency;

impl HubLatency for NoLatency {
    fn latency_ms(&self, _hub: &str) -> Option<f64> {
        None
    }
}
