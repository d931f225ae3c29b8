//! What the deployment's admin commands print: services, policies and
//! linked hubs as records, for `--output table|json|yaml`.

use std::num::NonZeroU32;

use onramp_core::admin::LinkedHubStatus;
use onramp_core::tenant::{LinkedHub, ProvisioningService, SharedAccessPolicy};
use onramp_core::throttle::ServiceRates;
use serde::Serialize;

/// `onramp service list`: a row per provisioning service.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    name: String,
    id_scope: String,
    allocation_policy: String,
    linked_hubs: usize,
}

impl ServiceRow {
    pub fn new(service: &ProvisioningService, linked_hubs: usize) -> Self {
        Self {
            name: service.name.clone(),
            id_scope: service.id_scope.to_string(),
            allocation_policy: service.allocation_policy.to_string(),
            linked_hubs,
        }
    }
}

/// `onramp service show`: a provisioning service, its policies and hubs.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    name: String,
    id_scope: String,
    global_device_endpoint: String,
    allocation_policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_webhook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_webhook_api_version: Option<String>,
    /// The rates this configuration holds the service to.
    throttle: ServiceThrottleView,
    policies: Vec<PolicyView>,
    linked_hubs: Vec<String>,
}

/// A service's registration and service-API rates (`[throttle]`, or its
/// `[throttle.services.NAME]`); 0 is no limit.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceThrottleView {
    registrations_per_second: u32,
    service_api_requests_per_minute: u32,
}

impl From<ServiceRates> for ServiceThrottleView {
    fn from(rates: ServiceRates) -> Self {
        let rate = |n: Option<NonZeroU32>| n.map_or(0, NonZeroU32::get);
        Self {
            registrations_per_second: rate(rates.registrations_per_second),
            service_api_requests_per_minute: rate(rates.service_api_requests_per_minute),
        }
    }
}

impl ServiceView {
    /// The view of `service`, held to `rates`; with `keys_at`, the
    /// policies' connection strings for that endpoint.
    pub fn new(
        service: &ProvisioningService,
        rates: ServiceRates,
        endpoint: &str,
        policies: &[SharedAccessPolicy],
        hubs: &[LinkedHub],
        keys_at: Option<&str>,
    ) -> Self {
        let webhook = service.custom_allocation.as_ref();
        Self {
            name: service.name.clone(),
            id_scope: service.id_scope.to_string(),
            global_device_endpoint: endpoint.to_owned(),
            allocation_policy: service.allocation_policy.to_string(),
            // The webhook's query string may hold its key.
            default_webhook: webhook.map(|d| {
                d.webhook_url
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            }),
            default_webhook_api_version: webhook.map(|d| d.api_version.clone()),
            throttle: rates.into(),
            policies: policies
                .iter()
                .map(|p| PolicyView::new(p, keys_at))
                .collect(),
            linked_hubs: hubs.iter().map(|h| h.name.clone()).collect(),
        }
    }
}

/// A shared access policy: its rights and, asked for, its connection strings.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    name: String,
    rights: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_connection_string: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secondary_connection_string: Option<String>,
}

impl PolicyView {
    /// The view of `policy`; with `keys_at`, its connection strings for
    /// that endpoint.
    pub fn new(policy: &SharedAccessPolicy, keys_at: Option<&str>) -> Self {
        let secondary = SharedAccessPolicy {
            primary_key: policy.secondary_key.clone(),
            ..policy.clone()
        };
        Self {
            name: policy.name.clone(),
            rights: policy.rights.to_string(),
            primary_connection_string: keys_at.map(|e| policy.connection_string(e)),
            secondary_connection_string: keys_at.map(|e| secondary.connection_string(e)),
        }
    }
}

/// `onramp linked-hub list` as a table: the measurements in one column.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedHubRow {
    name: String,
    region: String,
    weight: u32,
    allocate: &'static str,
    kind: &'static str,
    devices: u64,
    /// Each node's smoothed round trip.
    latency: String,
}

impl From<&LinkedHubStatus> for LinkedHubRow {
    fn from(hub: &LinkedHubStatus) -> Self {
        let measured: Vec<String> = hub
            .latency
            .iter()
            .map(|l| match (l.latency_ms, &l.error) {
                (Some(ms), _) => format!("{}: {ms:.1} ms", l.node),
                (None, Some(e)) => format!("{}: down ({e})", l.node),
                (None, None) => format!("{}: not measured", l.node),
            })
            .collect();
        Self {
            name: hub.name.clone(),
            region: hub.region.clone(),
            weight: hub.allocation_weight,
            allocate: if hub.apply_allocation_policy {
                "yes"
            } else {
                "no"
            },
            kind: hub.kind,
            devices: hub.devices,
            latency: if measured.is_empty() {
                "not measured yet".to_owned()
            } else {
                measured.join(", ")
            },
        }
    }
}
