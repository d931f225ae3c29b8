//! Each registration attempt leaves one diagnostic entry with the reason an
//! operator needs, whatever the outcome: in process, over the testkit's
//! ports.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;
use std::time::Duration;

use onramp_core::attest::DeviceCredential;
use onramp_core::engine::{Engine, EngineConfig, RegisterRequest};
use onramp_core::events::Protocol;
use onramp_core::ports::{
    DiagnosticEntry, DiagnosticsLog, DiagnosticsQuery, HubError, Outcome, Step, Store, WebhookError,
};
use onramp_core::sas;
use onramp_model::{
    AllocationPolicy, AttestationType, CustomAllocationDefinition, DeviceRegistration, ErrorCode,
    IdKey, ProvisioningStatus, UtcTime,
};
use onramp_testkit::{
    ManualClock, MemoryStore, RecordingHubs, ScriptedWebhook, conformance, default_service, given,
};

struct Site {
    store: Arc<MemoryStore>,
    hubs: Arc<RecordingHubs>,
    webhook: Arc<ScriptedWebhook>,
    engine: Arc<Engine>,
    scope: String,
}

async fn site() -> Site {
    let (store, service) = default_service(0x0D1A).await;
    given(&*store, "default", conformance::hub("hub-a")).await;
    let hubs = Arc::new(RecordingHubs::default());
    let webhook = Arc::new(ScriptedWebhook::default());
    let clock = Arc::new(ManualClock::new(UtcTime::now()));
    let engine = Arc::new(
        Engine::new(store.clone(), hubs.clone(), clock, EngineConfig::default())
            .with_webhook(webhook.clone()),
    );
    Site {
        store,
        hubs,
        webhook,
        engine,
        scope: service.id_scope.to_string(),
    }
}

/// The key every fixture enrollment holds.
fn enrolled_key() -> String {
    let e = conformance::enrollment("x");
    let keys = e.attestation.unwrap().symmetric_key.unwrap();
    keys.primary_key.unwrap().expose().to_owned()
}

impl Site {
    fn token(&self, id: &str, key: &str) -> DeviceCredential {
        let resource = format!("{}/registrations/{id}", self.scope);
        let expiry = UtcTime::now().unix_seconds() + 3600;
        DeviceCredential::SasToken(sas::sign(&resource, key, expiry, Some("registration")).unwrap())
    }

    /// Registers `id` over HTTPS with `key`; the device's answer is not what
    /// these tests look at.
    async fn register(&self, id: &str, key: &str) {
        let _ = self
            .engine
            .register(RegisterRequest {
                id_scope: self.scope.clone(),
                registration_id: id.to_owned(),
                credential: self.token(id, key),
                body: DeviceRegistration::default(),
                force_registration: false,
                protocol: Protocol::Https,
                client_addr: Some("192.0.2.7".parse().unwrap()),
            })
            .await;
    }

    /// The one entry `id` left.
    async fn entry_of(&self, id: &str) -> DiagnosticEntry {
        assert!(
            self.engine
                .diagnostics()
                .flush(Duration::from_secs(5))
                .await
        );
        let query = DiagnosticsQuery {
            registration: Some(IdKey::of(id)),
            outcome: None,
            since: None,
            top: 10,
        };
        let mut found = self.store.diagnostics("default", &query).await.unwrap();
        assert_eq!(found.len(), 1, "{found:#?}");
        found.remove(0)
    }
}

#[tokio::test]
async fn an_assigned_device_leaves_where_it_went() {
    let s = site().await;
    given(&*s.store, "default", conformance::enrollment("meter-1")).await;
    s.register("meter-1", &enrolled_key()).await;
    let e = s.entry_of("meter-1").await;
    assert_eq!((e.outcome, e.step), (Outcome::Assigned, Step::Done));
    assert_eq!(e.service, "default");
    assert_eq!(e.protocol, "https");
    assert_eq!(e.client_address.as_deref(), Some("192.0.2.7"));
    assert_eq!(e.attestation, Some(AttestationType::SymmetricKey));
    assert_eq!(e.enrollment.as_deref(), Some("individual:meter-1"));
    assert_eq!(e.assigned_hub.as_deref(), Some("hub-a"));
    assert_eq!(e.device_id.as_deref(), Some("meter-1"));
    assert_eq!(e.error_code, None);
    assert!(e.operation_id.is_some());
    assert!(e.message.contains("hub 'hub-a'"), "{}", e.message);
}

/// `entry` is a refusal with `code`, naming `enrollment`, whose message says `says`.
#[track_caller]
fn assert_refused(entry: &DiagnosticEntry, code: ErrorCode, enrollment: Option<&str>, says: &str) {
    assert_eq!(entry.outcome, Outcome::Refused);
    assert_eq!(entry.error_code, Some(code.code() as i32));
    assert_eq!(entry.enrollment.as_deref(), enrollment);
    assert!(entry.message.contains(says), "{}", entry.message);
}

#[tokio::test]
async fn refusals_name_the_failed_check_and_leave_no_record() {
    let s = site().await;
    given(&*s.store, "default", conformance::enrollment("meter-1")).await;
    let mut off = conformance::enrollment("meter-2");
    off.provisioning_status = Some(ProvisioningStatus::Disabled);
    given(&*s.store, "default", off).await;

    let wrong = sas::derive_device_key(&enrolled_key(), "not-the-key").unwrap();
    s.register("meter-1", &wrong).await;
    s.register("meter-2", &enrolled_key()).await;
    s.register("stranger", &enrolled_key()).await;

    let wrong_key = s.entry_of("meter-1").await;
    assert_refused(
        &wrong_key,
        ErrorCode::Unauthorized,
        Some("individual:meter-1"),
        "matches neither key",
    );
    assert_eq!(wrong_key.step, Step::Attest);
    assert_eq!(wrong_key.operation_id, None);
    assert_refused(
        &s.entry_of("meter-2").await,
        ErrorCode::EnrollmentDisabled,
        Some("individual:meter-2"),
        "is disabled",
    );
    assert_refused(
        &s.entry_of("stranger").await,
        ErrorCode::EnrollmentNotFound,
        None,
        "'stranger'",
    );

    // Refusals leave no registration record and no hub identity.
    assert_eq!(s.hubs.count(), 0);
    for id in ["meter-1", "meter-2", "stranger"] {
        let record = s
            .store
            .record(&onramp_core::ports::RecordAt::new(
                "default",
                onramp_core::ports::RecordKind::Registration,
                &IdKey::of(id),
            ))
            .await
            .unwrap();
        assert!(record.is_none(), "{id}");
    }
}

#[tokio::test]
async fn failures_say_which_step_failed() {
    let s = site().await;
    let mut custom = conformance::enrollment("oven-1");
    custom.allocation_policy = Some(AllocationPolicy::Custom);
    custom.custom_allocation_definition = Some(CustomAllocationDefinition {
        webhook_url: "https://alloc.example.net/api/choose?code=s3cret".into(),
        api_version: "2021-10-01".into(),
    });
    given(&*s.store, "default", custom).await;
    s.webhook.answer(Err(WebhookError::Status {
        status: 500,
        body: "boom".into(),
    }));
    s.register("oven-1", &enrolled_key()).await;
    let webhook = s.entry_of("oven-1").await;
    assert_eq!(
        (webhook.outcome, webhook.step),
        (Outcome::Failed, Step::Allocate)
    );
    assert_eq!(webhook.enrollment.as_deref(), Some("individual:oven-1"));
    assert!(
        webhook.message.contains("answered HTTP 500") && !webhook.message.contains("s3cret"),
        "{}",
        webhook.message
    );

    given(&*s.store, "default", conformance::enrollment("oven-2")).await;
    s.hubs
        .fail(Some(HubError::Unreachable("connection refused".into())));
    s.register("oven-2", &enrolled_key()).await;
    let hub = s.entry_of("oven-2").await;
    assert_eq!((hub.outcome, hub.step), (Outcome::Failed, Step::Hub));
    assert_eq!(
        hub.error_code,
        Some(ErrorCode::HubRegistrationFailed.code() as i32)
    );
    assert!(hub.message.contains("hub 'hub-a'"), "{}", hub.message);
}

#[tokio::test]
async fn a_connection_refused_at_connect_is_one_entry_of_its_protocol() {
    let s = site().await;
    given(&*s.store, "default", conformance::enrollment("meter-1")).await;
    let wrong = sas::derive_device_key(&enrolled_key(), "not-the-key").unwrap();
    let refused = s
        .engine
        .check_device(
            &s.scope,
            "meter-1",
            &s.token("meter-1", &wrong),
            Protocol::Mqtt,
            Some("192.0.2.8".parse().unwrap()),
        )
        .await;
    assert!(refused.is_err());
    // An accepted connection is no attempt's end: its register is.
    s.engine
        .check_device(
            &s.scope,
            "meter-1",
            &s.token("meter-1", &enrolled_key()),
            Protocol::MqttWs,
            None,
        )
        .await
        .unwrap();
    let e = s.entry_of("meter-1").await;
    assert_eq!((e.protocol.as_str(), e.outcome), ("mqtt", Outcome::Refused));
    assert_eq!(e.client_address.as_deref(), Some("192.0.2.8"));
}

#[tokio::test]
async fn an_attempt_refused_before_its_service_was_read_is_kept_in_that_service() {
    let s = site().await;
    // The registration ID in the body differs: refused before any read.
    let _ = s
        .engine
        .register(RegisterRequest {
            id_scope: s.scope.clone(),
            registration_id: "meter-9".into(),
            credential: s.token("meter-9", &enrolled_key()),
            body: DeviceRegistration {
                registration_id: Some("meter-8".into()),
                ..Default::default()
            },
            force_registration: false,
            protocol: Protocol::Amqp,
            client_addr: None,
        })
        .await;
    let e = s.entry_of("meter-9").await;
    assert_eq!((e.outcome, e.protocol.as_str()), (Outcome::Refused, "amqp"));
    assert_eq!(
        e.error_code,
        Some(ErrorCode::RegistrationIdMismatch.code() as i32)
    );
    // An unknown ID scope belongs to no service: nothing is kept.
    let _ = s
        .engine
        .check_device(
            "0ne00000000",
            "meter-9",
            &DeviceCredential::None,
            Protocol::Mqtt,
            None,
        )
        .await;
    let _ = s.entry_of("meter-9").await;
}
