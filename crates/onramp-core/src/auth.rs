//! Service API authentication: a SharedAccessSignature signed with the key of
//! one of a provisioning service's shared access policies.
//!
//! The key that signs the token identifies the tenant: policies of different
//! services may share a name (every service has `provisioningserviceowner`)
//! but never a key.

use onramp_model::ErrorCode;

use crate::ports::Store;
use crate::tenant::AccessRights;
use crate::{ProvisioningError, sas};

/// Who is calling: the service whose policy signed the token, and its rights.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceCaller {
    pub service: String,
    pub policy: String,
    pub rights: AccessRights,
}

impl ServiceCaller {
    /// Refuses the call unless the policy holds `right`.
    pub fn require(&self, right: AccessRights, action: &str) -> Result<(), ProvisioningError> {
        if self.rights.contains(right) {
            return Ok(());
        }
        Err(ProvisioningError::new(
            ErrorCode::InsufficientRights,
            format!(
                "shared access policy '{}' has rights [{}] but {action} needs {right}; \
                 use a policy with that right (e.g. provisioningserviceowner)",
                self.policy, self.rights
            ),
        ))
    }
}

/// Checks the `Authorization` value of a service call.
///
/// `host_names` are the names this service answers to; the token's `sr` must
/// start with one of them (port and case ignored; an empty list skips the
/// check), and a path after the host must cover `request_path` (see
/// [`sas::SasToken::covers_path`]).
pub async fn authenticate(
    store: &dyn Store,
    authorization: Option<&str>,
    host_names: &[String],
    request_path: &str,
    now_unix: i64,
    skew_seconds: i64,
) -> Result<ServiceCaller, ProvisioningError> {
    let Some(header) = authorization.map(str::trim).filter(|h| !h.is_empty()) else {
        return Err(ProvisioningError::new(
            ErrorCode::MissingAuthorization,
            "the request has no Authorization header; send a SharedAccessSignature made from a \
             shared access policy's key (the connection string printed by onramp service show)",
        ));
    };
    let token = sas::parse(header).map_err(|e| ProvisioningError::unauthorized(e.to_string()))?;
    let Some(policy_name) = token.key_name.clone() else {
        return Err(ProvisioningError::unauthorized(
            "the token names no shared access policy (skn=); sign it with a policy's key and name the policy",
        ));
    };
    if !host_names.is_empty() {
        let resource_host = token.resource_host();
        if !host_names
            .iter()
            .any(|h| onramp_model::authority::same_host(h, resource_host))
        {
            return Err(ProvisioningError::unauthorized(format!(
                "the token is for '{}', but this service is {}; sign the token for the HostName of \
                 the connection string",
                token.resource,
                host_names.join(" or ")
            )));
        }
    }
    if !token.covers_path(request_path) {
        return Err(ProvisioningError::unauthorized(format!(
            "the token is for '{}', which does not cover {request_path}; sign the token for \
             the HostName of the connection string alone, or for a path this request lies under",
            token.resource
        )));
    }
    token
        .check_expiry(now_unix, skew_seconds)
        .map_err(|e| ProvisioningError::unauthorized(e.to_string()))?;
    for (service, policy) in store.policies_named(&policy_name).await? {
        if token.is_signed_by(policy.primary_key.expose())
            || token.is_signed_by(policy.secondary_key.expose())
        {
            return Ok(ServiceCaller {
                service,
                policy: policy.name,
                rights: policy.rights,
            });
        }
    }
    Err(ProvisioningError::unauthorized(format!(
        "no shared access policy named '{policy_name}' has a key that signs this token; \
         check the SharedAccessKey of the connection string"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MemoryStore, conformance};

    const KEY: &str = "b3duZXI=";

    #[tokio::test]
    async fn a_token_covers_only_the_paths_under_its_resource() {
        let store = MemoryStore::new();
        store
            .create_service(
                &conformance::service("default", 0x1234),
                &[conformance::owner(KEY)],
            )
            .await
            .unwrap();
        let hosts = vec!["dps.example.net".to_owned()];
        let call = |resource: &str, path: &'static str| {
            let token = sas::sign(
                resource,
                KEY,
                2_000_000_000,
                Some("provisioningserviceowner"),
            )
            .unwrap();
            let (store, hosts) = (&store, &hosts);
            async move { authenticate(store, Some(&token), hosts, path, 1_900_000_000, 300).await }
        };
        for (resource, path) in [
            ("dps.example.net", "/enrollments/dev-1"),
            ("DPS.EXAMPLE.NET:443", "/registrations/dev-1"),
            ("dps.example.net/enrollments", "/enrollments/dev-1"),
            ("dps.example.net/enrollments/dev-1", "/enrollments/dev-1"),
        ] {
            let caller = call(resource, path).await;
            assert!(caller.is_ok(), "{resource} on {path}: {caller:?}");
        }
        for (resource, path) in [
            ("dps.example.net/enrollmentGroups", "/enrollments/dev-1"),
            ("dps.example.net/devices", "/enrollments/dev-1"),
            ("dps.example.net/enrollments", "/enrollmentsX/dev-1"),
            ("dps.example.net/enrollments", "/enrollmentGroups/g-1"),
            ("other.example.net", "/enrollments/dev-1"),
        ] {
            let e = call(resource, path).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized, "{resource} on {path}");
            assert!(e.message.contains(resource), "{}", e.message);
        }
    }
}
