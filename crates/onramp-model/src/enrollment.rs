//! Individual enrollments, enrollment groups and what they embed, as the DPS
//! service API (api-versions 2018-04-01 to 2026-11-01) writes them.
//!
//! Every field a client may omit is an `Option` so that the service can tell
//! "absent" from "default" and answer with a precise validation message.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{ETag, UtcTime, registration::DeviceRegistrationState};

/// A free-form JSON object: twin tags, desired properties, device information.
pub type TwinCollection = Map<String, Value>;

/// A secret string (a symmetric key). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Defines one of the two enrollment resources: its own fields first, then
/// the settings both share, in the order Azure writes them.
macro_rules! enrollment_resource {
    ($(#[$meta:meta])* $name:ident { $($own:tt)* }) => { json_object! {
        $(#[$meta])*
        pub struct $name {
            $($own)*
            pub attestation: Option<AttestationMechanism>,
            pub capabilities: Option<DeviceCapabilities>,
            pub iot_hub_host_name: Option<String>,
            pub initial_twin: Option<InitialTwin>,
            pub etag: Option<ETag>,
            pub provisioning_status: Option<ProvisioningStatus>,
            pub reprovision_policy: Option<ReprovisionPolicy>,
            pub created_date_time_utc: Option<UtcTime>,
            pub last_updated_date_time_utc: Option<UtcTime>,
            pub allocation_policy: Option<AllocationPolicy>,
            pub iot_hubs: Option<Vec<String>>,
            pub custom_allocation_definition: Option<CustomAllocationDefinition>,
            #[serde(flatten)]
            pub extensions: VersionExtensions,
        }
    } };
}

enrollment_resource!(
    /// One device's enrollment.
    IndividualEnrollment {
        /// Required by the spec; a PUT may leave it out and let the path supply it.
        #[serde(default)]
        pub registration_id: String,
        pub device_id: Option<String>,
        /// Read-only: the registration record of this enrollment's device.
        pub registration_state: Option<DeviceRegistrationState>,
        pub optional_device_information: Option<TwinCollection>,
    }
);

enrollment_resource!(
    /// The enrollment of every device whose credential derives from one key
    /// or chains to one certificate.
    EnrollmentGroup {
        #[serde(default)]
        pub enrollment_group_id: String,
    }
);

json_object! {
    /// Fields that newer (or preview) api-versions added. Onramp stores and echoes
    /// them so that a client of any version reads back what it wrote.
    pub struct VersionExtensions {
        pub credential_policy_name: Option<String>,
        pub namespace_name: Option<String>,
        pub certificate_authority_name: Option<String>,
        pub certificate_policy_name: Option<String>,
        pub client_certificate_issuance_policy: Option<Value>,
    }
}

json_object! {
    pub struct AttestationMechanism {
        #[serde(rename = "type")]
        pub kind: AttestationType,
        pub tpm: Option<TpmAttestation>,
        pub x509: Option<X509Attestation>,
        pub symmetric_key: Option<SymmetricKeyAttestation>,
    }
}

macro_rules! case_insensitive_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses any capitalisation (clients and docs disagree on it).
            pub fn parse(text: &str) -> Option<Self> {
                $(if text.eq_ignore_ascii_case($text) { return Some($name::$variant); })+
                None
            }

            fn expected() -> String {
                [$($text),+].join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $name::parse(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "'{text}' is not one of: {}", $name::expected()
                    ))
                })
            }
        }
    };
}
pub(crate) use case_insensitive_enum;

case_insensitive_enum!(
    /// How a device proves its identity.
    AttestationType {
        None => "none",
        Tpm => "tpm",
        X509 => "x509",
        SymmetricKey => "symmetricKey",
    }
);

// The macro that generates the enum has no place for `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for AttestationType {
    fn default() -> Self {
        AttestationType::None
    }
}

case_insensitive_enum!(
    ProvisioningStatus {
        Enabled => "enabled",
        Disabled => "disabled",
    }
);

case_insensitive_enum!(
    /// How a hub is chosen for a device.
    AllocationPolicy {
        Hashed => "hashed",
        GeoLatency => "geoLatency",
        Static => "static",
        Custom => "custom",
    }
);

json_object! {
    #[derive(Eq)]
    pub struct TpmAttestation {
        /// An individual enrollment's (and a device's) endorsement key; a TPM
        /// enrollment group has none.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub endorsement_key: String,
        pub storage_root_key: Option<String>,
        /// Onramp extension (Azure has no TPM groups), enrollment groups only:
        /// the manufacturer CA certificates (PEM or base64 DER) a device's
        /// endorsement key certificate must be issued by.
        pub manufacturer_certificates: Option<Vec<String>>,
        /// Onramp extension, enrollment groups only: when set (with
        /// `allowEndorsementKeyHashes`), only these registration IDs are admitted.
        pub allow_registration_ids: Option<Vec<String>>,
        /// Onramp extension, enrollment groups only: endorsement keys admitted,
        /// as hex SHA-256 of the marshaled `TPM2B_PUBLIC` (`sha256sum` of what
        /// `tpm2_readpublic -f tss` writes). Such a device needs no certificate.
        pub allow_endorsement_key_hashes: Option<Vec<String>>,
        /// Onramp extension, register requests only: the device's endorsement
        /// key certificate (PEM or base64 DER), checked against a TPM group.
        pub endorsement_key_certificate: Option<String>,
    }
}

json_object! {
    #[derive(Eq)]
    pub struct SymmetricKeyAttestation {
        pub primary_key: Option<Secret>,
        pub secondary_key: Option<Secret>,
    }
}

json_object! {
    pub struct X509Attestation {
        pub client_certificates: Option<X509Certificates>,
        pub signing_certificates: Option<X509Certificates>,
        pub ca_references: Option<X509CaReferences>,
    }
}

json_object! {
    pub struct X509CertificateWithInfo {
        /// PEM text or bare base64 DER, as the client sent it.
        pub certificate: Option<String>,
        /// Computed by the service from `certificate`.
        pub info: Option<X509CertificateInfo>,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateInfo {
    pub subject_name: String,
    pub sha1_thumbprint: String,
    pub sha256_thumbprint: String,
    pub issuer_name: String,
    pub not_before_utc: UtcTime,
    pub not_after_utc: UtcTime,
    pub serial_number: String,
    pub version: i32,
}

json_object! {
    /// Azure's `{"primary": …, "secondary": …}`: a credential and the one
    /// that replaces it during a rollover.
    #[derive(Eq)]
    pub struct PrimaryAndSecondary<T> {
        pub primary: Option<T>,
        pub secondary: Option<T>,
    }
}

pub type X509Certificates = PrimaryAndSecondary<X509CertificateWithInfo>;
pub type X509CaReferences = PrimaryAndSecondary<String>;

json_object! {
    pub struct InitialTwin {
        pub tags: Option<TwinCollection>,
        pub properties: Option<InitialTwinProperties>,
    }
}

impl InitialTwin {
    pub fn desired(&self) -> Option<&TwinCollection> {
        self.properties.as_ref().and_then(|p| p.desired.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.tags.as_ref().is_none_or(|t| t.is_empty())
            && self.desired().is_none_or(|d| d.is_empty())
    }
}

json_object! {
    pub struct InitialTwinProperties {
        pub desired: Option<TwinCollection>,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    #[serde(default)]
    pub iot_edge: bool,
}

/// What happens when a device registers again. Both flags default to `true`
/// ("re-provision and migrate data").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocationDefinition {
    #[serde(default)]
    pub webhook_url: String,
    #[serde(default)]
    pub api_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_round_trips_with_every_attestation() {
        let text = r#"{
            "registrationId": "dev-1",
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "MIIB"}}}},
            "initialTwin": {"tags": {"t": 1}, "properties": {"desired": {"d": {"x": [1, 2]}}}},
            "capabilities": {"iotEdge": true},
            "allocationPolicy": "GeoLatency",
            "provisioningStatus": "Disabled",
            "reprovisionPolicy": {"updateHubAssignment": false},
            "iotHubs": ["h1"],
            "namespaceName": "ns-1"
        }"#;
        let e: IndividualEnrollment = serde_json::from_str(text).unwrap();
        assert_eq!(e.allocation_policy, Some(AllocationPolicy::GeoLatency));
        assert_eq!(e.provisioning_status, Some(ProvisioningStatus::Disabled));
        assert_eq!(
            e.reprovision_policy,
            Some(ReprovisionPolicy {
                update_hub_assignment: false,
                migrate_device_data: true
            })
        );
        assert_eq!(e.extensions.namespace_name.as_deref(), Some("ns-1"));
        let back = serde_json::to_value(&e).unwrap();
        assert_eq!(back["allocationPolicy"], "geoLatency");
        assert_eq!(back["attestation"]["type"], "x509");
        assert_eq!(back["initialTwin"]["properties"]["desired"]["d"]["x"][1], 2);
        assert_eq!(back["namespaceName"], "ns-1");
        let again: IndividualEnrollment = serde_json::from_value(back).unwrap();
        assert_eq!(again, e);

        let tpm: AttestationMechanism = serde_json::from_str(
            r#"{"type":"tpm","tpm":{"endorsementKey":"AToAAQ==","storageRootKey":"ARgAAQ=="}}"#,
        )
        .unwrap();
        assert_eq!(tpm.kind, AttestationType::Tpm);
        assert_eq!(
            tpm.tpm.unwrap().storage_root_key.as_deref(),
            Some("ARgAAQ==")
        );
    }

    #[test]
    fn unknown_enum_values_are_named_in_the_error() {
        let err = serde_json::from_str::<AttestationMechanism>(r#"{"type":"magic"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("'magic' is not one of: none, tpm, x509, symmetricKey")
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }
}
