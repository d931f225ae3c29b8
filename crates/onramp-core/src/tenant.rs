//! Provisioning services (tenants), their access policies and linked hubs.
//!
//! One Onramp deployment hosts many provisioning services. Each has its own
//! ID scope (what devices name), policies (what operators hold) and linked
//! hubs; nothing of one is visible through another.

use onramp_model::{AllocationPolicy, CustomAllocationDefinition, IdScope, Secret, UtcTime};
use serde::{Deserialize, Serialize};

use crate::connection_string::{ConnectionString, ConnectionStringError};

/// Why a right, or a hub link, breaks the rules. Names and regions are
/// shown escaped, so control characters cannot reach a terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error(
        "'{word}' is not a right; use any of ServiceConfig, EnrollmentRead, EnrollmentWrite, \
         DeviceConnect, RegistrationStatusRead, RegistrationStatusWrite"
    )]
    UnknownRight { word: String },
    #[error(transparent)]
    ConnectionString(#[from] ConnectionStringError),
    #[error(
        "the hub connection string has no SharedAccessKey; Onramp needs a policy key with \
         registry write rights (e.g. iothubowner)"
    )]
    NoSharedAccessKey,
    #[error(
        "the hub name (the connection string's HostName) '{shown}' holds spaces, slashes or \
         control characters; use the hub's host name, e.g. my-hub.azure-devices.net"
    )]
    HubNameCharacters { shown: String },
    #[error(
        "the hub name (the connection string's HostName) '{shown}' has no host; use the hub's \
         host name, e.g. my-hub.azure-devices.net"
    )]
    HubNameWithoutHost { shown: String },
    #[error(transparent)]
    HubAuthority(#[from] onramp_model::authority::BadAuthority),
    #[error("the hub's region is empty; give its region, e.g. westeurope")]
    RegionEmpty,
    #[error(
        "region '{shown}' is not a region name: use at most {max} printable characters, \
         e.g. westeurope",
        max = LinkedHub::MAX_REGION_LEN
    )]
    RegionName { shown: String },
    #[error("allocation weight {weight} is out of range; use 1 to {max}", max = LinkedHub::MAX_WEIGHT)]
    WeightOutOfRange { weight: u32 },
}

/// The policy every new provisioning service gets, with all rights.
pub const OWNER_POLICY: &str = "provisioningserviceowner";

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningService {
    /// Unique name inside the deployment, e.g. `default`.
    pub name: String,
    pub id_scope: IdScope,
    /// Policy for enrollments that name none.
    pub allocation_policy: AllocationPolicy,
    /// The webhook for `custom` allocation when an enrollment names none.
    pub custom_allocation: Option<CustomAllocationDefinition>,
    pub created: UtcTime,
}

crate::named_rights!(
    /// Rights a shared access policy grants, as Azure names them.
    #[derive(Serialize, Deserialize)]
    #[serde(into = "String", try_from = "String")]
    pub struct AccessRights {
        SERVICE_CONFIG = 1 => "ServiceConfig",
        ENROLLMENT_READ = 2 => "EnrollmentRead",
        ENROLLMENT_WRITE = 4 => "EnrollmentWrite",
        DEVICE_CONNECT = 8 => "DeviceConnect",
        REGISTRATION_STATUS_READ = 16 => "RegistrationStatusRead",
        REGISTRATION_STATUS_WRITE = 32 => "RegistrationStatusWrite",
    }
);

impl AccessRights {
    /// Parses Azure's form, `"EnrollmentRead, EnrollmentWrite"`.
    pub fn parse(text: &str) -> Result<Self, TenantError> {
        Self::parse_names(text).map_err(|word| TenantError::UnknownRight {
            word: word.to_owned(),
        })
    }
}

impl From<AccessRights> for String {
    fn from(r: AccessRights) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for AccessRights {
    type Error = TenantError;
    fn try_from(s: String) -> Result<Self, TenantError> {
        Self::parse(&s)
    }
}

/// A shared access policy: a name, two keys and the rights they carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedAccessPolicy {
    pub name: String,
    pub primary_key: Secret,
    pub secondary_key: Secret,
    pub rights: AccessRights,
}

impl SharedAccessPolicy {
    /// A connection string for this policy, as printed to operators.
    pub fn connection_string(&self, host_name: &str) -> String {
        format!(
            "HostName={host_name};SharedAccessKeyName={};SharedAccessKey={}",
            self.name,
            self.primary_key.expose()
        )
    }
}

/// A CA certificate uploaded to a provisioning service. Enrollment groups
/// may refer to it by name (`caReferences`) once its owner has proven
/// possession of its private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificate {
    pub name: String,
    /// The certificate, DER.
    #[serde(with = "base64_bytes")]
    pub der: Vec<u8>,
    pub subject: String,
    /// SHA-1 thumbprint, upper-case hex.
    pub thumbprint: String,
    pub sha256_thumbprint: String,
    pub not_after: UtcTime,
    pub is_verified: bool,
    /// The code a verification certificate must carry as its CN.
    pub verification_code: Option<String>,
    pub etag: Option<onramp_model::ETag>,
    pub created: UtcTime,
    pub updated: UtcTime,
}

mod base64_bytes {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// An IoT hub linked to a provisioning service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedHub {
    /// The hub's host name (and port, when not 443): what devices are told.
    pub name: String,
    /// Connection string with registry-write rights on the hub.
    pub connection_string: Secret,
    /// Region of the hub, e.g. `westeurope`.
    pub location: String,
    /// 1 to 1000; a hub with weight 2 takes twice the devices of weight 1.
    pub allocation_weight: u32,
    /// When false the hub takes no new devices unless an enrollment names it statically.
    pub apply_allocation_policy: bool,
    /// The companion hub started inside `onramp serve`.
    #[serde(default)]
    pub embedded: bool,
    /// An Onramp companion hub (not Azure IoT Hub): Onramp hands it the CA
    /// certificates its X.509 group devices chain to, as an operator would
    /// upload them to an Azure hub.
    #[serde(default)]
    pub companion: bool,
}

impl LinkedHub {
    pub const MAX_WEIGHT: u32 = 1000;
    /// The longest region name (Azure's are under 25 characters).
    pub const MAX_REGION_LEN: usize = 64;

    /// Builds a link from a hub connection string; the name is its `HostName`.
    pub fn from_connection_string(
        connection_string: &str,
        location: &str,
        allocation_weight: u32,
        apply_allocation_policy: bool,
    ) -> Result<Self, TenantError> {
        let parsed = ConnectionString::parse(connection_string)?;
        if parsed.shared_access_key.is_none() {
            return Err(TenantError::NoSharedAccessKey);
        }
        let link = Self {
            name: parsed.host_name.clone(),
            connection_string: Secret::new(connection_string.trim()),
            location: location.trim().to_owned(),
            allocation_weight,
            apply_allocation_policy,
            embedded: false,
            companion: false,
        };
        link.check()?;
        Ok(link)
    }

    /// The rules every stored link meets: its name is a `host[:port]`, its
    /// region a short printable name, its weight within range.
    pub fn check(&self) -> Result<(), TenantError> {
        check_hub_name(&self.name)?;
        check_region(&self.location)?;
        check_weight(self.allocation_weight)
    }

    /// Case-insensitive host name comparison.
    pub fn is_named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.trim())
    }
}

fn check_hub_name(name: &str) -> Result<(), TenantError> {
    let shown = || name.escape_debug().to_string();
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(TenantError::HubNameCharacters { shown: shown() });
    }
    match onramp_model::authority::split(name)? {
        (host, _) if !host.is_empty() => Ok(()),
        _ => Err(TenantError::HubNameWithoutHost { shown: shown() }),
    }
}

fn check_region(region: &str) -> Result<(), TenantError> {
    if region.trim().is_empty() {
        return Err(TenantError::RegionEmpty);
    }
    if region.chars().count() > LinkedHub::MAX_REGION_LEN || region.chars().any(char::is_control) {
        return Err(TenantError::RegionName {
            shown: region.escape_debug().to_string(),
        });
    }
    Ok(())
}

fn check_weight(weight: u32) -> Result<(), TenantError> {
    if !(1..=LinkedHub::MAX_WEIGHT).contains(&weight) {
        return Err(TenantError::WeightOutOfRange { weight });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_round_trip_in_azure_spelling() {
        let r = AccessRights::parse("enrollmentread, EnrollmentWrite").unwrap();
        assert!(r.contains(AccessRights::ENROLLMENT_READ));
        assert!(!r.contains(AccessRights::SERVICE_CONFIG));
        assert_eq!(r.to_string(), "EnrollmentRead, EnrollmentWrite");
        assert_eq!(
            AccessRights::parse(&AccessRights::ALL.to_string()).unwrap(),
            AccessRights::ALL
        );
        assert!(
            AccessRights::parse("Root")
                .unwrap_err()
                .to_string()
                .contains("'Root' is not a right")
        );
    }

    #[test]
    fn linked_hub_from_connection_string() {
        let hub = LinkedHub::from_connection_string(
            "HostName=h1.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
            "westeurope",
            2,
            true,
        )
        .unwrap();
        assert_eq!(hub.name, "h1.example.net");
        assert!(hub.is_named("H1.Example.Net"));
        assert!(
            LinkedHub::from_connection_string(
                "HostName=h;SharedAccessKeyName=x;SharedAccessKey=a2V5",
                "x",
                0,
                true
            )
            .is_err()
        );
        assert!(LinkedHub::from_connection_string("HostName=h", "x", 1, true).is_err());
    }

    #[test]
    fn linked_hub_names_and_regions_are_checked() {
        let link = |cs: &str, region: &str| {
            LinkedHub::from_connection_string(
                &format!("HostName={cs};SharedAccessKeyName=x;SharedAccessKey=a2V5"),
                region,
                1,
                true,
            )
        };
        assert!(link("h1.example.net:8443", "westeurope").is_ok());
        assert!(link("[::1]:8443", "West Europe").is_ok());
        for bad in ["h1 example", "h1/x", "h1:99999", ":443", "h1\u{1b}[31m"] {
            let err = link(bad, "westeurope").unwrap_err().to_string();
            assert!(err.contains("host"), "{bad}: {err}");
        }
        for bad in ["", "  ", "west\neurope", &"x".repeat(65)] {
            let err = link("h1", bad).unwrap_err().to_string();
            assert!(err.contains("region"), "{bad:?}: {err}");
        }
        assert_eq!(link("h1", " lab ").unwrap().location, "lab");
    }
}
