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
        let s = enrollment.settings();
        Settings {
            selection: HubSelection {
                policy: s.allocation_policy.unwrap_or(service.allocation_policy),
                iot_hubs: s.iot_hubs.unwrap_or_default(),
                iot_hub_host_name: s.iot_hub_host_name,
            },
            initial_twin: s.initial_twin,
            capabilities: s.capabilities.unwrap_or_default(),
            // Empty means "the registration ID".
            device_id: s.device_id.filter(|d| !d.is_empty()),
            reprovision: s.reprovision_policy.unwrap_or_default(),
            custom: s.custom_allocation_definition,
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
