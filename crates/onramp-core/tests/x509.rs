//! X.509 attestation rules over in-memory ports: which enrollment vouches for
//! a certificate chain, and every reason to refuse one.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use onramp_core::admin::EnrollmentResource;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::{Engine, RegisterRequest};
use onramp_core::events::Protocol;
use onramp_core::ports::RegistrationRecord;
use onramp_core::ports::StoreExt;
use onramp_core::ports::{IdentityAuth, Store};
use onramp_core::tenant::CaCertificate;
use onramp_model::IdKey;
use onramp_model::{
    AttestationMechanism, AttestationType, DeviceRegistration, EnrollmentGroup, ErrorCode,
    IndividualEnrollment, ProvisioningStatus, RegistrationOperationStatus, RegistrationStatus,
    UtcTime, X509Attestation, X509CaReferences, X509CertificateWithInfo, X509Certificates,
};
use onramp_net::pki::dev_certs::{Issued, Validity};
use onramp_testkit::{ManualClock, MemoryStore, RecordingHubs, conformance, engine_over, given};

struct World {
    store: Arc<MemoryStore>,
    hubs: Arc<RecordingHubs>,
    engine: Arc<Engine>,
    scope: String,
    clock: Arc<ManualClock>,
}

async fn world() -> World {
    let store = Arc::new(MemoryStore::new());
    let svc = conformance::service("default", 0x5A5A);
    store.create_service(&svc, &[]).await.unwrap();
    given(&*store, "default", conformance::hub("hub-a")).await;
    let (engine, hubs, clock) = engine_over(store.clone(), UtcTime::now());
    World {
        store,
        hubs,
        engine,
        scope: svc.id_scope.to_string(),
        clock,
    }
}

fn certs(primary: &Issued) -> X509Certificates {
    X509Certificates {
        primary: Some(X509CertificateWithInfo {
            certificate: Some(primary.cert_pem.clone()),
            info: Some(onramp_core::x509::info(&primary.cert_pem).unwrap()),
        }),
        secondary: None,
    }
}

fn x509(x: X509Attestation) -> Option<AttestationMechanism> {
    Some(AttestationMechanism {
        kind: AttestationType::X509,
        x509: Some(x),
        ..Default::default()
    })
}

impl World {
    /// Stores an enrollment of kind `E` called `id` with X.509 `attestation`
    /// and provisioning `status`.
    async fn enroll<E: EnrollmentResource + Default>(
        &self,
        id: &str,
        attestation: X509Attestation,
        status: ProvisioningStatus,
    ) {
        let mut e = E::default();
        e.set_id(id);
        *e.attestation_mut() = x509(attestation);
        *e.service_owned().provisioning_status = Some(status);
        given(&*self.store, "default", e).await;
    }

    async fn enroll_device(&self, id: &str, cert: &Issued, status: ProvisioningStatus) {
        let own = X509Attestation {
            client_certificates: Some(certs(cert)),
            ..Default::default()
        };
        self.enroll::<IndividualEnrollment>(id, own, status).await;
    }

    async fn enroll_group(&self, id: &str, signing: &Issued, status: ProvisioningStatus) {
        let signed_by = X509Attestation {
            signing_certificates: Some(certs(signing)),
            ..Default::default()
        };
        self.enroll::<EnrollmentGroup>(id, signed_by, status).await;
    }

    async fn register(
        &self,
        id: &str,
        chain: &[&Issued],
    ) -> Result<RegistrationOperationStatus, onramp_core::ProvisioningError> {
        self.engine
            .register(RegisterRequest {
                id_scope: self.scope.clone(),
                registration_id: id.into(),
                credential: DeviceCredential::X509Chain(
                    chain.iter().map(|c| c.cert_der.clone()).collect(),
                ),
                body: DeviceRegistration::default(),
                force_registration: false,
                protocol: Protocol::Internal,
                client_addr: None,
            })
            .await
    }

    /// Registers `id` with `chain`, which must be assigned.
    async fn assigned(&self, id: &str, chain: &[&Issued]) -> RegistrationOperationStatus {
        let op = self.register(id, chain).await.unwrap();
        assert_eq!(op.status, RegistrationStatus::Assigned, "{id}");
        op
    }

    /// The group that vouches for `id` registering with `chain`; the
    /// registration must succeed.
    async fn vouching_group(&self, id: &str, chain: &[&Issued]) -> Option<String> {
        let op = self.register(id, chain).await.unwrap();
        op.registration_state
            .unwrap()
            .x509
            .unwrap()
            .enrollment_group_id
    }

    /// Registering `id` with `chain` is refused because the chain leads to
    /// no trusted certificate.
    async fn refused_as_untrusted(&self, id: &str, chain: &[&Issued], what: &str) {
        self.refused(id, chain, ErrorCode::CertificateUntrusted, what)
            .await;
    }

    /// Registering `id` with `chain` is refused because an enrollment is disabled.
    async fn refused_as_disabled(&self, id: &str, chain: &[&Issued], what: &str) {
        self.refused(id, chain, ErrorCode::EnrollmentDisabled, what)
            .await;
    }

    async fn refused(&self, id: &str, chain: &[&Issued], code: ErrorCode, what: &str) {
        let err = self.register(id, chain).await.map(|_| ()).unwrap_err();
        assert_eq!(err.code, code, "{what}: {}", err.message);
        assert!(
            self.store
                .get::<RegistrationRecord>("default", &IdKey::of(&id.to_ascii_lowercase()))
                .await
                .unwrap()
                .is_none(),
            "{what}: recorded"
        );
    }
}

fn days(n: i64) -> Validity {
    Validity::days(n)
}

/// Valid from `from` days to `to` days from now; negative days are past.
fn valid_between(from: i64, to: i64) -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now + time::Duration::days(from),
        not_after: now + time::Duration::days(to),
    }
}

#[tokio::test]
async fn an_individual_enrollment_with_a_self_signed_certificate() {
    let w = world().await;
    let device = Issued::self_signed_device("x-dev-1", days(30)).unwrap();
    w.enroll_device("x-dev-1", &device, ProvisioningStatus::Enabled)
        .await;
    let op = w.assigned("x-dev-1", &[&device]).await;
    let state = op.registration_state.unwrap();
    let x = state.x509.unwrap();
    let info = x.certificate_info.unwrap();
    assert_eq!(info.subject_name, "CN=x-dev-1");
    assert_eq!(x.enrollment_group_id, None);
    let identity = w.hubs.device("hub-a", "x-dev-1").unwrap();
    assert_eq!(
        identity.auth,
        IdentityAuth::SelfSigned {
            primary_thumbprint: info.sha256_thumbprint.clone(),
            secondary_thumbprint: info.sha256_thumbprint
        }
    );
    // Another certificate with the same CN is not this device.
    let imposter = Issued::self_signed_device("x-dev-1", days(30)).unwrap();
    let err = w.register("x-dev-1", &[&imposter]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized, "{}", err.message);
    // …and the real device's hub identity is left as it was.
    assert_eq!(
        w.hubs.device("hub-a", "x-dev-1").unwrap().auth,
        identity.auth
    );
    // The service API shows the enrollment's registration in the service's
    // form: the device-side certificate details are not part of it.
    let admin = onramp_core::admin::Admin::new(w.store.clone(), w.clock.clone());
    let shown = admin
        .get::<onramp_model::IndividualEnrollment>("default", "x-dev-1")
        .await
        .unwrap();
    let state = shown.registration_state.unwrap();
    assert_eq!(state.status, RegistrationStatus::Assigned);
    assert_eq!(state.assigned_hub.as_deref(), Some("hub-a"));
    assert!(state.x509.is_none(), "{state:?}");
}

#[tokio::test]
async fn groups_by_root_and_by_intermediate_and_the_nearest_wins() {
    let w = world().await;
    let root = Issued::root("Root CA", days(365)).unwrap();
    let ica = root.intermediate("Line 7 CA", days(365)).unwrap();
    let device = ica.device("x-dev-2", days(30)).unwrap();
    w.enroll_group("by-root", &root, ProvisioningStatus::Enabled)
        .await;
    let op = w.register("x-dev-2", &[&device, &ica]).await.unwrap();
    let x = op.registration_state.unwrap().x509.unwrap();
    assert_eq!(x.enrollment_group_id.as_deref(), Some("by-root"));
    assert_eq!(
        x.signing_certificate_info.unwrap().subject_name,
        "CN=Root CA"
    );
    assert!(matches!(
        w.hubs.device("hub-a", "x-dev-2").unwrap().auth,
        IdentityAuth::CertificateAuthority { .. }
    ));

    // A group on the intermediate is nearer to the device than the root's.
    w.enroll_group("by-intermediate", &ica, ProvisioningStatus::Enabled)
        .await;
    let group = w.vouching_group("x-dev-2", &[&device, &ica]).await;
    assert_eq!(group.as_deref(), Some("by-intermediate"));
    // …also when the device sends only its own certificate.
    let group = w.vouching_group("x-dev-2", &[&device]).await;
    assert_eq!(group.as_deref(), Some("by-intermediate"));

    // The nearest entry decides, even when it is disabled.
    w.enroll_group("by-intermediate", &ica, ProvisioningStatus::Disabled)
        .await;
    let another = ica.device("x-dev-2b", days(30)).unwrap();
    w.refused_as_disabled("x-dev-2b", &[&another, &ica], "disabled intermediate group")
        .await;
}

#[tokio::test]
async fn a_verified_ca_reference_counts_and_an_unverified_one_does_not() {
    let w = world().await;
    let root = Issued::root("Referenced Root", days(365)).unwrap();
    let device = root.device("x-dev-3", days(30)).unwrap();
    let info = onramp_core::x509::info(&root.cert_pem).unwrap();
    let mut ca = CaCertificate {
        name: "my-root".into(),
        der: root.cert_der.clone(),
        subject: info.subject_name.clone(),
        thumbprint: info.sha1_thumbprint.clone(),
        sha256_thumbprint: info.sha256_thumbprint.clone(),
        not_after: info.not_after_utc,
        is_verified: false,
        verification_code: None,
        etag: None,
        created: UtcTime::now(),
        updated: UtcTime::now(),
    };
    given(&*w.store, "default", ca.clone()).await;
    let g = EnrollmentGroup {
        enrollment_group_id: "by-reference".into(),
        attestation: x509(X509Attestation {
            // CA names compare without case, as the service API's paths do.
            ca_references: Some(X509CaReferences {
                primary: Some("My-Root".into()),
                secondary: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    given(&*w.store, "default", g.clone()).await;
    let err = w.register("x-dev-3", &[&device]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CertificateUntrusted);
    assert!(err.message.contains("not verified"), "{}", err.message);

    ca.is_verified = true;
    given(&*w.store, "default", ca.clone()).await;
    let group = w.vouching_group("x-dev-3", &[&device]).await;
    assert_eq!(group.as_deref(), Some("by-reference"));
}

#[tokio::test]
async fn refusals_each_with_their_code() {
    let w = world().await;
    let root = Issued::root("Good Root", days(365)).unwrap();
    let ica = root.intermediate("Good ICA", days(365)).unwrap();
    w.enroll_group("good", &root, ProvisioningStatus::Enabled)
        .await;

    let rogue = Issued::root("Rogue Root", days(365)).unwrap();
    let from_rogue = rogue.device("x-rogue", days(30)).unwrap();
    w.refused_as_untrusted("x-rogue", &[&from_rogue], "untrusted root")
        .await;

    // 65 characters: a registration ID, but too long for an X.509 device.
    let long_id = format!("x-{}", "l".repeat(63));
    let long = root.device(&long_id, days(30)).unwrap();
    w.refused(
        &long_id,
        &[&long],
        ErrorCode::InvalidArgument,
        "registration ID over 64 characters",
    )
    .await;

    for (id, validity, what) in [
        ("x-expired", valid_between(-30, -1), "expired"),
        ("x-future", valid_between(1, 30), "not yet valid"),
    ] {
        let device = ica.device(id, validity).unwrap();
        w.refused(id, &[&device, &ica], ErrorCode::CertificateExpired, what)
            .await;
    }

    let device = ica.device("x-dev-4", days(30)).unwrap();
    w.refused_as_untrusted("x-dev-4", &[&device], "missing intermediate")
        .await;
    w.refused(
        "someone-else",
        &[&device, &ica],
        ErrorCode::CertificateNameMismatch,
        "CN differs from the registration ID",
    )
    .await;
    // The control: with its intermediate the same device is accepted.
    w.assigned("x-dev-4", &[&device, &ica]).await;

    // Revocation: a disabled individual enrollment for the intermediate blocks every device under it…
    let revoked_ica = root.intermediate("Revoked ICA", days(365)).unwrap();
    let under = revoked_ica.device("x-dev-5", days(30)).unwrap();
    w.assigned("x-dev-5", &[&under, &revoked_ica]).await;
    w.enroll_device("revoke-line-9", &revoked_ica, ProvisioningStatus::Disabled)
        .await;
    let also_under = revoked_ica.device("x-dev-6", days(30)).unwrap();
    let chain = [&also_under, &revoked_ica];
    w.refused_as_disabled("x-dev-6", &chain, "under a disabled intermediate")
        .await;

    // …and one for the device blocks it inside its enabled group.
    let blocked = ica.device("x-dev-7", days(30)).unwrap();
    w.enroll_device("x-dev-7", &blocked, ProvisioningStatus::Disabled)
        .await;
    let chain = [&blocked, &ica];
    w.refused_as_disabled("x-dev-7", &chain, "disabled device in an enabled group")
        .await;

    // A disabled group blocks the group.
    let other_root = Issued::root("Other Root", days(365)).unwrap();
    w.enroll_group("off", &other_root, ProvisioningStatus::Disabled)
        .await;
    let in_off = other_root.device("x-dev-8", days(30)).unwrap();
    w.refused_as_disabled("x-dev-8", &[&in_off], "disabled group")
        .await;
    assert_eq!(w.hubs.device("hub-a", "x-dev-8"), None);
}
