//! Engine tests over in-memory ports: the product's rules, in microseconds.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use onramp_core::ProvisioningError;
use onramp_core::attest::{DeviceCredential, GROUP_PAGE};
use onramp_core::engine::{
    Drained, Engine, EngineConfig, OperationRequest, RegisterRequest, StatusRequest,
};
use onramp_core::events::Protocol;
use onramp_core::ports::{
    DeviceAt, DeviceIdentity, HubError, HubRegistry, IdentityAuth, Precondition,
    RegistrationRecord, Store, StoreExt, StoredRecord, TwinSetup, TwinSnapshot,
};
use onramp_core::sas;
use onramp_core::tenant::LinkedHub;
use onramp_model::IdKey;
use onramp_model::allocation::AllocationResponse;
use onramp_model::{
    AllocationPolicy, CustomAllocationDefinition, DeviceRegistration, DeviceRegistrationState,
    ErrorCode, IndividualEnrollment, ProvisioningStatus, RegistrationOperationStatus,
    RegistrationStatus, ReprovisionPolicy, Substatus, UtcTime,
};
use onramp_testkit::{
    FixedLatency, ManualClock, MemoryStore, RecordingHubs, ScriptedWebhook, conformance,
    default_service, given,
};
use serde_json::json;
use tokio::sync::Notify;

const SCOPE: u32 = 0xA2B3;

struct World {
    store: Arc<MemoryStore>,
    hubs: Arc<RecordingHubs>,
    clock: Arc<ManualClock>,
    webhook: Arc<ScriptedWebhook>,
    latency: Arc<FixedLatency>,
    engine: Arc<Engine>,
    scope: String,
}

fn at(seconds: i64) -> UtcTime {
    UtcTime::from_unix_nanos(i128::from(seconds) * 1_000_000_000).unwrap()
}

const NOW: i64 = 1_800_000_000;

async fn world(hubs: &[(&str, u32)]) -> World {
    let (store, svc) = default_service(SCOPE).await;
    for (name, weight) in hubs {
        let mut h = conformance::hub(name);
        h.allocation_weight = *weight;
        given(&*store, "default", h.clone()).await;
    }
    let recording = Arc::new(RecordingHubs::default());
    let clock = Arc::new(ManualClock::new(at(NOW)));
    let webhook = Arc::new(ScriptedWebhook::default());
    let latency = Arc::new(FixedLatency::default());
    let engine = Arc::new(
        Engine::new(
            store.clone(),
            recording.clone(),
            clock.clone(),
            EngineConfig::default(),
        )
        .with_webhook(webhook.clone())
        .with_latency(latency.clone()),
    );
    World {
        store,
        hubs: recording,
        clock,
        webhook,
        latency,
        engine,
        scope: svc.id_scope.to_string(),
    }
}

/// One linked hub, `hub-a`, and one enrolled device, `dev-01`.
async fn one_device_on_hub_a() -> World {
    let w = world(&[("hub-a", 1)]).await;
    w.enroll("dev-01").await;
    w
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
            protocol: Protocol::Internal,
            client_addr: None,
        }
    }

    async fn register_with_key(
        &self,
        registration_id: &str,
        key: &str,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
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
        self.put(&e).await;
    }

    /// Stores `record` (an enrollment, a group, a registration) in the
    /// default service.
    async fn put<T: StoredRecord + Clone>(&self, record: &T) {
        self.store
            .put("default", record.clone(), Precondition::None, at(NOW))
            .await
            .unwrap();
    }

    /// The registration record of `id` in the default service, if any.
    async fn record(&self, id: &str) -> Option<RegistrationRecord> {
        self.store
            .get::<RegistrationRecord>("default", &IdKey::of(id))
            .await
            .unwrap()
    }

    /// Unlinks `hub` from the default service.
    async fn unlink(&self, hub: &str) {
        self.store
            .delete::<LinkedHub>("default", &IdKey::of(hub), Precondition::None)
            .await
            .unwrap();
    }

    /// A poll of operation `operation_id` of `registration_id`.
    fn poll(&self, registration_id: &str, operation_id: &str) -> OperationRequest {
        OperationRequest {
            id_scope: self.scope.clone(),
            registration_id: registration_id.into(),
            credential: self.token(registration_id, &primary(), NOW + 3600),
            operation_id: operation_id.into(),
            protocol: Protocol::Internal,
        }
    }

    /// What the engine answers a poll of `operation_id` of `registration_id`.
    async fn polled(
        &self,
        registration_id: &str,
        operation_id: &str,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        let poll = self.poll(registration_id, operation_id);
        self.engine.operation_status(poll).await
    }

    /// What the engine answers a device asking for its registration state.
    async fn status(
        &self,
        registration_id: &str,
    ) -> Result<DeviceRegistrationState, ProvisioningError> {
        let lookup = StatusRequest {
            id_scope: self.scope.clone(),
            registration_id: registration_id.into(),
            credential: self.token(registration_id, &primary(), NOW + 60),
            protocol: Protocol::Internal,
        };
        self.engine.registration_status(lookup).await
    }

    /// Registers group member `id` with its derived key: it must be assigned
    /// through `group`.
    async fn assigned_in_group(&self, id: &str, group: &str) -> DeviceRegistrationState {
        let op = self.register_with_key(id, &member_key(id)).await.unwrap();
        let state = op.registration_state.unwrap();
        assert_eq!(state.status, RegistrationStatus::Assigned);
        let through = state.symmetric_key.as_ref().unwrap();
        assert_eq!(through.enrollment_group_id.as_deref(), Some(group));
        state
    }

    /// A register request signed with the enrollments' primary key.
    fn signed(&self, registration_id: &str) -> RegisterRequest {
        let credential = self.token(registration_id, &primary(), NOW + 3600);
        self.request(registration_id, credential)
    }

    /// The state `req` leaves the device in; the registration must succeed.
    async fn registered(&self, req: RegisterRequest) -> DeviceRegistrationState {
        let op = self.engine.register(req).await.unwrap();
        op.registration_state.unwrap()
    }

    /// A registration signed with `key` that must be refused with `code`.
    async fn refused_key(
        &self,
        registration_id: &str,
        key: &str,
        code: ErrorCode,
    ) -> ProvisioningError {
        let credential = self.token(registration_id, key, NOW + 3600);
        self.refused(registration_id, credential, code).await
    }

    /// A registration of `registration_id` with `credential` that must be
    /// refused with `code`.
    async fn refused(
        &self,
        registration_id: &str,
        credential: DeviceCredential,
        code: ErrorCode,
    ) -> ProvisioningError {
        let err = self
            .engine
            .register(self.request(registration_id, credential))
            .await
            .unwrap_err();
        assert_eq!(err.code, code, "{registration_id}: {}", err.message);
        err
    }

    async fn no_trace_of(&self, id: &str) {
        assert_eq!(self.record(id).await, None);
        assert_eq!(self.hubs.count(), 0);
    }
}

/// The key a member `id` of a group with the enrollments' primary key derives.
fn member_key(id: &str) -> String {
    sas::derive_device_key(&primary(), id).unwrap()
}

#[tokio::test]
async fn individual_enrollment_is_assigned_with_its_keys_and_initial_twin() {
    let w = one_device_on_hub_a().await;
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
    let rec = w.record("dev-01").await.unwrap();
    assert_eq!(rec.operation_id, op.operation_id);
    let poll = w.polled("dev-01", &op.operation_id).await.unwrap();
    assert_eq!(poll.status, RegistrationStatus::Assigned);
    let status = w.status("DEV-01").await.unwrap();
    assert_eq!(status.assigned_hub.as_deref(), Some("hub-a"));
}

#[tokio::test]
async fn a_group_beyond_the_first_page_is_found() {
    let w = world(&[("hub-a", 1)]).await;
    // A full first page of groups with other keys, then the device's group.
    for i in 0..GROUP_PAGE {
        let mut g = conformance::group(&format!("g-{i:04}"));
        let keys = g
            .attestation
            .as_mut()
            .unwrap()
            .symmetric_key
            .as_mut()
            .unwrap();
        keys.primary_key = Some(onramp_model::Secret::new(
            "b3RoZXIta2V5LW9mLWEtZ3JvdXAtMDAwMDAwMA==",
        ));
        keys.secondary_key = keys.primary_key.clone();
        w.put(&g).await;
    }
    w.put(&conformance::group("z-last")).await;
    w.assigned_in_group("far-dev", "z-last").await;
}

#[tokio::test]
async fn group_devices_use_derived_keys() {
    let w = world(&[("hub-a", 1)]).await;
    let group = conformance::group("factory-1");
    w.put(&group).await;
    for id in ["sensor-001", "sensor-002"] {
        w.assigned_in_group(id, "factory-1").await;
        let device = w.hubs.device("hub-a", id).unwrap();
        let IdentityAuth::SymmetricKey { primary: p, .. } = &device.auth else {
            panic!("a symmetric-key identity")
        };
        assert_eq!(
            p.expose(),
            member_key(id),
            "the hub identity carries the derived key"
        );
    }
    // The group key itself does not authenticate a device.
    w.refused_key("sensor-003", &primary(), ErrorCode::EnrollmentNotFound)
        .await;
}

#[tokio::test]
async fn individual_enrollment_takes_precedence_over_its_group() {
    let w = world(&[("hub-a", 1)]).await;
    w.put(&conformance::group("g")).await;
    let mut e = conformance::enrollment("sensor-9");
    e.provisioning_status = Some(ProvisioningStatus::Disabled);
    w.put(&e).await;
    // The group would accept the derived key, but the individual enrollment decides.
    w.refused_key("sensor-9", &member_key("sensor-9"), ErrorCode::Unauthorized)
        .await;
    w.refused_key("sensor-9", &primary(), ErrorCode::EnrollmentDisabled)
        .await;
    w.no_trace_of("sensor-9").await;
}

#[tokio::test]
async fn refusals_leave_no_record_and_no_hub_device() {
    let w = one_device_on_hub_a().await;
    let mut g = conformance::group("off");
    g.provisioning_status = Some(ProvisioningStatus::Disabled);
    w.put(&g).await;

    let wrong_key = "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==";
    let err = w
        .refused_key("dev-01", wrong_key, ErrorCode::Unauthorized)
        .await;
    assert_eq!(err.http_status(), 401);
    assert!(err.message.contains("neither key"), "{}", err.message);

    let expired = w.token("dev-01", &primary(), NOW - 3600);
    let err = w.refused("dev-01", expired, ErrorCode::Unauthorized).await;
    assert!(err.message.contains("expired"), "{}", err.message);

    // A valid token for another registration ID.
    let other = w.token("dev-02", &primary(), NOW + 3600);
    let err = w.refused("dev-01", other, ErrorCode::Unauthorized).await;
    assert!(err.message.contains("dev-02"), "{}", err.message);

    let err = w
        .refused_key("nobody", &primary(), ErrorCode::EnrollmentNotFound)
        .await;
    assert_eq!(err.http_status(), 404);

    w.refused_key(
        "member",
        &member_key("member"),
        ErrorCode::EnrollmentDisabled,
    )
    .await;

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

    for (id, code) in [
        ("dev-01", ErrorCode::MissingAuthorization),
        ("bad id!", ErrorCode::InvalidArgument),
    ] {
        w.refused(id, DeviceCredential::None, code).await;
    }

    w.no_trace_of("dev-01").await;
}

#[tokio::test]
async fn hub_failures_are_recorded_as_failed_registrations() {
    let w = one_device_on_hub_a().await;
    w.hubs
        .fail(Some(HubError::Unauthorized("401 from hub".into())));
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Failed);
    let state = op.registration_state.unwrap();
    assert_eq!(state.error_code, Some(400209));
    assert!(state.error_message.unwrap().contains("hub-a"));
    let rec = w.record("dev-01").await.unwrap();
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
    w.point_at(&mut e, "hub-b").await;
    let op = w.register_with_key("pinned", &primary()).await.unwrap();
    assert_eq!(
        op.registration_state.unwrap().assigned_hub.as_deref(),
        Some("hub-b")
    );
}

#[tokio::test]
async fn hashed_allocation_over_three_hubs_follows_weights_1_1_2() {
    let w = world(&[("hub-a", 1), ("hub-b", 1), ("hub-c", 2)]).await;
    w.put(&conformance::group("fleet")).await;
    let n = 10_000;
    let mut counts = std::collections::HashMap::new();
    for i in 0..n {
        let id = format!("fleet-{i:05}");
        let op = w.register_with_key(&id, &member_key(&id)).await.unwrap();
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
        let before = w.record(&id).await.unwrap().state.assigned_hub;
        let op = w.register_with_key(&id, &member_key(&id)).await.unwrap();
        assert_eq!(op.registration_state.unwrap().assigned_hub, before);
    }
}

#[tokio::test]
async fn old_and_foreign_operations_are_not_found() {
    let w = one_device_on_hub_a().await;
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert!(w.polled("dev-01", &op.operation_id).await.is_ok());
    let err = w.polled("dev-01", "made-up").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OperationNotFound);
    // An operation begun after the record that never finished (its write
    // failed, or the process stopped) is not answered with the older record.
    w.clock.advance_seconds(5);
    let unfinished = w.engine.new_operation_id();
    let err = w.polled("dev-01", &unfinished).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OperationNotFound);
    assert!(
        err.message.contains("ended without a result"),
        "{}",
        err.message
    );
    // An older operation polled late still reads the current record.
    let later = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_ne!(later.operation_id, op.operation_id);
    assert!(w.polled("dev-01", &op.operation_id).await.is_ok());
    w.clock.advance_seconds(31 * 60);
    let err = w.polled("dev-01", &op.operation_id).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OperationNotFound);
}

#[tokio::test]
async fn a_device_without_an_assigned_registration_has_no_status_to_show() {
    let w = world(&[("hub-a", 1)]).await;
    w.enroll("dev-01").await;
    let err = w.status("dev-01").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RegistrationNotFound, "{}", err.message);
    // A record that says `unassigned` is not shown either.
    let record = RegistrationRecord {
        state: DeviceRegistrationState::new("dev-01", RegistrationStatus::Unassigned),
        operation_id: w.engine.new_operation_id(),
        enrollment_group_id: None,
        placement: None,
    };
    w.put(&record).await;
    let err = w.status("dev-01").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RegistrationNotFound, "{}", err.message);
    assert_eq!(err.http_status(), 404);
    // Once assigned, it is.
    w.register_with_key("dev-01", &primary()).await.unwrap();
    let state = w.status("dev-01").await.unwrap();
    assert_eq!(state.status, RegistrationStatus::Assigned);
}

// ---- Reprovisioning -------------------------------------------------------

impl World {
    /// An enrollment with an initial twin, pinned to `hubs` (hashed among them).
    fn enrollment_on(&self, id: &str, hubs: &[&str], policy: (bool, bool)) -> IndividualEnrollment {
        let mut e = conformance::enrollment(id);
        e.initial_twin = Some(
            serde_json::from_str(r#"{"tags":{"site":"lab"},"properties":{"desired":{"rate":5}}}"#)
                .unwrap(),
        );
        e.iot_hubs = Some(hubs.iter().map(|h| h.to_string()).collect());
        e.reprovision_policy = Some(ReprovisionPolicy {
            update_hub_assignment: policy.0,
            migrate_device_data: policy.1,
        });
        e
    }

    async fn assigned(&self, id: &str) -> DeviceRegistrationState {
        self.clock.advance_seconds(1);
        let op = self.register_with_key(id, &primary()).await.unwrap();
        let state = op.registration_state.unwrap();
        assert_eq!(state.status, RegistrationStatus::Assigned, "{state:?}");
        state
    }

    /// Points enrollment `e` at `hub` alone, and stores it.
    async fn point_at(&self, e: &mut IndividualEnrollment, hub: &str) {
        e.iot_hubs = Some(vec![hub.into()]);
        self.put(e).await;
    }

    /// The firmware version `device_id` reports through its twin on `hub`.
    fn firmware(&self, hub: &str, device_id: &str) -> serde_json::Value {
        self.hubs.twin_of(hub, device_id).unwrap().reported["firmware"].clone()
    }
}

/// `dev-01` enrolled on hub-a with reprovisioning `policy`, in a world of
/// `hubs`: assigned there and reporting firmware 1.2. Returns the world, the
/// enrollment (to change) and the state of that first assignment.
async fn reporting_on_hub_a(
    hubs: &[(&str, u32)],
    policy: (bool, bool),
) -> (World, IndividualEnrollment, DeviceRegistrationState) {
    let w = world(hubs).await;
    let e = w.enrollment_on("dev-01", &["hub-a"], policy);
    w.put(&e).await;
    let state = w.assigned("dev-01").await;
    w.hubs.report("hub-a", "dev-01", json!({"firmware": "1.2"}));
    (w, e, state)
}

/// Asserts that `state` places its device on `hub`, with `substatus`.
fn assert_placed(state: &DeviceRegistrationState, hub: &str, substatus: Substatus) {
    assert_eq!(state.assigned_hub.as_deref(), Some(hub), "{state:?}");
    assert_eq!(state.substatus, Some(substatus), "{state:?}");
}

const MIGRATE: (bool, bool) = (true, true);
const RESET: (bool, bool) = (true, false);
const NEVER: (bool, bool) = (false, false);

#[tokio::test]
async fn migrate_policy_carries_the_twin_to_the_new_hub_and_removes_the_old_identity() {
    let (w, mut e, first) = reporting_on_hub_a(&[("hub-a", 1), ("hub-b", 1)], MIGRATE).await;
    assert_eq!(first.assigned_hub.as_deref(), Some("hub-a"));
    // The device has reported; an operator changes a desired property.
    w.hubs
        .twins
        .lock()
        .unwrap()
        .get_mut(&("hub-a".to_owned(), "dev-01".to_owned()))
        .unwrap()
        .desired
        .insert("rate".into(), json!(9));

    // The enrollment's hub list changes: the device moves and keeps its data.
    w.point_at(&mut e, "hub-b").await;
    let state = w.assigned("dev-01").await;
    assert_placed(&state, "hub-b", Substatus::DeviceDataMigrated);
    let twin = w.hubs.twin_of("hub-b", "dev-01").unwrap();
    assert_eq!(twin.reported["firmware"], "1.2");
    assert_eq!(twin.desired["rate"], 9);
    assert_eq!(twin.tags["site"], "lab");
    assert!(
        w.hubs.device("hub-a", "dev-01").is_none(),
        "old identity removed"
    );

    // Back to the first hub: named so, data still carried.
    w.point_at(&mut e, "hub-a").await;
    let state = w.assigned("dev-01").await;
    assert_placed(&state, "hub-a", Substatus::ReprovisionedToInitialAssignment);
    assert_eq!(w.firmware("hub-a", "dev-01"), "1.2");
    assert!(w.hubs.device("hub-b", "dev-01").is_none());

    // Unchanged: stays, twin kept, substatus unchanged.
    let state = w.assigned("dev-01").await;
    assert_eq!(
        state.substatus,
        Some(Substatus::ReprovisionedToInitialAssignment)
    );
    assert_eq!(
        w.hubs.device("hub-a", "dev-01").unwrap().twin,
        TwinSetup::Keep
    );
}

#[tokio::test]
async fn reset_policy_gives_the_initial_twin_on_a_move_and_on_the_same_hub() {
    let (w, mut e, _) = reporting_on_hub_a(&[("hub-a", 1), ("hub-b", 1)], RESET).await;
    // Same hub: a factory reset.
    let state = w.assigned("dev-01").await;
    assert_eq!(state.substatus, Some(Substatus::DeviceDataReset));
    assert!(
        w.hubs
            .twin_of("hub-a", "dev-01")
            .unwrap()
            .reported
            .is_empty()
    );
    // A move: the new hub gets the initial twin, the old identity goes.
    w.hubs.report("hub-a", "dev-01", json!({"firmware": "1.3"}));
    w.point_at(&mut e, "hub-b").await;
    let state = w.assigned("dev-01").await;
    assert_placed(&state, "hub-b", Substatus::DeviceDataReset);
    let twin = w.hubs.twin_of("hub-b", "dev-01").unwrap();
    assert!(twin.reported.is_empty());
    assert_eq!(twin.desired["rate"], 5);
    assert!(w.hubs.device("hub-a", "dev-01").is_none());
}

#[tokio::test]
async fn never_policy_stays_unless_forced_or_its_hub_is_unlinked() {
    let three_hubs = [("hub-a", 1), ("hub-b", 1), ("hub-c", 1)];
    let (w, mut e, _) = reporting_on_hub_a(&three_hubs, NEVER).await;
    w.point_at(&mut e, "hub-b").await;
    let state = w.assigned("dev-01").await;
    assert_eq!(state.assigned_hub.as_deref(), Some("hub-a"), "never moves");
    assert_eq!(w.firmware("hub-a", "dev-01"), "1.2");

    // Forced: allocation runs again.
    w.clock.advance_seconds(1);
    let mut req = w.signed("dev-01");
    req.force_registration = true;
    let state = w.registered(req).await;
    assert_placed(&state, "hub-b", Substatus::DeviceDataReset);
    assert!(w.hubs.device("hub-a", "dev-01").is_none());

    // Its hub is unlinked: it has to go somewhere else.
    w.point_at(&mut e, "hub-c").await;
    w.unlink("hub-b").await;
    let state = w.assigned("dev-01").await;
    assert_placed(&state, "hub-c", Substatus::DeviceDataReset);
}

#[tokio::test]
async fn a_removed_hub_cannot_be_migrated_from_so_the_device_starts_afresh() {
    let w = world(&[("hub-a", 1), ("hub-b", 1)]).await;
    let e = w.enrollment_on("dev-01", &[], MIGRATE);
    w.put(&e).await;
    let first = w.assigned("dev-01").await.assigned_hub.unwrap();
    let other = if first == "hub-a" { "hub-b" } else { "hub-a" };
    assert_eq!(
        w.store
            .count_devices_on_hub("default", &first)
            .await
            .unwrap(),
        1
    );
    w.unlink(&first).await;
    let state = w.assigned("dev-01").await;
    assert_placed(&state, other, Substatus::DeviceDataReset);
    assert_eq!(w.hubs.twin_of(other, "dev-01").unwrap().desired["rate"], 5);
}

#[tokio::test]
async fn a_device_that_moves_to_another_enrollment_follows_the_new_one() {
    let w = world(&[("hub-a", 1), ("hub-b", 1)]).await;
    let mut g = conformance::group("line-1");
    g.allocation_policy = Some(AllocationPolicy::Static);
    g.iot_hubs = Some(vec!["hub-a".into()]);
    w.put(&g).await;
    let key = member_key("unit-7");
    let op = w.register_with_key("unit-7", &key).await.unwrap();
    assert_eq!(
        op.registration_state.unwrap().assigned_hub.as_deref(),
        Some("hub-a")
    );
    w.hubs.report("hub-a", "unit-7", json!({"firmware": "2.0"}));

    // The device gets its own enrollment, on hub-b, with the same key.
    let mut e = w.enrollment_on("unit-7", &["hub-b"], MIGRATE);
    e.attestation = Some(onramp_model::AttestationMechanism {
        kind: onramp_model::AttestationType::SymmetricKey,
        symmetric_key: Some(onramp_model::SymmetricKeyAttestation {
            primary_key: Some(onramp_model::Secret::new(key.clone())),
            secondary_key: Some(onramp_model::Secret::new(key.clone())),
        }),
        ..Default::default()
    });
    w.put(&e).await;
    w.clock.advance_seconds(1);
    let state = w
        .register_with_key("unit-7", &key)
        .await
        .unwrap()
        .registration_state
        .unwrap();
    assert_placed(&state, "hub-b", Substatus::DeviceDataMigrated);
    assert_eq!(state.symmetric_key, None, "no group any more");
    assert_eq!(w.firmware("hub-b", "unit-7"), "2.0");
}

#[tokio::test]
async fn a_failed_move_keeps_the_device_where_its_data_is() {
    let (w, mut e, _) = reporting_on_hub_a(&[("hub-a", 1), ("hub-b", 1)], MIGRATE).await;
    w.point_at(&mut e, "hub-b").await;
    w.hubs
        .fail(Some(HubError::Unreachable("connection refused".into())));
    w.clock.advance_seconds(1);
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Failed);
    let state = op.registration_state.unwrap();
    assert_eq!(state.error_code, Some(500002));
    assert!(state.error_message.unwrap().contains("to migrate it"));
    w.hubs.fail(None);
    let state = w.assigned("dev-01").await;
    assert_placed(&state, "hub-b", Substatus::DeviceDataMigrated);
    assert_eq!(w.firmware("hub-b", "dev-01"), "1.2");
}

// ---- Custom allocation ----------------------------------------------------

fn custom_enrollment(id: &str) -> IndividualEnrollment {
    let mut e = conformance::enrollment(id);
    e.allocation_policy = Some(AllocationPolicy::Custom);
    e.custom_allocation_definition = Some(CustomAllocationDefinition {
        webhook_url: "https://alloc.example.net/api/choose?code=s3cret".into(),
        api_version: "2021-10-01".into(),
    });
    e.initial_twin = Some(serde_json::from_str(r#"{"tags":{"from":"enrollment"}}"#).unwrap());
    e
}

#[tokio::test]
async fn custom_webhook_sees_the_device_payload_and_its_answer_reaches_the_device() {
    let w = world(&[("hub-a", 1), ("hub-b", 1)]).await;
    w.put(&custom_enrollment("toaster-1")).await;
    w.webhook.answer(Ok(AllocationResponse {
        iot_hub_host_name: Some("HUB-B".into()),
        initial_twin: Some(
            serde_json::from_str(
                r#"{"tags":{"kind":"toaster"},"properties":{"desired":{"heat":3}}}"#,
            )
            .unwrap(),
        ),
        payload: Some(json!({"welcome": "toaster"})),
    }));
    let mut req = w.signed("toaster-1");
    req.body.payload = Some(json!({"model": "toaster"}));
    let state = w.registered(req).await;
    assert_eq!(state.assigned_hub.as_deref(), Some("hub-b"));
    assert_eq!(state.payload, Some(json!({"welcome": "toaster"})));
    let twin = w.hubs.twin_of("hub-b", "toaster-1").unwrap();
    assert_eq!(
        twin.tags["kind"], "toaster",
        "the webhook's initial twin wins"
    );
    assert_eq!(twin.desired["heat"], 3);

    let (target, sent) = w.webhook.last_request().unwrap();
    assert_eq!(target.display_url(), "https://alloc.example.net/api/choose");
    assert_eq!(
        sent.device_runtime_context.payload,
        Some(json!({"model": "toaster"}))
    );
    assert_eq!(sent.device_runtime_context.registration_id, "toaster-1");
    assert_eq!(sent.device_runtime_context.current_iot_hub_host_name, None);
    assert_eq!(sent.linked_hubs, vec!["hub-a", "hub-b"]);
    let text = serde_json::to_string(&sent).unwrap();
    assert!(
        !text.contains(&primary()),
        "keys never reach the webhook: {text}"
    );
    assert!(text.contains(r#""symmetricKey":{}"#), "{text}");

    // Registering again: the webhook learns where the device is.
    w.clock.advance_seconds(1);
    w.register_with_key("toaster-1", &primary()).await.unwrap();
    let (_, sent) = w.webhook.last_request().unwrap();
    assert_eq!(
        sent.device_runtime_context
            .current_iot_hub_host_name
            .as_deref(),
        Some("hub-b")
    );
    assert_eq!(
        sent.device_runtime_context.current_device_id.as_deref(),
        Some("toaster-1")
    );
}

#[tokio::test]
async fn custom_webhook_under_never_policy_is_offered_only_the_current_hub() {
    let w = world(&[("hub-a", 1), ("hub-b", 1)]).await;
    let mut e = custom_enrollment("dev-01");
    e.reprovision_policy = Some(ReprovisionPolicy {
        update_hub_assignment: false,
        migrate_device_data: false,
    });
    w.put(&e).await;
    w.webhook.answer(Ok(AllocationResponse {
        iot_hub_host_name: Some("hub-a".into()),
        ..Default::default()
    }));
    w.assigned("dev-01").await;
    w.webhook.answer(Ok(AllocationResponse {
        iot_hub_host_name: Some("hub-a".into()),
        payload: Some(json!({"again": true})),
        ..Default::default()
    }));
    let state = w.assigned("dev-01").await;
    assert_eq!(state.payload, Some(json!({"again": true})));
    assert_eq!(
        w.webhook.last_request().unwrap().1.linked_hubs,
        vec!["hub-a"]
    );
}

#[tokio::test]
async fn custom_webhook_failures_are_recorded_with_their_own_codes_and_no_hub_device() {
    use onramp_core::ports::WebhookError;
    let w = world(&[("hub-a", 1)]).await;
    w.put(&custom_enrollment("dev-01")).await;
    let cases: Vec<(Result<AllocationResponse, WebhookError>, i32, &str)> = vec![
        (
            Err(WebhookError::Timeout(5000)),
            400211,
            "did not answer within 5000 ms",
        ),
        (
            Err(WebhookError::Status {
                status: 500,
                body: "boom".into(),
            }),
            400207,
            "answered HTTP 500: boom",
        ),
        (
            Err(WebhookError::InvalidResponse(
                "expected value at line 1".into(),
            )),
            400212,
            "not an allocation response",
        ),
        (
            Ok(AllocationResponse {
                iot_hub_host_name: Some("elsewhere.example.net".into()),
                ..Default::default()
            }),
            400213,
            "'elsewhere.example.net', which is not among the hubs",
        ),
        (
            Err(WebhookError::Unreachable("connection refused".into())),
            400214,
            "could not be reached (connection refused)",
        ),
        (
            Ok(AllocationResponse::default()),
            400208,
            "without iotHubHostName",
        ),
        (
            Ok(AllocationResponse {
                iot_hub_host_name: Some("hub-a".into()),
                payload: Some(json!("text")),
                ..Default::default()
            }),
            400212,
            "payload that is not a JSON object",
        ),
    ];
    for (answer, code, words) in cases {
        w.webhook.answer(answer);
        w.clock.advance_seconds(1);
        let op = w.register_with_key("dev-01", &primary()).await.unwrap();
        assert_eq!(op.status, RegistrationStatus::Failed);
        let state = op.registration_state.unwrap();
        assert_eq!(state.error_code, Some(code), "{state:?}");
        let message = state.error_message.unwrap();
        assert!(message.contains(words), "{message}");
        assert!(
            !message.contains("s3cret"),
            "the webhook's code stays secret: {message}"
        );
        let recorded = w.record("dev-01").await.unwrap();
        assert_eq!(recorded.state.error_code, Some(code));
        assert_eq!(w.hubs.count(), 0, "no hub device for {code}");
    }
}

#[tokio::test]
async fn the_service_default_webhook_serves_enrollments_without_one() {
    let w = world(&[("hub-a", 1)]).await;
    let mut e = custom_enrollment("dev-01");
    e.custom_allocation_definition = None;
    w.put(&e).await;
    let op = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(op.registration_state.unwrap().error_code, Some(400207));

    let mut svc = w.store.service("default").await.unwrap().unwrap();
    svc.custom_allocation = Some(CustomAllocationDefinition {
        webhook_url: "http://127.0.0.1:9/default".into(),
        api_version: "2021-10-01".into(),
    });
    w.store.update_service(&svc).await.unwrap();
    w.webhook.answer(Ok(AllocationResponse {
        iot_hub_host_name: Some("hub-a".into()),
        ..Default::default()
    }));
    w.assigned("dev-01").await;
    assert_eq!(
        w.webhook.last_request().unwrap().0.url,
        "http://127.0.0.1:9/default"
    );
}

// ---- Lowest latency, capabilities, device IDs, tenants --------------------

#[tokio::test]
async fn lowest_latency_skips_the_slow_hub_until_it_recovers() {
    let w = world(&[("hub-a", 1), ("hub-b", 1), ("hub-c", 1)]).await;
    let mut g = conformance::group("fleet");
    g.allocation_policy = Some(AllocationPolicy::GeoLatency);
    w.put(&g).await;
    w.latency.set("hub-a", Some(1.0));
    w.latency.set("hub-b", Some(2.0));
    w.latency.set("hub-c", Some(150.0));
    let count = |from: usize, n: usize| {
        let w = &w;
        async move {
            let mut counts = std::collections::HashMap::<String, usize>::new();
            for i in from..from + n {
                let id = format!("geo-{i}");
                let hub = w
                    .register_with_key(&id, &member_key(&id))
                    .await
                    .unwrap()
                    .registration_state
                    .unwrap()
                    .assigned_hub
                    .unwrap();
                *counts.entry(hub).or_default() += 1;
            }
            counts
        }
    };
    let slow = count(0, 300).await;
    assert_eq!(slow.get("hub-c"), None, "{slow:?}");
    assert!(slow["hub-a"] > 100 && slow["hub-b"] > 100, "{slow:?}");
    w.latency.set("hub-c", Some(1.5));
    let fast = count(300, 300).await;
    assert!(fast["hub-c"] > 60, "{fast:?}");
}

#[tokio::test]
async fn edge_enrollments_create_edge_devices_and_device_id_overrides_the_registration_id() {
    let w = world(&[("hub-a", 1)]).await;
    let mut e = conformance::enrollment("gateway-1");
    e.capabilities = Some(onramp_model::DeviceCapabilities { iot_edge: true });
    e.device_id = Some("edge-gw-001".into());
    w.put(&e).await;
    let state = w.assigned("gateway-1").await;
    assert_eq!(state.device_id.as_deref(), Some("edge-gw-001"));
    let device = w.hubs.device("hub-a", "edge-gw-001").unwrap();
    assert!(device.capabilities.iot_edge);
}

#[tokio::test]
async fn tenants_with_colliding_registration_ids_stay_apart() {
    let w = one_device_on_hub_a().await;
    let other = conformance::service("other", 0xB0B0);
    w.store
        .create_service(&other, &[conformance::owner("b3RoZXI=")])
        .await
        .unwrap();
    given(&*w.store, "other", conformance::hub("hub-z")).await;
    let mut theirs = conformance::enrollment("dev-01");
    let their_key = "dGhlaXItZGV2aWNlLWtleS0xMjM0NTY3ODkwMTI=";
    theirs
        .attestation
        .as_mut()
        .unwrap()
        .symmetric_key
        .as_mut()
        .unwrap()
        .primary_key = Some(onramp_model::Secret::new(their_key));
    w.store
        .put("other", theirs.clone(), Precondition::None, at(NOW))
        .await
        .unwrap();

    // A valid token of scope A does not open scope B.
    let mut req = w.signed("dev-01");
    req.id_scope = other.id_scope.to_string();
    let err = w.engine.register(req).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);

    // Each tenant's dev-01 registers with its own key, into its own hub.
    w.register_with_key("dev-01", &primary()).await.unwrap();
    let resource = format!("{}/registrations/dev-01", other.id_scope);
    let token = sas::sign(&resource, their_key, NOW + 3600, Some("registration")).unwrap();
    let mut req = w.request("dev-01", DeviceCredential::SasToken(token));
    req.id_scope = other.id_scope.to_string();
    let theirs = w.registered(req).await;
    assert_eq!(theirs.assigned_hub.as_deref(), Some("hub-z"));
    let ours = w.record("dev-01").await.unwrap();
    assert_eq!(ours.state.assigned_hub.as_deref(), Some("hub-a"));
    assert_ne!(ours.state.etag, theirs.etag);
}

/// Holds the first caller that passes until released, and lets every later
/// one through at once.
#[derive(Default)]
struct Gate {
    calls: AtomicUsize,
    entered: Notify,
    release: Notify,
}

impl Gate {
    async fn pass(&self) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }

    /// Waits until the first caller is held.
    async fn holds_one(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.entered.notified())
            .await
            .unwrap();
    }
}

/// Holds the first device registration until released (once it is
/// recorded); passes everything else to the recording hubs.
struct GatedHubs {
    inner: Arc<RecordingHubs>,
    gate: Gate,
}

#[async_trait::async_trait]
impl HubRegistry for GatedHubs {
    async fn register_device(
        &self,
        hub: &LinkedHub,
        device: &DeviceIdentity,
    ) -> Result<(), HubError> {
        let result = self.inner.register_device(hub, device).await;
        self.gate.pass().await;
        result
    }

    async fn twin(
        &self,
        hub: &LinkedHub,
        device_id: &str,
    ) -> Result<Option<TwinSnapshot>, HubError> {
        self.inner.twin(hub, device_id).await
    }

    async fn remove_device(&self, hub: &LinkedHub, device_id: &str) -> Result<(), HubError> {
        self.inner.remove_device(hub, device_id).await
    }
}

#[tokio::test]
async fn a_newer_registration_ends_an_older_one_that_waits_on_its_webhook() {
    let w = world(&[("hub-a", 1), ("hub-b", 1)]).await;
    w.put(&custom_enrollment("racer")).await;
    // A: its webhook does not answer (it is being retried, say).
    let gate = Arc::new(Gate::default());
    w.webhook.hold_next({
        let gate = gate.clone();
        async move { gate.pass().await }
    });
    w.webhook.answer(Ok(AllocationResponse {
        iot_hub_host_name: Some("hub-b".into()),
        ..Default::default()
    }));
    let first = w.signed("racer");
    let slow = tokio::spawn({
        let engine = w.engine.clone();
        async move { engine.register(first).await }
    });
    gate.holds_one().await;
    // B: the device registers again and is assigned to hub-b; A ends at
    // once, without its webhook ever answering.
    let done = w.engine.register(w.signed("racer")).await.unwrap();
    assert_eq!(
        done.registration_state.unwrap().assigned_hub.as_deref(),
        Some("hub-b")
    );
    let err = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::RegistrationSuperseded,
        "{}",
        err.message
    );
    assert!(w.hubs.device("hub-a", "racer").is_none());
}

#[tokio::test]
async fn a_registration_overtaken_by_a_newer_one_records_nothing_and_leaves_no_identity() {
    // A: its hub call to hub-a is slow.
    let Race {
        w,
        mut e,
        gated,
        engine,
        slow,
    } = a_held_registration().await;
    // B: the enrollment now names hub-b, and the device registers again.
    w.point_at(&mut e, "hub-b").await;
    let newer = w.signed("racer");
    let done = engine.register(newer).await.unwrap();
    // A ends after B: it records nothing, and the identity it made is gone.
    the_later_registration_stays(&w, &gated, slow, done).await;
}

/// Device `racer`, enrolled for hub-a (of hub-a and hub-b), registering
/// through an engine whose hub call is held: registration A.
struct Race {
    w: World,
    e: IndividualEnrollment,
    gated: Arc<GatedHubs>,
    engine: Arc<Engine>,
    slow: tokio::task::JoinHandle<Result<RegistrationOperationStatus, ProvisioningError>>,
}

async fn a_held_registration() -> Race {
    let w = world(&[("hub-a", 1), ("hub-b", 1)]).await;
    let e = w.enrollment_on("racer", &["hub-a"], (true, false));
    w.put(&e).await;
    let (gated, engine) = gated_engine_of(&w, EngineConfig::default());
    let first = w.signed("racer");
    let slow = tokio::spawn({
        let engine = engine.clone();
        async move { engine.register(first).await }
    });
    gated.gate.holds_one().await;
    Race {
        w,
        e,
        gated,
        engine,
        slow,
    }
}

/// B (`done`) was assigned to hub-b while A's hub call to hub-a was held:
/// A, released now, is refused as superseded, and B's record and identity
/// stay while A's identity is gone.
async fn the_later_registration_stays(
    w: &World,
    gated: &GatedHubs,
    slow: tokio::task::JoinHandle<Result<RegistrationOperationStatus, ProvisioningError>>,
    done: RegistrationOperationStatus,
) {
    assert_eq!(
        done.registration_state.unwrap().assigned_hub.as_deref(),
        Some("hub-b")
    );
    gated.gate.release.notify_one();
    let err = slow.await.unwrap().unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::RegistrationSuperseded,
        "{}",
        err.message
    );
    let record = w.record("racer").await.unwrap();
    assert_eq!(record.operation_id, done.operation_id);
    assert_eq!(record.state.assigned_hub.as_deref(), Some("hub-b"));
    assert!(w.hubs.device("hub-b", "racer").is_some());
    assert!(w.hubs.device("hub-a", "racer").is_none());
}

/// An engine over `w`'s store and clock whose first hub registration waits
/// for its gate.
fn gated_engine_of(w: &World, config: EngineConfig) -> (Arc<GatedHubs>, Arc<Engine>) {
    let gated = Arc::new(GatedHubs {
        inner: w.hubs.clone(),
        gate: Gate::default(),
    });
    let engine = Arc::new(Engine::new(
        w.store.clone(),
        gated.clone(),
        w.clock.clone(),
        config,
    ));
    (gated, engine)
}

// ---- Reply budget and shutdown ----------------------------------------------

/// A registration of `slow-dev` through an engine whose register calls wait
/// 50 ms before they answer: answered `assigning`, while its hub call waits
/// for the gate.
struct Waiting {
    w: World,
    gated: Arc<GatedHubs>,
    engine: Arc<Engine>,
    first: RegistrationOperationStatus,
}

async fn waiting() -> Waiting {
    waiting_with(EngineConfig::default()).await
}

/// One registration waiting on its hub, in an engine with `config` (whose
/// reply budget is set short).
async fn waiting_with(config: EngineConfig) -> Waiting {
    let w = world(&[("hub-a", 1)]).await;
    w.enroll("slow-dev").await;
    let config = EngineConfig {
        reply_budget: Duration::from_millis(50),
        ..config
    };
    let (gated, engine) = gated_engine_of(&w, config);
    let first = engine.register(w.signed("slow-dev")).await.unwrap();
    assert_eq!(first.status, RegistrationStatus::Assigning);
    gated.gate.holds_one().await;
    Waiting {
        w,
        gated,
        engine,
        first,
    }
}

impl Waiting {
    /// What the engine answers a poll of the waiting registration.
    async fn poll(&self) -> RegistrationOperationStatus {
        let poll = self.w.poll("slow-dev", &self.first.operation_id);
        self.engine.operation_status(poll).await.unwrap()
    }
}

#[tokio::test]
async fn a_registration_past_its_reply_budget_is_answered_assigning_and_goes_on() {
    let slow = waiting().await;
    let first = &slow.first;
    assert!(first.registration_state.is_none(), "{first:?}");
    assert!(
        first.operation_id.starts_with("1."),
        "{}",
        first.operation_id
    );
    assert_eq!(slow.poll().await.status, RegistrationStatus::Assigning);

    // The work finishes after the answer; the drain waits for it, and the
    // poll then reads the record it wrote.
    let (drained, ()) = tokio::join!(slow.engine.drain(Duration::from_secs(10)), async {
        slow.gated.gate.release.notify_one()
    });
    assert_eq!(
        drained,
        Drained {
            in_flight: 1,
            cut: 0
        }
    );
    let poll = slow.poll().await;
    assert_eq!(poll.status, RegistrationStatus::Assigned);
    assert_eq!(
        poll.registration_state.unwrap().assigned_hub.as_deref(),
        Some("hub-a")
    );
}

#[tokio::test]
async fn a_draining_engine_refuses_new_registrations_and_counts_those_it_cuts() {
    let slow = waiting().await;
    assert_eq!(
        slow.engine.drain(Duration::from_millis(50)).await,
        Drained {
            in_flight: 1,
            cut: 1
        }
    );
    let again = slow.w.signed("slow-dev");
    let err = slow.engine.register(again).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ShuttingDown, "{}", err.message);
    assert_eq!(err.http_status(), 503);
    // Polls are still answered while the server stops.
    assert_eq!(slow.poll().await.status, RegistrationStatus::Assigning);
    slow.gated.gate.release.notify_one();
}

#[tokio::test]
async fn an_engine_running_its_bound_of_registrations_sheds_new_ones() {
    let slow = waiting_with(EngineConfig {
        max_registrations_in_flight: 1,
        ..EngineConfig::default()
    })
    .await;
    assert_eq!(slow.engine.registrations_in_flight(), 1);
    slow.w.enroll("other-dev").await;
    let err = slow
        .engine
        .register(slow.w.signed("other-dev"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ServerBusy, "{}", err.message);
    assert_eq!(err.http_status(), 503);
    assert_eq!(err.retry_after, Some(2));
    // Nothing ran for it: the hub saw only the waiting registration.
    assert_eq!(slow.engine.registrations_in_flight(), 1);
    // Once the running one ends, the device that waited is served.
    slow.gated.gate.release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), async {
        while slow.engine.registrations_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let served = slow
        .engine
        .register(slow.w.signed("other-dev"))
        .await
        .unwrap();
    assert_eq!(served.status, RegistrationStatus::Assigned);
}

// ---- Several nodes on one store ----------------------------------------------

/// A registration still running on one node is `assigning` to a poll through
/// another node on the same store (it has no in-flight map entry there), as
/// long as the first node's lease lasts; then its record answers.
#[tokio::test]
async fn a_poll_through_another_node_hears_assigning_while_the_lease_lasts() {
    let slow = waiting().await;
    let other = slow.w.engine.clone();
    let op = slow.first.operation_id.clone();
    let poll = || other.operation_status(slow.w.poll("slow-dev", &op));
    let heard = poll().await.unwrap();
    assert_eq!(heard.status, RegistrationStatus::Assigning);
    assert_eq!(
        heard.registration_state.unwrap().registration_id,
        "slow-dev"
    );
    let running = slow
        .w
        .store
        .operation(&DeviceAt::new("default", &IdKey::of("slow-dev")))
        .await
        .unwrap()
        .expect("the running registration is recorded");
    assert_eq!(running.operation_id, op);

    // Past the lease, the node is taken for dead: the poll answers as for an
    // operation that ended without a record.
    slow.w.clock.advance_seconds(31);
    let err = poll().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OperationNotFound, "{}", err.message);

    // The node finishes: its record answers, and the running entry is gone.
    slow.gated.gate.release.notify_one();
    slow.engine.drain(Duration::from_secs(10)).await;
    let done = poll().await.unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    assert!(
        slow.w
            .store
            .operation(&DeviceAt::new("default", &IdKey::of("slow-dev")))
            .await
            .unwrap()
            .is_none()
    );
}

/// Two nodes register the same device at about the same time: the older
/// registration, finishing last on its node, is refused by the store; it
/// removes the identity it made, and the newer one's record stays.
#[tokio::test]
async fn the_newest_registration_wins_across_nodes() {
    // Node A: its hub call to hub-a is slow.
    let Race {
        w,
        mut e,
        gated,
        slow,
        ..
    } = a_held_registration().await;
    // Node B (w's engine, which knows nothing of A's registration): the
    // enrollment now names hub-b, and the device registers again, later.
    w.clock.advance_seconds(1);
    w.point_at(&mut e, "hub-b").await;
    let done = w.engine.register(w.signed("racer")).await.unwrap();
    // A ends after B: the store refuses its record as overtaken.
    the_later_registration_stays(&w, &gated, slow, done).await;
}

/// The wall clock jumping back (an NTP correction, a host restored from a
/// snapshot) and then forward: a device registers again and is assigned
/// whichever way the clock went, an operation polled after the jump is
/// still answered until it is old by the new clock, and a token is judged
/// by the clock of the moment (a token past its expiry after the jump
/// forward is refused, a fresh one accepted).
#[tokio::test]
async fn the_clock_jumping_back_and_forward() {
    let w = one_device_on_hub_a().await;
    let first = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(first.status, RegistrationStatus::Assigned);

    // An hour back: the device registers again and is assigned; the record
    // is the new registration's, and both operations are answered.
    w.clock.advance_seconds(-3600);
    let back = w.register_with_key("dev-01", &primary()).await.unwrap();
    assert_eq!(back.status, RegistrationStatus::Assigned, "{back:?}");
    assert_eq!(
        w.record("dev-01").await.unwrap().operation_id,
        back.operation_id,
        "the registration after the jump is the device's record"
    );
    assert!(w.polled("dev-01", &back.operation_id).await.is_ok());
    assert_eq!(
        w.hubs.device("hub-a", "dev-01").unwrap().twin,
        TwinSetup::Keep
    );

    // Two days forward: the token signed for an hour after NOW has expired
    // by the new clock; a fresh one is good; old operations are gone.
    w.clock.advance_seconds(3600 + 2 * 86_400);
    let stale = w.register_with_key("dev-01", &primary()).await.unwrap_err();
    assert_eq!(stale.code, ErrorCode::Unauthorized, "{stale:?}");
    let fresh = w.token("dev-01", &primary(), NOW + 3 * 86_400);
    let forward = w.engine.register(w.request("dev-01", fresh)).await.unwrap();
    assert_eq!(forward.status, RegistrationStatus::Assigned, "{forward:?}");
    for old in [&first.operation_id, &back.operation_id] {
        let mut poll = w.poll("dev-01", old);
        poll.credential = w.token("dev-01", &primary(), NOW + 3 * 86_400);
        let err = w.engine.operation_status(poll).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::OperationNotFound, "{err:?}");
    }
    assert_eq!(w.hubs.count(), 1, "one identity throughout");
}
