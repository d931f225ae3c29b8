//! Who may call the companion hub: IoT Hub shared access policies and their
//! rights (RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect).

use std::fmt;

use onramp_core::sas;
use onramp_model::Secret;

#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct HubRights(u8);

impl HubRights {
    pub const REGISTRY_READ: Self = Self(1);
    pub const REGISTRY_WRITE: Self = Self(2);
    pub const SERVICE_CONNECT: Self = Self(4);
    pub const DEVICE_CONNECT: Self = Self(8);
    pub const ALL: Self = Self(15);

    pub fn bits(&self) -> u8 {
        self.0
    }
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 15)
    }
    pub fn contains(&self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn intersects(&self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Display for HubRights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (Self::REGISTRY_READ, "RegistryRead"),
            (Self::REGISTRY_WRITE, "RegistryWrite"),
            (Self::SERVICE_CONNECT, "ServiceConnect"),
            (Self::DEVICE_CONNECT, "DeviceConnect"),
        ]
        .iter()
        .filter(|(r, _)| self.contains(*r))
        .map(|(_, n)| *n)
        .collect();
        f.write_str(&names.join(", "))
    }
}

impl fmt::Debug for HubRights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HubRights({self})")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HubPolicy {
    pub name: String,
    pub rights: HubRights,
    pub primary_key: Secret,
    pub secondary_key: Secret,
}

impl HubPolicy {
    /// `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` (the primary key).
    pub fn connection_string(&self, host_name: &str) -> String {
        format!(
            "HostName={host_name};SharedAccessKeyName={};SharedAccessKey={}",
            self.name,
            self.primary_key.expose()
        )
    }
}

/// Why a call was refused, as IoT Hub names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub message: String,
}

/// Checks a service token against the hub's policies; returns the rights of
/// the policy that signed it. A token for `{hub}/devices` covers only the
/// paths under `/devices` (see [`sas::SasToken::covers_path`]).
pub fn authorize(
    policies: &[HubPolicy],
    authorization: Option<&str>,
    host_name: &str,
    request_path: &str,
    now_unix: i64,
) -> Result<HubRights, Refusal> {
    let refuse = |m: String| Refusal { message: m };
    let header = authorization
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| refuse("the request has no Authorization header; sign a SharedAccessSignature with a hub policy key".into()))?;
    let token = sas::parse(header).map_err(|e| refuse(e.to_string()))?;
    if !token.resource_host().eq_ignore_ascii_case(host_name) {
        return Err(refuse(format!(
            "the token is for '{}', but this hub is '{host_name}'",
            token.resource
        )));
    }
    if !token.covers_path(request_path) {
        return Err(refuse(format!(
            "the token is for '{}', which does not cover {request_path}; sign it for \
             '{host_name}' alone or for a path this request lies under",
            token.resource
        )));
    }
    token
        .check_expiry(now_unix, 300)
        .map_err(|e| refuse(e.to_string()))?;
    let name = token
        .key_name
        .clone()
        .ok_or_else(|| refuse("the token names no policy (skn=)".into()))?;
    let policy = policies.iter().find(|p| p.name == name).ok_or_else(|| {
        refuse(format!(
            "this hub has no shared access policy named '{name}'"
        ))
    })?;
    if token.is_signed_by(policy.primary_key.expose())
        || token.is_signed_by(policy.secondary_key.expose())
    {
        Ok(policy.rights)
    } else {
        Err(refuse(format!(
            "the token's signature does not match policy '{name}'"
        )))
    }
}
