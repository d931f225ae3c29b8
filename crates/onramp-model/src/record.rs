//! What individual enrollments and enrollment groups have in common, so that
//! the service rules, the stores and the engine are written once for both.
//!
//! The two Azure resources differ in their ID field, in what they admit (one
//! device or many) and in a few members only an individual enrollment has
//! (`deviceId`, `registrationState`); everything that decides a registration
//! is the same, and [`EnrollmentSettings`] reads it the same way from both.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::query::{
    BulkEnrollmentGroupOperation, BulkEnrollmentGroupOperationError,
    BulkEnrollmentGroupOperationResult, BulkEnrollmentOperation, BulkEnrollmentOperationError,
    BulkEnrollmentOperationResult, BulkMode,
};
use crate::{
    AllocationPolicy, AttestationMechanism, CustomAllocationDefinition, DeviceCapabilities,
    DeviceRegistrationState, ETag, EnrollmentGroup, ErrorCode, IndividualEnrollment, InitialTwin,
    ProvisioningStatus, ReprovisionPolicy, UtcTime,
};

/// Which of the two enrollment resources a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnrollmentKind {
    Individual,
    Group,
}

impl EnrollmentKind {
    /// How messages name one: "individual enrollment", "enrollment group".
    pub fn noun(self) -> &'static str {
        match self {
            EnrollmentKind::Individual => "individual enrollment",
            EnrollmentKind::Group => "enrollment group",
        }
    }

    /// The short name operators use: "enrollment", "enrollment group".
    pub fn short_noun(self) -> &'static str {
        match self {
            EnrollmentKind::Individual => "enrollment",
            EnrollmentKind::Group => "enrollment group",
        }
    }

    /// The JSON member that holds the ID.
    pub fn id_field(self) -> &'static str {
        match self {
            EnrollmentKind::Individual => "registrationId",
            EnrollmentKind::Group => "enrollmentGroupId",
        }
    }

    /// The collection: the list member of a bulk operation and the `FROM` of
    /// a query.
    pub fn collection(self) -> &'static str {
        match self {
            EnrollmentKind::Individual => "enrollments",
            EnrollmentKind::Group => "enrollmentGroups",
        }
    }

    /// The `x-ms-item-type` of a query page.
    pub fn item_type(self) -> &'static str {
        match self {
            EnrollmentKind::Individual => "Enrollment",
            EnrollmentKind::Group => "EnrollmentGroup",
        }
    }

    pub fn not_found_code(self) -> ErrorCode {
        match self {
            EnrollmentKind::Individual => ErrorCode::EnrollmentNotFound,
            EnrollmentKind::Group => ErrorCode::EnrollmentGroupNotFound,
        }
    }

    /// The message of a read, write or delete of a record that is not there.
    pub fn not_found(self, id: &str) -> String {
        match self {
            EnrollmentKind::Individual => {
                format!("no individual enrollment has registration ID '{id}'")
            }
            EnrollmentKind::Group => format!("no enrollment group has ID '{id}'"),
        }
    }
}

/// What an enrollment decides about the devices it admits, read the same way
/// from both kinds: by the engine when a device registers, and by validation
/// when an operator writes the enrollment.
#[derive(Debug, Clone, Copy)]
pub struct EnrollmentSettings<'a> {
    pub provisioning_status: Option<ProvisioningStatus>,
    pub allocation_policy: Option<AllocationPolicy>,
    pub iot_hubs: Option<&'a [String]>,
    pub iot_hub_host_name: Option<&'a str>,
    pub custom_allocation_definition: Option<&'a CustomAllocationDefinition>,
    pub reprovision_policy: Option<ReprovisionPolicy>,
    pub initial_twin: Option<&'a InitialTwin>,
    pub capabilities: Option<DeviceCapabilities>,
    /// The hub device ID an individual enrollment names, as written (empty
    /// means "the registration ID"); groups have none.
    pub device_id: Option<&'a str>,
}

/// The members the service, not the client, owns: cleared or defaulted on a
/// write, set by the store.
pub struct ServiceOwned<'a> {
    pub etag: &'a mut Option<ETag>,
    pub created: &'a mut Option<UtcTime>,
    pub last_updated: &'a mut Option<UtcTime>,
    pub provisioning_status: &'a mut Option<ProvisioningStatus>,
    pub reprovision_policy: &'a mut Option<ReprovisionPolicy>,
    pub capabilities: &'a mut Option<DeviceCapabilities>,
    /// An individual enrollment's registration record: joined in on reads,
    /// never written.
    pub registration_state: Option<&'a mut Option<DeviceRegistrationState>>,
}

impl ServiceOwned<'_> {
    /// Forgets what a client sent for members the store and the engine own.
    pub fn clear(&mut self) {
        *self.etag = None;
        *self.created = None;
        *self.last_updated = None;
        if let Some(state) = self.registration_state.as_mut() {
            **state = None;
        }
    }

    /// Azure's defaults for what a write left out.
    pub fn fill_defaults(&mut self) {
        self.provisioning_status
            .get_or_insert(ProvisioningStatus::Enabled);
        self.reprovision_policy
            .get_or_insert(ReprovisionPolicy::default());
        self.capabilities
            .get_or_insert(DeviceCapabilities::default());
    }
}

/// A record of either kind: what a store holds and what admits a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Enrollment {
    // Boxed: these travel inside futures, which are moved whole.
    Individual(Box<IndividualEnrollment>),
    Group(Box<EnrollmentGroup>),
}

impl Enrollment {
    /// Kind, ID and settings read through [`EnrollmentRecord`], which both
    /// kinds implement, after one match on the variant.
    fn parts(&self) -> (EnrollmentKind, &str, EnrollmentSettings<'_>) {
        fn of<R: EnrollmentRecord>(record: &R) -> (EnrollmentKind, &str, EnrollmentSettings<'_>) {
            (R::KIND, record.id(), record.settings())
        }
        match self {
            Enrollment::Individual(e) => of(e.as_ref()),
            Enrollment::Group(g) => of(g.as_ref()),
        }
    }

    pub fn kind(&self) -> EnrollmentKind {
        self.parts().0
    }

    pub fn id(&self) -> &str {
        self.parts().1
    }

    /// What the enrollment decides, whichever kind it is.
    pub fn settings(&self) -> EnrollmentSettings<'_> {
        self.parts().2
    }

    pub fn group_id(&self) -> Option<&str> {
        match self {
            Enrollment::Individual(_) => None,
            Enrollment::Group(g) => Some(g.id()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.settings().provisioning_status != Some(ProvisioningStatus::Disabled)
    }

    /// A human name for messages: `individual enrollment 'x'` or `enrollment group 'g'`.
    pub fn describe(&self) -> String {
        format!("{} '{}'", self.kind().noun(), self.id())
    }
}

/// An individual enrollment or an enrollment group, as the service API and
/// the stores handle them.
pub trait EnrollmentRecord:
    Clone + std::fmt::Debug + Send + Sync + Serialize + DeserializeOwned + 'static
{
    const KIND: EnrollmentKind;
    /// The bulk request and answer of this kind (their JSON differs only in
    /// member names).
    type BulkOperation: DeserializeOwned + Send;
    type BulkResult: Serialize + Send;

    fn id(&self) -> &str;
    fn set_id(&mut self, id: &str);
    fn attestation(&self) -> Option<&AttestationMechanism>;
    fn attestation_mut(&mut self) -> &mut Option<AttestationMechanism>;
    fn etag(&self) -> Option<&ETag>;
    fn settings(&self) -> EnrollmentSettings<'_>;
    fn service_owned(&mut self) -> ServiceOwned<'_>;

    fn bulk_items(op: Self::BulkOperation) -> (BulkMode, Vec<Self>);
    /// The answer of a bulk operation from its failed items (ID, code, message).
    fn bulk_result(errors: Vec<(String, u32, String)>) -> Self::BulkResult;
}

/// The two impls differ only in the names of their ID and bulk members, and
/// in what only an individual enrollment has (a device ID, a registration
/// state).
macro_rules! enrollment_record {
    (@optional $s:ident) => {
        None
    };
    (@optional $s:ident $field:ident) => {
        Some(&mut $s.$field)
    };
    (@device_id $s:ident) => {
        None
    };
    (@device_id $s:ident $field:ident) => {
        $s.$field.as_deref()
    };
    (
        $ty:ty, $kind:ident, $id:ident, $items:ident,
        $op:ty, $result:ident, $error:ident { $error_id:ident }
        $(, only: $device_id:ident, $registration_state:ident)? $(,)?
    ) => {
        impl EnrollmentRecord for $ty {
            const KIND: EnrollmentKind = EnrollmentKind::$kind;
            type BulkOperation = $op;
            type BulkResult = $result;

            fn id(&self) -> &str {
                &self.$id
            }
            fn set_id(&mut self, id: &str) {
                id.clone_into(&mut self.$id);
            }
            fn attestation(&self) -> Option<&AttestationMechanism> {
                self.attestation.as_ref()
            }
            fn attestation_mut(&mut self) -> &mut Option<AttestationMechanism> {
                &mut self.attestation
            }
            fn etag(&self) -> Option<&ETag> {
                self.etag.as_ref()
            }
            fn settings(&self) -> EnrollmentSettings<'_> {
                EnrollmentSettings {
                    provisioning_status: self.provisioning_status,
                    allocation_policy: self.allocation_policy,
                    iot_hubs: self.iot_hubs.as_deref(),
                    iot_hub_host_name: self.iot_hub_host_name.as_deref(),
                    custom_allocation_definition: self.custom_allocation_definition.as_ref(),
                    reprovision_policy: self.reprovision_policy,
                    initial_twin: self.initial_twin.as_ref(),
                    capabilities: self.capabilities,
                    device_id: enrollment_record!(@device_id self $($device_id)?),
                }
            }
            fn service_owned(&mut self) -> ServiceOwned<'_> {
                ServiceOwned {
                    etag: &mut self.etag,
                    created: &mut self.created_date_time_utc,
                    last_updated: &mut self.last_updated_date_time_utc,
                    provisioning_status: &mut self.provisioning_status,
                    reprovision_policy: &mut self.reprovision_policy,
                    capabilities: &mut self.capabilities,
                    registration_state: enrollment_record!(@optional self $($registration_state)?),
                }
            }
            fn bulk_items(op: Self::BulkOperation) -> (BulkMode, Vec<Self>) {
                (op.mode, op.$items)
            }
            fn bulk_result(errors: Vec<(String, u32, String)>) -> Self::BulkResult {
                $result {
                    is_successful: errors.is_empty(),
                    errors: errors
                        .into_iter()
                        .map(|($error_id, error_code, error_status)| $error {
                            $error_id,
                            error_code,
                            error_status,
                        })
                        .collect(),
                }
            }
        }
    };
}

enrollment_record!(
    IndividualEnrollment, Individual, registration_id, enrollments,
    BulkEnrollmentOperation, BulkEnrollmentOperationResult,
    BulkEnrollmentOperationError { registration_id },
    only: device_id, registration_state,
);

enrollment_record!(
    EnrollmentGroup,
    Group,
    enrollment_group_id,
    enrollment_groups,
    BulkEnrollmentGroupOperation,
    BulkEnrollmentGroupOperationResult,
    BulkEnrollmentGroupOperationError {
        enrollment_group_id
    },
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_read_their_settings_alike() {
        let twin: InitialTwin = serde_json::from_str(r#"{"tags":{"a":1}}"#).unwrap();
        let e = IndividualEnrollment {
            registration_id: "dev-1".into(),
            device_id: Some(String::new()),
            allocation_policy: Some(AllocationPolicy::Static),
            iot_hubs: Some(vec!["h1".into()]),
            initial_twin: Some(twin.clone()),
            ..Default::default()
        };
        let g = EnrollmentGroup {
            enrollment_group_id: "g-1".into(),
            allocation_policy: Some(AllocationPolicy::Static),
            iot_hubs: Some(vec!["h1".into()]),
            initial_twin: Some(twin),
            ..Default::default()
        };
        let (se, sg) = (e.settings(), g.settings());
        assert_eq!(se.allocation_policy, sg.allocation_policy);
        assert_eq!(se.iot_hubs, sg.iot_hubs);
        assert_eq!(se.initial_twin, sg.initial_twin);
        assert_eq!((se.device_id, sg.device_id), (Some(""), None));
        assert_eq!((e.id(), g.id()), ("dev-1", "g-1"));
    }

    #[test]
    fn bulk_answers_name_the_id_member_of_their_kind() {
        let failed = || vec![("x".to_owned(), 404201, "gone".to_owned())];
        let e = serde_json::to_value(IndividualEnrollment::bulk_result(failed())).unwrap();
        let g = serde_json::to_value(EnrollmentGroup::bulk_result(failed())).unwrap();
        assert_eq!(e["errors"][0]["registrationId"], "x");
        assert_eq!(g["errors"][0]["enrollmentGroupId"], "x");
        assert_eq!(e["isSuccessful"], false);
        let ok = serde_json::to_value(EnrollmentGroup::bulk_result(Vec::new())).unwrap();
        assert_eq!(ok, serde_json::json!({"isSuccessful": true}));
    }
}
