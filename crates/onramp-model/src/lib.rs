//! Wire types of Onramp: the exact JSON that Azure IoT Hub Device Provisioning
//! Service clients send and expect, and the IoT Hub REST subset Onramp speaks to
//! its linked hubs.
//!
//! Layout:
//! - [`time`]: timestamps in Azure's form (`2022-08-31T22:02:50.5163352Z`).
//! - [`authority`]: `host[:port]`, with IPv6 literals parsed one way everywhere.
//! - [`ids`]: identifiers with rules (registration IDs, ID scopes, ETags).
//! - [`enrollment`]: individual enrollments, enrollment groups and everything
//!   they embed (attestation mechanisms, initial twin, policies).
//! - [`registration`]: the device API (register request, operation status) and
//!   the registration state the service API exposes.
//! - [`query`]: query specifications and bulk operations of the service API.
//! - [`record`]: what individual enrollments and groups share, so that the
//!   service rules and the stores are written once for both.
//! - [`error`]: the Azure error body and Onramp's catalogue of error codes.
//! - [`allocation`]: the custom-allocation webhook contract.
//! - [`certificate`]: CA certificates and their proof of possession.
//! - [`hub`]: IoT Hub device identities and twins.
//!
//! Nothing here does I/O or holds business rules; it is data with `serde`.
#![forbid(unsafe_code)]

/// A JSON object of the Azure APIs: camelCase member names, members that
/// are `None` left out when written, and `Default` for a body that leaves
/// everything out. Docs and further derives (`Eq`) go before `struct`.
macro_rules! json_object {
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident $(<$($param:ident),+>)?
        { $($body:tt)* }
    ) => {
        #[serde_with::skip_serializing_none]
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        $(#[$meta])*
        $vis struct $name $(<$($param),+>)? { $($body)* }
    };
}

pub mod allocation;
pub mod authority;
pub mod certificate;
pub mod enrollment;
pub mod error;
pub mod hub;
pub mod ids;
pub mod json;
pub mod query;
pub mod record;
pub mod registration;
pub mod time;

pub use enrollment::*;
pub use error::{ErrorBody, ErrorCode};
pub use ids::{ETag, IdError, IdKey, IdScope, RegistrationId};
pub use record::{Enrollment, EnrollmentKind, EnrollmentRecord, EnrollmentSettings};
pub use registration::*;
pub use time::UtcTime;
