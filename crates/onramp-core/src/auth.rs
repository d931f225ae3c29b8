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

/// What a service call's authentication looks at.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRequest<'a> {
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a str>,
    /// The names this service answers to; the token's `sr` must start with
    /// one of them (port and case ignored; an empty list skips the check).
    pub host_names: &'a [String],
    /// The path as sent: a path after the token's host must cover it (see
    /// [`sas::SasToken::covers_path`]).
    pub request_path: &'a str,
    pub now_unix: i64,
    /// How far past its expiry a token is still taken.
    pub skew_seconds: i64,
}

/// Checks the `Authorization` value of a service call.
pub async fn authenticate(
    store: &dyn Store,
    request: &ServiceRequest<'_>,
) -> Result<ServiceCaller, ProvisioningError> {
    let ServiceRequest {
        authorization,
        host_names,
        request_path,
        now_unix,
        skew_seconds,
    } = *request;
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
