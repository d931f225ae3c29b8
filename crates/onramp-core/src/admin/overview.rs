//! What an operator sees of a service beyond Azure's service API (Onramp's
//! extension routes, read-only): the service itself, and its linked hubs
//! with the devices on each and the latency each node measured.

use onramp_model::UtcTime;
use serde::Serialize;

use super::Admin;
use crate::ProvisioningError;
use crate::ports::{HubLatencySample, StoreExt};
use crate::tenant::LinkedHub;

/// A provisioning service as the console shows it (no webhook: its URL may
/// carry a secret).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    pub name: String,
    pub id_scope: String,
    /// The default allocation policy, for enrollments that name none.
    pub allocation_policy: String,
    pub linked_hubs: usize,
}

/// A linked hub with how many devices are registered on it and what each
/// node measured (its connection string is never shown).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedHubStatus {
    pub name: String,
    pub region: String,
    pub allocation_weight: u32,
    pub apply_allocation_policy: bool,
    /// `embedded`, `companion` or `linked`.
    pub kind: &'static str,
    pub devices: u64,
    pub latency: Vec<LatencyMeasured>,
}

/// One node's latest measurement of a hub.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyMeasured {
    pub node: String,
    /// Smoothed round trip; absent when the hub did not answer.
    pub latency_ms: Option<f64>,
    /// Why the last probe failed.
    pub error: Option<String>,
    pub measured: UtcTime,
}

impl Admin {
    /// The service the caller's policy belongs to.
    pub async fn service_summary(
        &self,
        service: &str,
    ) -> Result<ServiceSummary, ProvisioningError> {
        let Some(found) = self.store.service(service).await? else {
            return Err(ProvisioningError::internal(format!(
                "provisioning service '{service}' is gone"
            )));
        };
        Ok(ServiceSummary {
            name: found.name,
            id_scope: found.id_scope.to_string(),
            allocation_policy: found.allocation_policy.to_string(),
            linked_hubs: self.store.linked_hubs(service).await?.len(),
        })
    }

    /// The service's linked hubs, each with its device count and latencies.
    pub async fn linked_hub_status(
        &self,
        service: &str,
    ) -> Result<Vec<LinkedHubStatus>, ProvisioningError> {
        let latencies = self.store.hub_latencies().await?;
        let mut out = Vec::new();
        for hub in self.store.linked_hubs(service).await? {
            let devices = self.store.count_devices_on_hub(service, &hub.name).await?;
            out.push(LinkedHubStatus::new(&hub, devices, &latencies));
        }
        Ok(out)
    }
}

impl LinkedHubStatus {
    /// `hub` with its device count and the measurements of it among `latencies`.
    pub fn new(hub: &LinkedHub, devices: u64, latencies: &[HubLatencySample]) -> Self {
        Self {
            name: hub.name.clone(),
            region: hub.location.clone(),
            allocation_weight: hub.allocation_weight,
            apply_allocation_policy: hub.apply_allocation_policy,
            kind: hub.kind(),
            devices,
            latency: latencies
                .iter()
                .filter(|l| hub.is_named(&l.hub))
                .map(|l| LatencyMeasured {
                    node: l.node.clone(),
                    latency_ms: l.latency_ms,
                    error: l.error.clone(),
                    measured: l.measured,
                })
                .collect(),
        }
    }
}

impl LinkedHub {
    /// What kind of hub it is: `embedded` (in `onramp serve`), `companion`
    /// (an Onramp companion hub of its own) or `linked` (Azure IoT Hub).
    pub fn kind(&self) -> &'static str {
        if self.embedded {
            "embedded"
        } else if self.companion {
            "companion"
        } else {
            "linked"
        }
    }
}
