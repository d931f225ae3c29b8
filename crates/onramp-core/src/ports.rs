//! The engine's ports: what it needs from storage, from IoT hubs and from the
//! clock. Implementations live in other crates (`onramp-store`, `onramp-hub`);
//! in-memory fakes for tests live in [`crate::testing`].

use async_trait::async_trait;
use onramp_model::{
    DeviceCapabilities, DeviceRegistrationState, ETag, EnrollmentGroup, IndividualEnrollment,
    InitialTwin, Secret, UtcTime,
};

use crate::tenant::{CaCertificate, LinkedHub, ProvisioningService, SharedAccessPolicy};

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Transient: the database is down, busy or full.
    #[error("{0}")]
    Unavailable(String),
    /// A record exists but cannot be decoded (or unsealed).
    #[error("{0}")]
    Corrupt(String),
}

/// The condition a write must meet, checked atomically by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Create or replace.
    None,
    /// Replace only if the stored ETag matches (an `If-Match` value; `*`
    /// matches any existing record). A missing record fails.
    IfMatch(String),
    /// Create only.
    IfNotExists,
}

impl Precondition {
    /// The record must exist: a missing If-Match becomes `*`.
    pub fn or_exists(self) -> Self {
        match self {
            Precondition::None => Precondition::IfMatch("*".into()),
            other => other,
        }
    }

    pub fn from_if_match(if_match: Option<&str>) -> Self {
        match if_match.map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) => Precondition::IfMatch(v.to_owned()),
            None => Precondition::None,
        }
    }
}

/// Applies a precondition to the current ETag of a record (None = absent).
pub fn check_precondition(
    current: Option<&ETag>,
    condition: &Precondition,
    what: &str,
) -> Result<(), StoreError> {
    match (condition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::IfNotExists, None) => Ok(()),
        (Precondition::IfNotExists, Some(_)) => {
            Err(StoreError::AlreadyExists(format!("{what} already exists")))
        }
        (Precondition::IfMatch(tag), Some(cur)) if cur.matches(tag) => Ok(()),
        (Precondition::IfMatch(tag), Some(cur)) => Err(StoreError::PreconditionFailed(format!(
            "If-Match {tag} does not match the current ETag {cur} of {what}; read it again and retry"
        ))),
        (Precondition::IfMatch(tag), None) => Err(StoreError::PreconditionFailed(format!(
            "If-Match {tag} was given but {what} does not exist; create it without If-Match"
        ))),
    }
}

/// SHA-256 thumbprints (upper-case hex) of an enrollment's X.509 client
/// certificates: what stores index for [`Store::enrollments_by_thumbprint`].
pub fn client_thumbprints(e: &IndividualEnrollment) -> Vec<String> {
    let Some(certs) = e
        .attestation
        .as_ref()
        .and_then(|a| a.x509.as_ref())
        .and_then(|x| x.client_certificates.as_ref())
    else {
        return Vec::new();
    };
    [certs.primary.as_ref(), certs.secondary.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c.info
                .as_ref()
                .map(|i| i.sha256_thumbprint.to_ascii_uppercase())
        })
        .collect()
}

/// A registration record and what the engine keeps beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationRecord {
    /// What the service API shows; `etag`, `createdDateTimeUtc` and
    /// `lastUpdatedDateTimeUtc` are set by the store on write.
    pub state: DeviceRegistrationState,
    /// The device-facing operation that produced this state.
    pub operation_id: String,
    /// The enrollment group the device registered through, if any.
    pub enrollment_group_id: Option<String>,
}

/// Storage of tenants, enrollments and registrations. Keys passed as `*_key`
/// are the lower-case forms of IDs (IDs compare case-insensitively).
///
/// Writes return the stored record with its new ETag and timestamps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Provisioning services and their access policies.
    async fn create_service(
        &self,
        service: &ProvisioningService,
        policies: &[SharedAccessPolicy],
    ) -> Result<(), StoreError>;
    async fn service(&self, name: &str) -> Result<Option<ProvisioningService>, StoreError>;
    async fn service_by_scope(
        &self,
        id_scope_key: &str,
    ) -> Result<Option<ProvisioningService>, StoreError>;
    async fn services(&self) -> Result<Vec<ProvisioningService>, StoreError>;
    async fn update_service(&self, service: &ProvisioningService) -> Result<(), StoreError>;
    /// Removes a service and everything it owns.
    async fn delete_service(&self, name: &str) -> Result<bool, StoreError>;
    async fn policies(&self, service: &str) -> Result<Vec<SharedAccessPolicy>, StoreError>;
    async fn put_policy(
        &self,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<(), StoreError>;
    /// Every policy with this name, across services: service authentication
    /// finds the tenant by the key that signs the token.
    async fn policies_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError>;

    // Linked hubs.
    async fn linked_hubs(&self, service: &str) -> Result<Vec<LinkedHub>, StoreError>;
    async fn put_linked_hub(&self, service: &str, hub: &LinkedHub) -> Result<(), StoreError>;
    async fn delete_linked_hub(&self, service: &str, name: &str) -> Result<bool, StoreError>;

    // Individual enrollments.
    async fn enrollment(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<IndividualEnrollment>, StoreError>;
    async fn put_enrollment(
        &self,
        service: &str,
        enrollment: &IndividualEnrollment,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<IndividualEnrollment, StoreError>;
    async fn delete_enrollment(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError>;
    /// Individual enrollments whose X.509 client certificate (primary or
    /// secondary) has this SHA-256 thumbprint (upper-case hex).
    async fn enrollments_by_thumbprint(
        &self,
        service: &str,
        sha256: &str,
    ) -> Result<Vec<IndividualEnrollment>, StoreError>;
    /// A page in key order, starting after `after_key`.
    async fn enrollments(
        &self,
        service: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>, StoreError>;

    // Enrollment groups.
    async fn enrollment_group(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<EnrollmentGroup>, StoreError>;
    async fn put_enrollment_group(
        &self,
        service: &str,
        group: &EnrollmentGroup,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<EnrollmentGroup, StoreError>;
    async fn delete_enrollment_group(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError>;
    async fn enrollment_groups(
        &self,
        service: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EnrollmentGroup>, StoreError>;

    // CA certificates (names compare case-insensitively).
    async fn ca_certificate(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<CaCertificate>, StoreError>;
    async fn ca_certificates(&self, service: &str) -> Result<Vec<CaCertificate>, StoreError>;
    /// Writes a CA certificate; the store sets its ETag.
    async fn put_ca_certificate(
        &self,
        service: &str,
        certificate: &CaCertificate,
        condition: Precondition,
    ) -> Result<CaCertificate, StoreError>;
    async fn delete_ca_certificate(
        &self,
        service: &str,
        name: &str,
        condition: Precondition,
    ) -> Result<(), StoreError>;

    // Registration records.
    async fn registration(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError>;
    async fn put_registration(
        &self,
        service: &str,
        record: &RegistrationRecord,
        now: UtcTime,
    ) -> Result<RegistrationRecord, StoreError>;
    async fn delete_registration(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError>;
    async fn registrations_of_group(
        &self,
        service: &str,
        group_key: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationRecord>, StoreError>;
}

/// The identity the engine asks a hub to hold for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceIdentity {
    pub device_id: String,
    pub auth: IdentityAuth,
    pub capabilities: DeviceCapabilities,
    pub twin: TwinSetup,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdentityAuth {
    SymmetricKey {
        primary: Secret,
        secondary: Secret,
    },
    /// X.509 device certificates known by thumbprint (individual enrollments).
    SelfSigned {
        primary_thumbprint: String,
        secondary_thumbprint: String,
    },
    /// Any certificate that chains to a CA the hub trusts (enrollment groups).
    /// `anchor` is the group's certificate (DER): hubs that learn their trust
    /// from the provisioning service use it; Azure IoT Hub ignores it.
    CertificateAuthority {
        anchor: Vec<u8>,
    },
}

/// What to do with the device's twin.
#[derive(Debug, Clone, PartialEq)]
pub enum TwinSetup {
    /// Set tags and desired properties to these (a first assignment).
    Initial(InitialTwin),
    /// Leave the twin as the hub has it (the device is back on the same hub).
    Keep,
}

/// Why a hub refused or failed a registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The hub rejected Onramp's credentials (401/403).
    #[error("{0}")]
    Unauthorized(String),
    /// The hub could not be reached or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// The hub answered with an error.
    #[error("{0}")]
    Rejected(String),
}

/// The IoT Hub registry, reached through each linked hub's connection string.
#[async_trait]
pub trait HubRegistry: Send + Sync + 'static {
    /// Creates or updates the device identity and applies the twin setup.
    async fn register_device(
        &self,
        hub: &LinkedHub,
        device: &DeviceIdentity,
    ) -> Result<(), HubError>;
}

/// The time, injected so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UtcTime;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UtcTime {
        UtcTime::now()
    }
}
