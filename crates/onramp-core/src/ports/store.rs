//! Storage: the records a provisioning service owns, the registration
//! records, and the conditions writes are checked against.

use async_trait::async_trait;
use onramp_model::{
    AttestationMechanism, DeviceRegistrationState, ETag, EnrollmentGroup, IdKey,
    IndividualEnrollment, Secret, UtcTime,
};
use serde::{Deserialize, Serialize};

mod records;

pub use records::*;

use super::DiagnosticsLog;
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
    /// A registration record was not written because the device's record
    /// comes from a registration that started later (on this node or
    /// another): the newest registration of a device wins.
    #[error("{0}")]
    Overtaken(String),
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
    /// For a write of a record just read: a missing If-Match becomes the
    /// ETag that was read, so a change made in between is not overwritten
    /// (and a record deleted in between is not brought back).
    pub fn or_as_read(self, read: Option<&ETag>) -> Self {
        match self {
            Precondition::None => {
                Precondition::IfMatch(read.map_or_else(|| "*".into(), |t| t.as_str().to_owned()))
            }
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

/// Whether a registration record of operation `new` must give way to the
/// stored record of operation `stored`: that one started later. Operation
/// IDs whose start time cannot be read never give way.
pub fn overtaken_by(new: &str, stored: &str) -> bool {
    use crate::engine::operation_started;
    match (operation_started(new), operation_started(stored)) {
        (Some(new), Some(stored)) => stored > new,
        _ => false,
    }
}

/// The refusal of a registration record whose device has a newer one.
pub fn overtaken(registration_id: &str) -> StoreError {
    StoreError::Overtaken(format!(
        "the record of '{registration_id}' comes from a registration that started later; \
         the newest registration of a device wins"
    ))
}

/// SHA-256 thumbprints (upper-case hex) of an enrollment's X.509 client
/// certificates: what stores index for [`Store::enrollments_by_thumbprint`].
pub fn client_thumbprints(attestation: Option<&AttestationMechanism>) -> Vec<String> {
    let Some(certs) = attestation
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
    /// Where the device lives: kept through failed re-registrations, so the
    /// next attempt knows which hub holds the device's data.
    pub placement: Option<Placement>,
}

/// The hub identity a device holds, and the hub of its first assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub hub: String,
    pub device_id: String,
    /// For the substatus `reprovisionedToInitialAssignment`.
    pub initial_hub: String,
}

impl RegistrationRecord {
    /// The placement, also for records written before it was stored apart:
    /// an assigned state says where the device is.
    pub fn current_placement(&self) -> Option<Placement> {
        self.placement.clone().or_else(|| {
            let s = &self.state;
            match (s.status, s.assigned_hub.as_ref(), s.device_id.as_ref()) {
                (onramp_model::RegistrationStatus::Assigned, Some(hub), Some(id)) => {
                    Some(Placement {
                        hub: hub.clone(),
                        device_id: id.clone(),
                        initial_hub: hub.clone(),
                    })
                }
                _ => None,
            }
        })
    }
}

/// The TPM challenge a device was sent and has not outlived: the key its
/// activation blob carried, which its tokens must be signed with. Kept in the
/// store (its key sealed at rest) so that the retry may reach another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmChallenge {
    pub registration_id: String,
    /// The HMAC key sent in the blob (base64).
    pub key: Secret,
    /// The device's keys as it sent them (base64 `TPM2B_PUBLIC`): the key
    /// of its hub identity travels to them in the final blob.
    pub endorsement_key: String,
    pub storage_root_key: String,
    pub expires: UtcTime,
    /// The register operation that spent it: a challenge vouches for one
    /// registration (and the polls of that one).
    pub spent_by: Option<String>,
    /// The TPM enrollment group that admitted the device (Onramp's
    /// extension), or `None` for a device with an individual enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// A registration still running on some node: what a poll through another
/// node answers `assigning` from. One per device (the newest registration's
/// overwrites an older one's); the registration's record removes it when it
/// is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningOperation {
    /// The registration ID as the device spelled it.
    pub registration_id: String,
    pub operation_id: String,
    /// The Onramp node running it.
    pub node: String,
    pub started: UtcTime,
    /// Until when its node vouches for it; the node renews the lease while
    /// the work goes on, so one past it ran on a node that died.
    pub lease_until: UtcTime,
}

impl RunningOperation {
    /// The device this operation registers, in `service`.
    pub fn device(&self, service: &str) -> DeviceAt {
        DeviceAt::new(service, &IdKey::of(&self.registration_id))
    }
}

/// A device of a service, by its registration key: what a running
/// operation is kept under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceAt {
    pub service: String,
    pub key: IdKey,
}

impl DeviceAt {
    pub fn new(service: &str, key: &IdKey) -> Self {
        Self {
            service: service.to_owned(),
            key: key.clone(),
        }
    }
}

/// What a registration reads its inputs by: the service's ID scope, the
/// device's registration key, and how many enrollment groups the first
/// page of groups holds at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationLookup {
    pub id_scope_key: IdKey,
    pub registration_key: IdKey,
    pub group_page: usize,
}

impl RegistrationLookup {
    pub fn new(id_scope_key: &IdKey, registration_key: &IdKey, group_page: usize) -> Self {
        Self {
            id_scope_key: id_scope_key.clone(),
            registration_key: registration_key.clone(),
            group_page,
        }
    }
}

/// One measurement of the round trip from an Onramp node to a linked hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubLatencySample {
    /// The Onramp node that measured.
    pub node: String,
    /// The hub's host name (and port).
    pub hub: String,
    /// Smoothed round trip; `None` when the hub did not answer.
    pub latency_ms: Option<f64>,
    /// Why the last probe failed, if it did.
    pub error: Option<String>,
    pub measured: UtcTime,
}

/// Everything a registration reads before it decides, asked for at once so
/// that a store can answer in one round trip (one read transaction, one
/// hand-off to its reader) instead of five.
#[derive(Debug, Clone)]
pub struct RegistrationInputs {
    pub service: ProvisioningService,
    /// The individual enrollment with the registration ID, if there is one.
    /// (Boxed, as the larger fields here: these travel through futures, which
    /// are moved whole.)
    pub enrollment: Option<Box<IndividualEnrollment>>,
    /// When there is no individual enrollment: the first page of enrollment
    /// groups (at most the `group_page` asked for); `None` when not read.
    pub first_groups: Option<Vec<EnrollmentGroup>>,
    /// The device's registration record, if it registered before.
    pub previous: Option<Box<RegistrationRecord>>,
    pub linked_hubs: Vec<LinkedHub>,
}

/// Storage of tenants, enrollments and registrations: what a store (SQLite,
/// PostgreSQL, the in-memory one of the tests) implements. The records a
/// service owns share four calls; [`StoreExt`] gives them types.
///
/// Writes return the stored record with its new ETag and timestamps.
#[async_trait]
pub trait Store: DiagnosticsLog + Send + Sync + 'static {
    // Provisioning services and their access policies.
    async fn create_service(
        &self,
        service: &ProvisioningService,
        policies: &[SharedAccessPolicy],
    ) -> Result<(), StoreError>;
    async fn service(&self, name: &str) -> Result<Option<ProvisioningService>, StoreError>;
    async fn service_by_scope(
        &self,
        id_scope_key: &IdKey,
    ) -> Result<Option<ProvisioningService>, StoreError>;
    async fn services(&self) -> Result<Vec<ProvisioningService>, StoreError>;
    async fn update_service(&self, service: &ProvisioningService) -> Result<(), StoreError>;
    /// Removes a service and everything it owns.
    async fn delete_service(&self, name: &str) -> Result<bool, StoreError>;
    /// Policy names are case-sensitive, as in Azure.
    async fn policies(&self, service: &str) -> Result<Vec<SharedAccessPolicy>, StoreError>;
    async fn put_policy(
        &self,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<(), StoreError>;
    /// Whether there was a policy of that name (case-sensitive) to delete.
    async fn delete_policy(&self, service: &str, name: &str) -> Result<bool, StoreError>;
    /// Every policy with this name, across services: service authentication
    /// finds the tenant by the key that signs the token.
    async fn policies_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError>;

    // The records a service owns, by kind and key.
    async fn record(&self, at: &RecordAt) -> Result<Option<Record>, StoreError>;
    /// Writes a record under [`Record::key`] if its condition holds.
    /// Enrollments, groups and CA certificates get a new ETag, and the first
    /// write's time as their creation time; registrations get both times
    /// from `now`.
    ///
    /// A registration written without a condition is the result of its
    /// operation: it is refused with [`StoreError::Overtaken`] when the
    /// stored record's operation started later (by the start times in the
    /// operation IDs, see `operation_started`), and it removes the device's
    /// [`RunningOperation`] if that is its operation, in the same commit.
    async fn put_record(&self, service: &str, put: PutRecord) -> Result<Record, StoreError>;
    /// A missing record is [`StoreError::NotFound`] with [`RecordKind::missing`].
    async fn delete_record(&self, at: &RecordAt, condition: Precondition)
    -> Result<(), StoreError>;
    async fn records(&self, kind: RecordKind, page: &Page) -> Result<Vec<Record>, StoreError>;

    // Registrations running on some node, one per device.
    /// Records (or renews) the device's running operation, replacing any
    /// other of the device.
    async fn put_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError>;
    /// The device's running operation, if one is recorded (even past its lease).
    async fn operation(&self, device: &DeviceAt) -> Result<Option<RunningOperation>, StoreError>;
    /// Removes `op` if it is still the device's running operation (a newer
    /// one's stays).
    async fn end_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError>;

    // Indexed reads.
    /// Individual enrollments whose X.509 client certificate (primary or
    /// secondary) has this SHA-256 thumbprint (upper-case hex).
    async fn enrollments_by_thumbprint(
        &self,
        service: &str,
        sha256: &str,
    ) -> Result<Vec<IndividualEnrollment>, StoreError>;
    async fn registrations_of_group(
        &self,
        group: &GroupPage,
    ) -> Result<Vec<RegistrationRecord>, StoreError>;
    /// How many registered devices live on a hub (by host name, any case).
    async fn count_devices_on_hub(&self, service: &str, hub: &str) -> Result<u64, StoreError>;

    /// The service with the lookup's ID scope and what a registration of its
    /// registration key reads from it; `None` when no service has the scope.
    /// The default asks the other methods one after the other; a store with a
    /// cheaper way (one read transaction) overrides it.
    async fn registration_inputs(
        &self,
        lookup: &RegistrationLookup,
    ) -> Result<Option<RegistrationInputs>, StoreError> {
        let Some(service) = self.service_by_scope(&lookup.id_scope_key).await? else {
            return Ok(None);
        };
        let (name, key) = (service.name.as_str(), &lookup.registration_key);
        let enrollment = self
            .get::<IndividualEnrollment>(name, key)
            .await?
            .map(Box::new);
        let first_groups = match enrollment {
            Some(_) => None,
            None => Some(
                self.list::<EnrollmentGroup>(name, None, lookup.group_page)
                    .await?,
            ),
        };
        let previous = self
            .get::<RegistrationRecord>(name, key)
            .await?
            .map(Box::new);
        let linked_hubs = self.linked_hubs(name).await?;
        Ok(Some(RegistrationInputs {
            service,
            enrollment,
            first_groups,
            previous,
            linked_hubs,
        }))
    }

    // Hub latencies measured by each node (shown by `onramp linked-hub list`).
    async fn record_hub_latency(&self, sample: &HubLatencySample) -> Result<(), StoreError>;
    async fn hub_latencies(&self) -> Result<Vec<HubLatencySample>, StoreError>;
}

/// Typed calls over [`Store`]'s records, for every store.
#[async_trait]
pub trait StoreExt: Store {
    async fn get<T: StoredRecord>(
        &self,
        service: &str,
        key: &IdKey,
    ) -> Result<Option<T>, StoreError> {
        let found = self
            .record(&RecordAt::new(service, T::RECORD_KIND, key))
            .await?;
        found.map(typed).transpose()
    }

    async fn put<T: StoredRecord>(
        &self,
        service: &str,
        record: T,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<T, StoreError> {
        let put = PutRecord {
            record: record.into_record(),
            condition,
            now,
        };
        typed(self.put_record(service, put).await?)
    }

    async fn delete<T: StoredRecord>(
        &self,
        service: &str,
        key: &IdKey,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let at = RecordAt::new(service, T::RECORD_KIND, key);
        self.delete_record(&at, condition).await
    }

    async fn list<T: StoredRecord>(
        &self,
        service: &str,
        after: Option<&IdKey>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let page = Page::new(service, after, limit);
        let page = self.records(T::RECORD_KIND, &page).await?;
        page.into_iter().map(typed).collect()
    }

    /// Every linked hub of a service, in name order.
    async fn linked_hubs(&self, service: &str) -> Result<Vec<LinkedHub>, StoreError> {
        self.list(service, None, usize::MAX).await
    }

    /// Every CA certificate of a service, in name order.
    async fn ca_certificates(&self, service: &str) -> Result<Vec<CaCertificate>, StoreError> {
        self.list(service, None, usize::MAX).await
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// A record of the kind asked for; any other kind is a store's defect.
fn typed<T: StoredRecord>(record: Record) -> Result<T, StoreError> {
    let kind = record.kind();
    T::from_record(record).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "the store returned a {kind:?} where a {:?} was asked for",
            T::RECORD_KIND
        ))
    })
}
