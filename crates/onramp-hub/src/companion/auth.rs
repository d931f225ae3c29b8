//! Who may call the companion hub: IoT Hub shared access policies and their
//! rights (RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect).

use onramp_core::sas;
use onramp_model::Secret;

onramp_core::named_rights!(
    /// Rights an IoT Hub shared access policy grants.
    pub struct HubRights {
        REGISTRY_READ = 1 => "RegistryRead",
        REGISTRY_WRITE = 2 => "RegistryWrite",
        SERVICE_CONNECT = 4 => "ServiceConnect",
        DEVICE_CONNECT = 8 => "DeviceConnect",
    }
);

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
