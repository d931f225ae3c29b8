//! The records the conformance suite stores, which other tests borrow too.

use onramp_core::ports::{Placement, RegistrationRecord};
use onramp_core::tenant::{
    AccessRights, LinkedHub, OWNER_POLICY, ProvisioningService, SharedAccessPolicy,
};
use onramp_model::{
    AllocationPolicy, AttestationMechanism, AttestationType, DeviceRegistrationState,
    EnrollmentGroup, IdScope, IndividualEnrollment, RegistrationStatus, Secret,
    SymmetricKeyAttestation, UtcTime,
};

/// A fixed instant, `seconds` after the suite's epoch.
pub(crate) fn now(seconds: i64) -> UtcTime {
    UtcTime::from_unix_nanos(i128::from(1_700_000_000 + seconds) * 1_000_000_000)
        .expect("valid time")
}

/// A service with hashed allocation.
pub fn service(name: &str, scope: u32) -> ProvisioningService {
    ProvisioningService {
        name: name.into(),
        id_scope: IdScope::from_number(scope),
        allocation_policy: AllocationPolicy::Hashed,
        custom_allocation: None,
        created: now(0),
    }
}

/// The owner policy, all rights, with `key` (and `key` + "2" as the secondary).
pub fn owner(key: &str) -> SharedAccessPolicy {
    SharedAccessPolicy {
        name: OWNER_POLICY.into(),
        primary_key: Secret::new(key),
        secondary_key: Secret::new(format!("{key}2")),
        rights: AccessRights::ALL,
    }
}

/// A symmetric-key individual enrollment.
pub fn enrollment(id: &str) -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: id.into(),
        attestation: Some(AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some(Secret::new("cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw==")),
                secondary_key: Some(Secret::new("c2Vjb25kYXJ5LWtleS1mb3ItdGVzdHMtMTI=")),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A symmetric-key enrollment group.
pub fn group(id: &str) -> EnrollmentGroup {
    EnrollmentGroup {
        enrollment_group_id: id.into(),
        attestation: enrollment("x").attestation,
        ..Default::default()
    }
}

/// A linked hub of weight 1 that takes part in allocation.
pub fn hub(name: &str) -> LinkedHub {
    LinkedHub {
        name: name.into(),
        connection_string: Secret::new(format!(
            "HostName={name};SharedAccessKeyName=iothubowner;SharedAccessKey=aHViLWtleQ=="
        )),
        location: "local".into(),
        allocation_weight: 1,
        apply_allocation_policy: true,
        embedded: false,
        companion: false,
    }
}

/// An assigned registration on `hub-a`.
pub(crate) fn record(id: &str, group: Option<&str>) -> RegistrationRecord {
    let mut state = DeviceRegistrationState::new(id, RegistrationStatus::Assigned);
    state.assigned_hub = Some("hub-a".into());
    state.device_id = Some(id.into());
    RegistrationRecord {
        state,
        operation_id: format!("op-{id}"),
        enrollment_group_id: group.map(str::to_owned),
        placement: Some(Placement {
            hub: "hub-a".into(),
            device_id: id.into(),
            initial_hub: "hub-a".into(),
        }),
    }
}
