//! The custom-allocation webhook contract: what DPS posts to the webhook
//! (`AllocationRequest`) and what the webhook answers (`AllocationResponse`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::enrollment::{
    EnrollmentGroup, IndividualEnrollment, InitialTwin, TpmAttestation, X509CertificateInfo,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRequest {
    /// The enrollment, without its secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub individual_enrollment: Option<IndividualEnrollment>,
    /// The enrollment group, without its secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group: Option<EnrollmentGroup>,
    pub device_runtime_context: DeviceRuntimeContext,
    /// Host names of the hubs the webhook may choose from.
    pub linked_hubs: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRuntimeContext {
    pub registration_id: String,
    /// Only when the device was assigned before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_iot_hub_host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509DeviceAttestation>,
    /// Present (empty) for symmetric-key devices: keys are never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmAttestation>,
    /// The device's `payload`, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// The device's certificates as the webhook sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509DeviceAttestation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<X509CertificateInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificate: Option<X509CertificateInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationResponse {
    #[serde(default)]
    pub iot_hub_host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}
