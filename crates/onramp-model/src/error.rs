//! The Azure error body and Onramp's catalogue of six-digit error codes.
//!
//! Azure's convention: the first three digits of `errorCode` are the HTTP
//! status. Codes Azure is known to use (401002, 404201, 400207–400209) keep
//! their meaning; the rest follow the same convention.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::UtcTime;

/// `ProvisioningServiceErrorDetails`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_code: u32,
    pub tracking_id: String,
    pub message: String,
    pub info: Option<Map<String, Value>>,
    pub timestamp_utc: UtcTime,
}

macro_rules! error_codes {
    ($($name:ident = $code:literal),+ $(,)?) => {
        /// Every error Onramp reports, with its Azure-style six-digit code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($name),+ }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),+];

            pub fn code(&self) -> u32 {
                match self { $(ErrorCode::$name => $code),+ }
            }

            /// The name sent in the `x-ms-error-code` header and in logs.
            pub fn name(&self) -> &'static str {
                match self { $(ErrorCode::$name => stringify!($name)),+ }
            }

            pub fn from_code(code: u32) -> Option<Self> {
                match code { $($code => Some(ErrorCode::$name),)+ _ => None }
            }
        }
    };
}

error_codes! {
    InvalidRequestBody = 400001,
    MissingApiVersion = 400002,
    InvalidApiVersion = 400003,
    InvalidArgument = 400004,
    RegistrationIdMismatch = 400005,
    UnsupportedAttestation = 400006,
    VerificationFailed = 400011,
    CustomAllocationFailed = 400207,
    IotHubNotAvailable = 400208,
    IotHubUnauthorized = 400209,
    AllocationPolicyUnavailable = 400210,
    CustomAllocationTimeout = 400211,
    CustomAllocationInvalidResponse = 400212,
    CustomAllocationUnknownHub = 400213,
    CustomAllocationUnreachable = 400214,
    MissingAuthorization = 401001,
    Unauthorized = 401002,
    EnrollmentDisabled = 401003,
    CertificateUntrusted = 401004,
    CertificateExpired = 401005,
    CertificateNameMismatch = 401006,
    InsufficientRights = 403001,
    ProvisioningServiceNotFound = 404001,
    RouteNotFound = 404002,
    EnrollmentNotFound = 404201,
    EnrollmentGroupNotFound = 404202,
    RegistrationNotFound = 404203,
    OperationNotFound = 404204,
    LinkedHubNotFound = 404205,
    CaCertificateNotFound = 404206,
    MethodNotAllowed = 405001,
    AlreadyExists = 409001,
    RegistrationSuperseded = 409002,
    RequestTimeout = 408001,
    PreconditionFailed = 412001,
    RequestTooLarge = 413001,
    UnsupportedMediaType = 415001,
    Throttled = 429001,
    InternalError = 500001,
    HubRegistrationFailed = 500002,
    StoreUnavailable = 503001,
    ShuttingDown = 503002,
    ServerBusy = 503003,
}

impl ErrorCode {
    /// The HTTP status: the first three digits of the code.
    pub fn http_status(&self) -> u16 {
        (self.code() / 1000) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_carry_their_status() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate {}", code.code());
            assert!((100_000..600_000).contains(&code.code()));
            assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
            let status = code.http_status();
            assert!((400..600).contains(&status), "{status}");
        }
        assert_eq!(ErrorCode::Unauthorized.code(), 401002);
        assert_eq!(ErrorCode::EnrollmentNotFound.http_status(), 404);
    }
}
