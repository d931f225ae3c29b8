//! What an enrollment decides about a registration (hubs and allocation,
//! webhook, reprovisioning, twin, capabilities, device ID), read the same way
//! from an individual enrollment and from a group.

use onramp_model::{CustomAllocationDefinition, ErrorCode, ReprovisionPolicy};

use crate::ProvisioningError;
use crate::allocate::HubSelection;
use crate::attest::Enrollment;
use crate::ports::WebhookTarget;
use crate::tenant::ProvisioningService;

/// The enrollment members the engine reads, whichever kind it is.
pub(super) struct Settings<'a> {
    pub(super) selection: HubSelection<'a>,
    pub(super) initial_twin: Option<&'a onramp_model::InitialTwin>,
    pub(super) capabilities: onramp_model::DeviceCapabilities,
    pub(super) device_id: Option<&'a str>,
    pub(super) reprovision: ReprovisionPolicy,
    pub(super) custom: Option<&'a CustomAllocationDefinition>,
}

impl<'a> Settings<'a> {
    pub(super) fn of(enrollment: &'a Enrollment, service: &ProvisioningService) -> Self {
        match enrollment {
            Enrollment::Individual(e) => Settings {
                selection: HubSelection {
                    policy: e.allocation_policy.unwrap_or(service.allocation_policy),
                    iot_hubs: e.iot_hubs.as_deref().unwrap_or_default(),
                    iot_hub_host_name: e.iot_hub_host_name.as_deref(),
                },
                initial_twin: e.initial_twin.as_ref(),
                capabilities: e.capabilities.unwrap_or_default(),
                device_id: e.device_id.as_deref().filter(|d| !d.is_empty()),
                reprovision: e.reprovision_policy.unwrap_or_default(),
                custom: e.custom_allocation_definition.as_ref(),
            },
            Enrollment::Group(g) => Settings {
                selection: HubSelection {
                    policy: g.allocation_policy.unwrap_or(service.allocation_policy),
                    iot_hubs: g.iot_hubs.as_deref().unwrap_or_default(),
                    iot_hub_host_name: g.iot_hub_host_name.as_deref(),
                },
                initial_twin: g.initial_twin.as_ref(),
                capabilities: g.capabilities.unwrap_or_default(),
                device_id: None,
                reprovision: g.reprovision_policy.unwrap_or_default(),
                custom: g.custom_allocation_definition.as_ref(),
            },
        }
    }

    /// The enrollment's webhook, else the service's default one.
    pub(super) fn webhook(
        &self,
        service: &ProvisioningService,
    ) -> Result<WebhookTarget, ProvisioningError> {
        self.custom
            .filter(|d| !d.webhook_url.trim().is_empty())
            .or(service.custom_allocation.as_ref())
            .map(|d| WebhookTarget {
                url: d.webhook_url.trim().to_owned(),
                api_version: d.api_version.clone(),
            })
            .ok_or_else(|| {
                ProvisioningError::new(
                    ErrorCode::CustomAllocationFailed,
                    "the enrollment uses custom allocation but neither it nor the provisioning service \
                     names a webhook; set customAllocationDefinition on the enrollment or \
                     onramp service update --webhook-url",
                )
            })
    }
}
