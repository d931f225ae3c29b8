//! Engine tests over in-memory ports: the product's rules, in microseconds.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use onramp_core::attest::DeviceCredential;
use onramp_core::engine::{Engine, EngineConfig, OperationRequest, RegisterRequest, StatusRequest};
use onramp_core::events::Protocol;
use onramp_core::ports::{HubError, IdentityAuth, Precondition, Store, TwinSetup};
use onramp_core::sas;
use onramp_core::testing::{ManualClock, MemoryStore, RecordingHubs, conformance};
use onramp_model::{
    AllocationPolicy, DeviceRegistration, ErrorCode, ProvisioningStatus, RegistrationStatus,
    Substatus, UtcTime,
};

const SCOPE: u32 = 0xA2B3;

struct World {
    store: Arc<MemoryStore>,
    hubs: Arc<RecordingHubs>,
    clock: Arc<ManualClock>,
    engine: Engine,
    scope: String,
}

fn at(seconds: i64) -> UtcTime {
    UtcTime::from_unix_nanos(i128::from(seconds) * 1_000_000_000).unwrap()
}

const NOW: i64 = 1_800_000_000;

async fn world(hubs: &[(&str, u32)]) -> World {
    let store = Arc::new(MemoryStore::new());
    let svc = conformance::service("default", SCOPE);
    store
        .create_service(&svc, &[conformance::owner("b3duZXI=")])
        .await
        .unwrap();
    for (name, weight) in hubs {
        let mut h = conformance::hub(name);
        h.allocation_weight = *weight;
        store.put_linked_hub("default", &h).await.unwrap();
    }
    let recording = Arc::new(RecordingHubs::default());
    let clock = Arc::new(ManualClock::new(at(NOW)));
    let engine = Engine::new(
        store.clone(),
        recording.clone(),
        clock.clone(),
        EngineConfig::default(),
    );
    World {
        store,
        hubs: recording,
        clock,
        engine,
        scope: svc.id_scope.to_string(),
    }
}

fn primary() -> String {
    conformance::enrollment("x")
        .attestation
        .unwrap()
        .symmetric_key
        .unwrap()
        .primary_key
        .unwrap()
        .expose()
        .to_owned()
}

impl World {
    fn token(&self, registration_id: &str, key: &str, expiry: i64) -> DeviceCredential {
        let resource = format!("{}/registrations/{registration_id}", self.scope);
        DeviceCredential::SasToken(sas::sign(&resource, key, expiry, Some("registration")).unwrap())
    }

    fn request(&self, registration_id: &str, credential: DeviceCredential) -> RegisterRequest {
        RegisterRequest {
            id_scope: self.scope.clone(),
            registration_id: registration_id.into(),
            credential,
            body: DeviceRegistration {
                registration_id: Some(registration_id.into()),
                ..Default::default()
            },
            force_registration: false,
            operation_id: self.engine.new_operation_id(),
            protocol: Protocol::Internal,
        }
    }

    async fn register_with_key(
        &self,
        registration_id: &str,
        key: &str,
    ) -> Result<onramp_model::RegistrationOperationStatus, onramp_core::ProvisioningError> {
        let cred = self.token(registration_id, key, NOW + 3600);
        self.engine
            .register(self.request(registration_id, cred))
            .await
    }

    async fn enroll(&self, id: &str) {
        let mut e = conformance::enrollment(id);
        e.initial_twin = Some(
            serde_json::from_str(r#"{"tags":{"site":"lab"},"properties":{"desired":{"rate":5}}}"#)
                .unwrap(),
        );
        self.store
            .put_enrollment("default", &e, Precondition::None, at(NOW))
            .await
            .unwrap();
    }

    async fn no_trace_of(&self, id: &str) {
        assert_eq!(
            self.store
                .registration("default", &id.to_ascii_lowercase())
                .await
                .unwrap(),
            None
        );
        assert_eq!(self.hubs.count(), 0);
    }
}

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn individual_enrollment_is_assigned_with_its_keys_and_initial_twin() {
    let w = world(&[("hub-a", 1)]).await;
    w.enroll("dev-01").await;
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Assigned);
    let state = op.registration_state.unwrap();
    assert_eq!(state.assigned_hub.as_deref(), Some("hub-a"));
    assert_eq!(state.device_id.as_deref(), Some("dev-01"));
    assert_eq!(state.substatus, Some(Substatus::InitialAssignment));
    assert!(state.etag.is_some() && state.created_date_time_utc.is_some());

    let device = w.hubs.device("hub-a", "dev-01").unwrap();
    let IdentityAuth::SymmetricKey { primary: p, .. } = &device.auth else {
        panic!("a symmetric-key identity")
    };
    assert_eq!(p.expose(), primary());
    let TwinSetup::Initial(twin) = &device.twin else {
        panic!("first assignment sets the twin")
    };
    assert_eq!(twin.tags.as_ref().unwrap()["site"], "lab");
    assert_eq!(twin.desired().unwrap()["rate"], 5);

    // The record is durable and answers polls and status lookups.
    let rec = w
        .store
        .registration("default", "dev-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.operation_id, op.operation_id);
    let poll = w
        .engine
        .operation_status(OperationRequest {
            id_scope: w.scope.clone(),
            registration_id: "dev-01".into(),
            credential: w.token("dev-01", &primary(), NOW + 60),
            operation_id: op.operation_id.clone(),
            protocol: Protocol::Internal,
        })
        .await
        .unwrap();
    assert_eq!(poll.status, RegistrationStatus::Assigned);
    let status = w
        .engine
        .registration_status(StatusRequest {
            id_scope: w.scope.clone(),
            registration_id: "DEV-01".into(),
            credential: w.token("DEV-01", &primary(), NOW + 60),
            protocol: Protocol::Internal,
        })
        .await
        .unwrap();
    assert_eq!(status.assigned_hub.as_deref(), Some("hub-a"));
}

#[tokio::test]
async fn group_devices_use_derived_keys() {
    let w = world(&[("hub-a", 1)]).await;
    let group = conformance::group("factory-1");
    w.store
        .put_enrollment_group("default", &group, Precondition::None, at(NOW))
        .await
        .unwrap();
    for id in ["sensor-001", "sensor-002"] {
        let derived = sas::derive_device_key(&primary(), id).unwrap();
        let op = w.register_with_key(id, &derived).await.unwrap();
        let state = op.registration_state.unwrap();
        assert_eq!(state.status, RegistrationStatus::Assigned);
        assert_eq!(
            state.symmetric_key.unwrap().enrollment_group_id.as_deref(),
            Some("factory-1")
        );
        let device = w.hubs.device("hub-a", id).unwrap();
        let IdentityAuth::SymmetricKey { primary: p, .. } = &device.auth else {
            panic!("a symmetric-key identity")
        };
        assert_eq!(
            p.expose(),
            derived,
            "the hub identity carries the derived key"
        );
    }
    // The group key itself does not authenticate a device.
    let err = w
        .register_with_key("sensor-003", &primary())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EnrollmentNotFound);
}

#[tokio::test]
async fn individual_enrollment_takes_precedence_over_its_group() {
    let w = world(&[("hub-a", 1)]).await;
    w.store
        .put_enrollment_group(
            "default",
            &conformance::group("g"),
            Precondition::None,
            at(NOW),
        )
        .await
        .unwrap();
    let mut e = conformance::enrollment("sensor-9");
    e.provisioning_status = Some(ProvisioningStatus::Disabled);
    w.store
        .put_enrollment("default", &e, Precondition::None, at(NOW))
        .await
        .unwrap();
    let derived = sas::derive_device_key(&primary(), "sensor-9").unwrap();
    // The group would accept the derived key, but the individual enrollment decides.
    let err = w.register_with_key("sensor-9", &derived).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    let err = w
        .register_with_key("sensor-9", &primary())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EnrollmentDisabled);
    w.no_trace_of("sensor-9").await;
}

#[tokio::test]
async fn refusals_leave_no_record_and_no_hub_device() {
    let w = world(&[("hub-a", 1)]).await;
    w.enroll("dev-01").await;
    let mut g = conformance::group("off");
    g.provisioning_status = Some(ProvisioningStatus::Disabled);
    w.store
        .put_enrollment_group("default", &g, Precondition::None, at(NOW))
        .await
        .unwrap();

    let wrong_key = "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==";
    let err = w.register_with_key("dev-01", wrong_key).await.unwrap_err();
    assert_eq!(
        (err.code, err.http_status()),
        (ErrorCode::Unauthorized, 401)
    );
    assert!(err.message.contains("neither key"), "{}", err.message);

    let expired = w.token("dev-01", &primary(), NOW - 3600);
    let err = w
        .engine
        .register(w.request("dev-01", expired))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    assert!(err.message.contains("expired"), "{}", err.message);

    // A valid token for another registration ID.
    let other = w.token("dev-02", &primary(), NOW + 3600);
    let err = w
        .engine
        .register(w.request("dev-01", other))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    assert!(err.message.contains("dev-02"), "{}", err.message);

    let err = w.register_with_key("nobody", &primary()).await.unwrap_err();
    assert_eq!(
        (err.code, err.http_status()),
        (ErrorCode::EnrollmentNotFound, 404)
    );

    let derived = sas::derive_device_key(&primary(), "member").unwrap();
    let err = w.register_with_key("member", &derived).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::EnrollmentDisabled);

    let mut req = w.request("dev-01", w.token("dev-01", &primary(), NOW + 60));
    req.id_scope = "0ne99999999".into();
    let err = w.engine.register(req).await.unwrap_err();
    assert_eq!(
        (err.code, err.http_status()),
        (ErrorCode::ProvisioningServiceNotFound, 404)
    );

    let mut req = w.request("dev-01", w.token("dev-01", &primary(), NOW + 60));
    req.body.registration_id = Some("someone-else".into());
    assert_eq!(
        w.engine.register(req).await.unwrap_err().code,
        ErrorCode::RegistrationIdMismatch
    );

    let err = w
        .engine
        .register(w.request("dev-01", DeviceCredential::None))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::MissingAuthorization);

    let err = w
        .engine
        .register(w.request("bad id!", DeviceCredential::None))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);

    w.no_trace_of("dev-01").await;
}

#[tokio::test]
async fn hub_failures_are_recorded_as_failed_registrations() {
    let w = world(&[("hub-a", 1)]).await;
    w.enroll("dev-01").await;
    w.hubs
        .fail(Some(HubError::Unauthorized("401 from hub".into())));
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Failed);
    let state = op.registration_state.unwrap();
    assert_eq!(state.error_code, Some(400209));
    assert!(state.error_message.unwrap().contains("hub-a"));
    let rec = w
        .store
        .registration("default", "dev-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.state.status, RegistrationStatus::Failed);

    // The hub recovers: the next registration succeeds.
    w.hubs.fail(None);
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Assigned);
}

#[tokio::test]
async fn no_linked_hub_is_a_failed_registration_with_a_hint() {
    let w = world(&[]).await;
    w.enroll("dev-01").await;
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    let state = op.registration_state.unwrap();
    assert_eq!(state.status, RegistrationStatus::Failed);
    assert_eq!(state.error_code, Some(400208));
    assert!(
        state
            .error_message
            .unwrap()
            .contains("onramp linked-hub add")
    );
}

#[tokio::test]
async fn registering_again_lands_on_the_same_hub_and_keeps_the_twin() {
    let w = world(&[("hub-a", 1), ("hub-b", 1), ("hub-c", 1)]).await;
    w.enroll("dev-01").await;
    let first = w.register_with_key("dev-01", &primary()).await.unwrap();
    let hub = first.registration_state.unwrap().assigned_hub.unwrap();
    w.clock.advance_seconds(60);
    let second = w.register_with_key("dev-01", &primary()).await.unwrap();
    let state = second.registration_state.unwrap();
    assert_eq!(state.assigned_hub.as_deref(), Some(hub.as_str()));
    assert_ne!(first.operation_id, second.operation_id);
    assert_eq!(w.hubs.device(&hub, "dev-01").unwrap().twin, TwinSetup::Keep);
    assert!(state.last_updated_date_time_utc > state.created_date_time_utc);
}

#[tokio::test]
async fn static_allocation_uses_the_named_hub() {
    let w = world(&[("hub-a", 1), ("hub-b", 1)]).await;
    let mut e = conformance::enrollment("pinned");
    e.allocation_policy = Some(AllocationPolicy::Static);
    e.iot_hubs = Some(vec!["hub-b".into()]);
    w.store
        .put_enrollment("default", &e, Precondition::None, at(NOW))
        .await
        .unwrap();
    let op = w.register_with_key("pinned", &primary()).await.unwrap();
    assert_eq!(
        op.registration_state.unwrap().assigned_hub.as_deref(),
        Some("hub-b")
    );
}

#[tokio::test]
async fn hashed_allocation_over_three_hubs_follows_weights_1_1_2() {
    let w = world(&[("hub-a", 1), ("hub-b", 1), ("hub-c", 2)]).await;
    w.store
        .put_enrollment_group(
            "default",
            &conformance::group("fleet"),
            Precondition::None,
            at(NOW),
        )
        .await
        .unwrap();
    let n = 10_000;
    let mut counts = std::collections::HashMap::new();
    for i in 0..n {
        let id = format!("fleet-{i:05}");
        let key = sas::derive_device_key(&primary(), &id).unwrap();
        let op = w.register_with_key(&id, &key).await.unwrap();
        *counts
            .entry(op.registration_state.unwrap().assigned_hub.unwrap())
            .or_insert(0usize) += 1;
    }
    for (hub, weight) in [("hub-a", 0.25), ("hub-b", 0.25), ("hub-c", 0.5)] {
        let share = counts[hub] as f64 / n as f64;
        assert!(
            (share - weight).abs() <= 0.03,
            "{hub}: {share} vs {weight} ({counts:?})"
        );
    }
    // Stable per device.
    for i in (0..n).step_by(97) {
        let id = format!("fleet-{i:05}");
        let before = w
            .store
            .registration("default", &id)
            .await
            .unwrap()
            .unwrap()
            .state
            .assigned_hub;
        let key = sas::derive_device_key(&primary(), &id).unwrap();
        let op = w.register_with_key(&id, &key).await.unwrap();
        assert_eq!(op.registration_state.unwrap().assigned_hub, before);
    }
}

#[tokio::test]
async fn old_and_foreign_operations_are_not_found() {
    let w = world(&[("hub-a", 1)]).await;
    w.enroll("dev-01").await;
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    let poll = |operation_id: String| OperationRequest {
        id_scope: w.scope.clone(),
        registration_id: "dev-01".into(),
        credential: w.token("dev-01", &primary(), NOW + 7200),
        operation_id,
        protocol: Protocol::Internal,
    };
    assert!(
        w.engine
            .operation_status(poll(op.operation_id.clone()))
            .await
            .is_ok()
    );
    let err = w
        .engine
        .operation_status(poll("made-up".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OperationNotFound);
    w.clock.advance_seconds(31 * 60);
    let err = w
        .engine
        .operation_status(poll(op.operation_id))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OperationNotFound);
}
