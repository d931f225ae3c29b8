//! IoT Hub service REST subset (api-version 2021-04-12): device identities and
//! twins. Onramp's hub adapter writes these to linked hubs and the companion
//! hub serves them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::enrollment::{DeviceCapabilities, SymmetricKeyAttestation, TwinCollection};

/// The api-version the hub adapter sends and the companion hub advertises.
pub const HUB_API_VERSION: &str = "2021-04-12";

json_object! {
    pub struct Device {
        #[serde(default)]
        pub device_id: String,
        pub generation_id: Option<String>,
        pub etag: Option<String>,
        pub connection_state: Option<String>,
        pub status: Option<DeviceStatus>,
        pub status_reason: Option<String>,
        pub connection_state_updated_time: Option<String>,
        pub status_updated_time: Option<String>,
        pub last_activity_time: Option<String>,
        pub cloud_to_device_message_count: Option<i64>,
        pub authentication: Option<AuthenticationMechanism>,
        pub capabilities: Option<DeviceCapabilities>,
        pub device_scope: Option<String>,
        pub parent_scopes: Option<Vec<String>>,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    #[default]
    Enabled,
    Disabled,
}

json_object! {
    pub struct AuthenticationMechanism {
        pub symmetric_key: Option<SymmetricKey>,
        pub x509_thumbprint: Option<X509Thumbprint>,
        #[serde(rename = "type", default)]
        pub kind: AuthenticationType,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthenticationType {
    #[default]
    Sas,
    SelfSigned,
    CertificateAuthority,
    None,
}

/// A device's keys: the same two members as an enrollment's.
pub type SymmetricKey = SymmetricKeyAttestation;

json_object! {
    #[derive(Eq)]
    pub struct X509Thumbprint {
        pub primary_thumbprint: Option<String>,
        pub secondary_thumbprint: Option<String>,
    }
}

json_object! {
    pub struct Twin {
        #[serde(default)]
        pub device_id: String,
        pub etag: Option<String>,
        pub device_etag: Option<String>,
        pub status: Option<DeviceStatus>,
        pub version: Option<i64>,
        pub tags: Option<TwinCollection>,
        pub properties: Option<TwinProperties>,
        pub capabilities: Option<DeviceCapabilities>,
        pub authentication_type: Option<AuthenticationType>,
        pub connection_state: Option<String>,
    }
}

json_object! {
    pub struct TwinProperties {
        pub desired: Option<TwinCollection>,
        pub reported: Option<TwinCollection>,
    }
}

json_object! {
    /// One item of a bulk registry operation (`POST /devices`), at most 100 per call.
    pub struct ExportImportDevice {
        #[serde(default)]
        pub id: String,
        #[serde(rename = "eTag")]
        pub e_tag: Option<String>,
        pub import_mode: Option<ImportMode>,
        pub status: Option<DeviceStatus>,
        pub status_reason: Option<String>,
        pub authentication: Option<AuthenticationMechanism>,
        #[serde(rename = "twinETag")]
        pub twin_e_tag: Option<String>,
        pub tags: Option<TwinCollection>,
        pub properties: Option<TwinProperties>,
        pub capabilities: Option<DeviceCapabilities>,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImportMode {
    #[default]
    Create,
    Update,
    #[serde(rename = "updateIfMatchETag")]
    UpdateIfMatchETag,
    Delete,
    #[serde(rename = "deleteIfMatchETag")]
    DeleteIfMatchETag,
    /// Overwrites the twin's tags and properties with the ones given,
    /// reported properties included.
    UpdateTwin,
    #[serde(rename = "updateTwinIfMatchETag")]
    UpdateTwinIfMatchETag,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkRegistryOperationResult {
    pub is_successful: bool,
    #[serde(default)]
    pub errors: Vec<DeviceRegistryOperationError>,
    #[serde(default)]
    pub warnings: Vec<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationError {
    pub device_id: String,
    pub error_code: String,
    pub error_status: String,
}

/// The error body IoT Hub returns: `{"Message": "ErrorCode:<Name>;<text>", "ExceptionMessage": "…"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HubErrorBody {
    #[serde(rename = "Message", default)]
    pub message: String,
    #[serde(rename = "ExceptionMessage", default)]
    pub exception_message: String,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
