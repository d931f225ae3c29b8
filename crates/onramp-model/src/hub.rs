//! IoT Hub service REST subset (api-version 2021-04-12): device identities and
//! twins. Onramp's hub adapter writes these to linked hubs and the companion
//! hub serves them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::enrollment::{DeviceCapabilities, Secret, TwinCollection};

/// The api-version the hub adapter sends and the companion hub advertises.
pub const HUB_API_VERSION: &str = "2021-04-12";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    #[serde(default)]
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state_updated_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_updated_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    #[default]
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationMechanism {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    #[serde(rename = "type", default)]
    pub kind: AuthenticationType,
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<Secret>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_thumbprint: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    #[serde(default)]
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TwinCollection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_type: Option<AuthenticationType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<TwinCollection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<TwinCollection>,
}

/// One item of a bulk registry operation (`POST /devices`), at most 100 per call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImportDevice {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "eTag", default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_mode: Option<ImportMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    #[serde(rename = "twinETag", default, skip_serializing_if = "Option::is_none")]
    pub twin_e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TwinCollection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
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
