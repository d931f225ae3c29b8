//! The custom-allocation webhook contract: what DPS posts to the webhook
//! (`AllocationRequest`) and what the webhook answers (`AllocationResponse`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::enrollment::{
    EnrollmentGroup, IndividualEnrollment, InitialTwin, TpmAttestation, X509CertificateInfo,
};

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRequest {
    /// The enrollment, without its secrets.
    pub individual_enrollment: Option<IndividualEnrollment>,
    /// The enrollment group, without its secrets.
    pub enrollment_group: Option<EnrollmentGroup>,
    pub device_runtime_context: DeviceRuntimeContext,
    /// Host names of the hubs the webhook may choose from.
    pub linked_hubs: Vec<String>,
}

json_object! {
    pub struct DeviceRuntimeContext {
        pub registration_id: String,
        /// Only when the device was assigned before.
        pub current_iot_hub_host_name: Option<String>,
        pub current_device_id: Option<String>,
        pub x509: Option<X509DeviceAttestation>,
        /// Present (empty) for symmetric-key devices: keys are never sent.
        pub symmetric_key: Option<Map<String, Value>>,
        pub tpm: Option<TpmAttestation>,
        /// The device's `payload`, verbatim.
        pub payload: Option<Value>,
    }
}

json_object! {
    /// The device's certificates as the webhook sees them.
    #[derive(Eq)]
    pub struct X509DeviceAttestation {
        pub client_certificate: Option<X509CertificateInfo>,
        pub signing_certificate: Option<X509CertificateInfo>,
    }
}

json_object! {
    pub struct AllocationResponse {
        /// Always written: a webhook that answers `null` refuses the device.
        #[serialize_always]
        pub iot_hub_host_name: Option<String>,
        pub initial_twin: Option<InitialTwin>,
        pub payload: Option<Value>,
    }
}
