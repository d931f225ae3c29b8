//! Custom allocation: the request Onramp posts to an enrollment's webhook,
//! and the checks on its answer. The call itself goes through the
//! [`AllocationWebhook`](crate::ports::AllocationWebhook) port.

use onramp_model::allocation::{
    AllocationRequest, AllocationResponse, DeviceRuntimeContext, X509DeviceAttestation,
};
use onramp_model::{AttestationMechanism, ErrorCode};
use serde_json::Value;

use crate::ProvisioningError;
use crate::attest::{Attested, Enrollment, Proof};
use crate::ports::{Placement, WebhookError, WebhookTarget};
use crate::tenant::LinkedHub;

/// The webhook request: the enrollment without its secrets, what the device
/// is and sent, and the hubs it may go to.
pub fn request(
    attested: &Attested,
    current: Option<&Placement>,
    payload: Option<&Value>,
    offered: &[&LinkedHub],
) -> AllocationRequest {
    let (individual_enrollment, enrollment_group) = match &attested.enrollment {
        Enrollment::Individual(e) => {
            let mut e = onramp_model::IndividualEnrollment::clone(e);
            e.attestation = e.attestation.map(without_secrets);
            e.registration_state = None;
            (Some(e), None)
        }
        Enrollment::Group(g) => {
            let mut g = onramp_model::EnrollmentGroup::clone(g);
            g.attestation = g.attestation.map(without_secrets);
            (None, Some(g))
        }
    };
    let mut context = DeviceRuntimeContext {
        registration_id: attested.registration_id.as_str().to_owned(),
        current_iot_hub_host_name: current.map(|c| c.hub.clone()),
        current_device_id: current.map(|c| c.device_id.clone()),
        payload: payload.filter(|p| !p.is_null()).cloned(),
        ..Default::default()
    };
    match &attested.proof {
        Proof::SymmetricKey { .. } => context.symmetric_key = Some(serde_json::Map::new()),
        Proof::Tpm { challenge, .. } => {
            context.tpm = Some(onramp_model::TpmAttestation {
                endorsement_key: challenge.endorsement_key.clone(),
                storage_root_key: Some(challenge.storage_root_key.clone()),
                ..Default::default()
            })
        }
        Proof::X509 { leaf, signing } => {
            context.x509 = Some(X509DeviceAttestation {
                client_certificate: Some(leaf.info.clone()),
                signing_certificate: signing.as_ref().map(|s| s.info.clone()),
            })
        }
    }
    AllocationRequest {
        individual_enrollment,
        enrollment_group,
        device_runtime_context: context,
        linked_hubs: offered.iter().map(|h| h.name.clone()).collect(),
    }
}

/// The attestation as the webhook sees it: symmetric keys never leave Onramp.
fn without_secrets(mut a: AttestationMechanism) -> AttestationMechanism {
    a.symmetric_key = None;
    a
}

/// Checks the webhook's answer; returns the chosen hub among `offered`.
pub fn chosen_hub<'h>(
    target: &WebhookTarget,
    answer: &AllocationResponse,
    offered: &[&'h LinkedHub],
) -> Result<&'h LinkedHub, ProvisioningError> {
    let url = target.display_url();
    let Some(name) = answer
        .iot_hub_host_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return Err(ProvisioningError::new(
            ErrorCode::IotHubNotAvailable,
            format!(
                "the custom allocation webhook {url} answered without iotHubHostName; \
                 it must name one of the linkedHubs it was sent"
            ),
        ));
    };
    if let Some(p) = &answer.payload
        && !p.is_object()
        && !p.is_null()
    {
        return Err(ProvisioningError::new(
            ErrorCode::CustomAllocationInvalidResponse,
            format!(
                "the custom allocation webhook {url} answered a payload that is not a JSON object; \
                 devices receive payload as an object"
            ),
        ));
    }
    offered
        .iter()
        .copied()
        .find(|h| h.is_named(name))
        .ok_or_else(|| {
            ProvisioningError::new(
                ErrorCode::CustomAllocationUnknownHub,
                format!(
                    "the custom allocation webhook {url} chose hub '{name}', which is not among the hubs \
                     it was offered ({}); answer one of linkedHubs",
                    offered
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// The registration error for a failed webhook call.
pub fn failure(target: &WebhookTarget, e: WebhookError) -> ProvisioningError {
    let url = target.display_url();
    match e {
        WebhookError::Timeout(ms) => ProvisioningError::new(
            ErrorCode::CustomAllocationTimeout,
            format!(
                "the custom allocation webhook {url} did not answer within {ms} ms; \
                 make it answer faster, then register again"
            ),
        ),
        WebhookError::Unreachable(m) => ProvisioningError::new(
            ErrorCode::CustomAllocationUnreachable,
            format!(
                "the custom allocation webhook {url} could not be reached ({m}); \
                 check customAllocationDefinition.webhookUrl and that the webhook is running"
            ),
        ),
        WebhookError::Status { status: 401, body } => ProvisioningError::new(
            ErrorCode::IotHubUnauthorized,
            format!(
                "the custom allocation webhook {url} refused Onramp with HTTP 401 ({body}); \
                     put the webhook's access code into webhookUrl"
            ),
        ),
        WebhookError::Status { status, body } => ProvisioningError::new(
            ErrorCode::CustomAllocationFailed,
            format!("the custom allocation webhook {url} answered HTTP {status}: {body}"),
        ),
        WebhookError::InvalidResponse(m) => ProvisioningError::new(
            ErrorCode::CustomAllocationInvalidResponse,
            format!(
                "the custom allocation webhook {url} answered something that is not an allocation \
                 response ({m}); answer JSON such as {{\"iotHubHostName\": \"…\"}}"
            ),
        ),
    }
}
