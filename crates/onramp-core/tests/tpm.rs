//! Onramp's activation blobs against a real TPM: `swtpm`, driven by
//! `tpm2-tools` the way a device drives its TPM (device protocol notes §5.4):
//! ActivateCredential with the EK, Import and Load under the SRK, then HMAC
//! with the imported key. The token so signed must pass Onramp's check.
//!
//! The TPM is `onramp_testkit::swtpm`'s. Needs the Debian packages `swtpm`,
//! `swtpm-tools` and `tpm2-tools` (scripts/test installs them); without them the test is skipped, unless
//! ONRAMP_REQUIRE_INTEROP is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_core::ProvisioningError;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::{OperationRequest, RegisterRequest, StatusRequest};
use onramp_core::events::Protocol;
use onramp_core::ports::{DiagnosticsLog, DiagnosticsQuery, IdentityAuth, Outcome};
use onramp_core::sas;
use onramp_core::tpm::{self, RsaPublic, TpmError};
use onramp_model::{
    AttestationType, DeviceRegistration, ErrorCode, IdKey, RegistrationStatus, TpmAttestation,
};
use onramp_testkit::given;
use onramp_testkit::swtpm::{Swtpm, data_dir, tools_installed};
use onramp_testkit::tpm_device::{TpmEnrolled, tpm_enrollment};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// A started software TPM with its EK and SRK, or `None` when the tools are
/// not installed and the test is skipped.
fn tpm_with_keys() -> Option<(Swtpm, RsaPublic, RsaPublic)> {
    if !tools_installed() {
        return None;
    }
    let tpm = Swtpm::start();
    let (ek, srk) = tpm.make_keys();
    Some((tpm, ek, srk))
}

#[test]
fn a_software_tpm_imports_the_blob_and_signs_a_token_onramp_accepts() {
    let Some((tpm, ek, srk)) = tpm_with_keys() else {
        return;
    };
    // The keys the SDKs' templates give are the same on every TPM but for
    // the modulus, so the checked-in vectors have this shape too.
    for (fresh, stored) in [(&ek, "ek.pub"), (&srk, "srk.pub")] {
        let stored = RsaPublic::parse(&std::fs::read(data_dir().join(stored)).unwrap()).unwrap();
        assert_eq!(fresh.as_bytes().len(), stored.as_bytes().len());
        assert_eq!(fresh.attributes(), stored.attributes());
        assert_eq!(fresh.auth_policy(), stored.auth_policy());
    }
    assert_eq!(ek.registration_id().len(), 52);

    // The challenge: a fresh key, signing a registration token.
    let expiry = now() + 3600;
    let resource = "0ne00TPM0A1/registrations/tpm-device-1";
    let challenge = tpm::challenge_key().unwrap();
    let blob = tpm::activation_blob(&ek, &srk, &challenge).unwrap();
    assert_eq!(blob.len(), 766);
    tpm.import(&blob).unwrap();
    let token = tpm.sign(resource, expiry, Some("registration"));
    assert_eq!(
        tpm::verify_token(&token, resource, &challenge, now(), 300),
        Ok(())
    );
    assert_eq!(
        tpm::verify_token(&token, resource, &[0x5a; 32], now(), 300),
        Err(TpmError::WrongKey)
    );

    // The second blob: a 64-byte hub device key, replacing the first; the
    // device signs hub tokens with it (no skn).
    let device_key: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37)).collect();
    let blob = tpm::activation_blob(&ek, &srk, &device_key).unwrap();
    assert_eq!(blob.len(), 798);
    tpm.import(&blob).unwrap();
    let resource = "hub-1.azure-devices.net/devices/tpm-device-1";
    let token = tpm.sign(resource, expiry, None);
    assert_eq!(
        tpm::verify_token(&token, resource, &device_key, now(), 300),
        Ok(())
    );
    assert_eq!(
        tpm::verify_token(&token, resource, &challenge, now(), 300),
        Err(TpmError::WrongKey)
    );
    // The hub's own check: a symmetric-key token verification with the same key.
    let parsed = sas::parse(&token).unwrap();
    assert!(parsed.is_signed_by(&STANDARD.encode(&device_key)));
}

#[test]
fn a_blob_for_another_tpm_or_another_srk_does_not_open() {
    let Some((tpm, ek, srk)) = tpm_with_keys() else {
        return;
    };
    let key = [0x11; 32];

    // Bound to another SRK's Name: the credential's integrity check fails.
    let other_srk = RsaPublic::storage_root_key(ek.modulus()).unwrap();
    let blob = tpm::activation_blob(&ek, &other_srk, &key).unwrap();
    let err = tpm.import(&blob).unwrap_err();
    assert!(err.contains("integrity check failed"), "{err}");

    // Encrypted to another TPM's EK (the checked-in one): this TPM cannot
    // decrypt the seed (libtpms answers TPM_RC_FAILURE for that).
    let foreign = RsaPublic::parse(&std::fs::read(data_dir().join("ek.pub")).unwrap()).unwrap();
    assert_ne!(foreign.modulus(), ek.modulus());
    let blob = tpm::activation_blob(&foreign, &srk, &key).unwrap();
    let err = tpm.import(&blob).unwrap_err();
    assert!(err.contains("Esys_ActivateCredential("), "{err}");

    // The TPM still opens a blob made for it.
    let blob = tpm::activation_blob(&ek, &srk, &key).unwrap();
    tpm.import(&blob).unwrap();
    let resource = "0ne00TPM0A1/registrations/tpm-device-2";
    let token = tpm.sign(resource, now() + 60, Some("registration"));
    assert_eq!(
        tpm::verify_token(&token, resource, &key, now(), 300),
        Ok(())
    );
}

// The challenge through the engine: what the HTTPS and AMQP device APIs
// run, with the TPM on the device's side.

/// The TPM device's setup, with the requests its tests send.
struct Provisioning(TpmEnrolled);

impl std::ops::Deref for Provisioning {
    type Target = TpmEnrolled;
    fn deref(&self) -> &TpmEnrolled {
        &self.0
    }
}

const TPM_DEVICE: &str = "tpm-device-1";

impl Provisioning {
    /// Why the TPM device's `token` does not open a connection over `protocol`.
    async fn token_refused_over(&self, token: &str, protocol: Protocol) -> ProvisioningError {
        let credential = DeviceCredential::SasToken(token.to_owned());
        self.engine
            .check_device(&self.scope, TPM_DEVICE, &credential, protocol, None)
            .await
            .unwrap_err()
    }
}

async fn provisioning(ek: &RsaPublic) -> Provisioning {
    Provisioning(TpmEnrolled::new(0x7A11, TPM_DEVICE, ek).await)
}

impl Provisioning {
    fn register(
        &self,
        credential: DeviceCredential,
        tpm: Option<TpmAttestation>,
    ) -> RegisterRequest {
        RegisterRequest {
            id_scope: self.scope.clone(),
            registration_id: TPM_DEVICE.into(),
            credential,
            body: DeviceRegistration {
                registration_id: Some(TPM_DEVICE.into()),
                tpm,
                ..Default::default()
            },
            force_registration: false,
            protocol: Protocol::Https,
            client_addr: None,
        }
    }

    /// The first request of a TPM device: its keys, no token.
    async fn ask_challenge(&self, ek: &RsaPublic, srk: &RsaPublic) -> ProvisioningError {
        let keys = DeviceCredential::Tpm {
            endorsement_key: ek.to_base64(),
            storage_root_key: Some(srk.to_base64()),
            endorsement_key_certificate: None,
        };
        let tpm = TpmAttestation {
            endorsement_key: ek.to_base64(),
            storage_root_key: Some(srk.to_base64()),
            ..Default::default()
        };
        self.engine
            .register(self.register(keys, Some(tpm)))
            .await
            .unwrap_err()
    }
}

#[tokio::test]
async fn a_tpm_device_provisions_through_the_challenge_and_gets_its_hub_key() {
    let Some((tpm, ek, srk)) = tpm_with_keys() else {
        return;
    };
    let p = provisioning(&ek).await;

    // 1. Keys without a token: the challenge, and nothing registered yet.
    let challenge = p.ask_challenge(&ek, &srk).await;
    assert_eq!(challenge.code, ErrorCode::Unauthorized);
    let blob = STANDARD.decode(challenge.tpm_challenge.unwrap()).unwrap();
    assert_eq!(p.hubs.count(), 0);

    // 2. The TPM opens it and signs the retry, sent without the tpm object
    //    (as Edge does): assigned, with the hub key wrapped for the TPM.
    tpm.import(&blob).unwrap();
    let token = tpm.sign(&p.resource(TPM_DEVICE), now() + 3600, Some("registration"));
    let op = p
        .engine
        .register(p.register(DeviceCredential::SasToken(token.clone()), None))
        .await
        .unwrap();
    let state = op.registration_state.unwrap();
    assert_eq!(state.status, RegistrationStatus::Assigned);
    assert_eq!(state.assigned_hub.as_deref(), Some("hub-a"));
    let hub_blob = STANDARD
        .decode(state.tpm.unwrap().authentication_key)
        .unwrap();

    // 3. That key is the hub identity's: the TPM signs a hub token with it
    //    that the hub's own check accepts.
    let identity = p.hubs.device("hub-a", TPM_DEVICE).unwrap();
    let IdentityAuth::SymmetricKey { primary, .. } = identity.auth else {
        panic!(
            "a TPM device's hub identity has symmetric keys: {:?}",
            identity.auth
        );
    };
    tpm.import(&hub_blob).unwrap();
    let hub_token = tpm.sign(&format!("hub-a/devices/{TPM_DEVICE}"), now() + 3600, None);
    assert!(
        sas::parse(&hub_token)
            .unwrap()
            .is_signed_by(primary.expose())
    );

    // 4. The challenge's token still reads this registration's status...
    let status = p
        .engine
        .operation_status(OperationRequest {
            id_scope: p.scope.clone(),
            registration_id: TPM_DEVICE.into(),
            credential: DeviceCredential::SasToken(token.clone()),
            operation_id: op.operation_id.clone(),
            protocol: Protocol::Https,
        })
        .await
        .unwrap();
    assert_eq!(status.status, RegistrationStatus::Assigned);

    // 5. ...but vouches for no second registration.
    let again = p
        .engine
        .register(p.register(DeviceCredential::SasToken(token.clone()), None))
        .await
        .unwrap_err();
    assert_refused(&again, ErrorCode::Unauthorized, "spent");

    // The challenge was a step of the first attempt, not an attempt: two
    // diagnostic entries, the replay refused and the registration assigned.
    assert!(p.engine.diagnostics().flush(Duration::from_secs(5)).await);
    let query = DiagnosticsQuery {
        registration: Some(IdKey::of(TPM_DEVICE)),
        outcome: None,
        since: None,
        top: 10,
    };
    let entries = p.store.diagnostics("default", &query).await.unwrap();
    let seen: Vec<_> = entries
        .iter()
        .map(|e| (e.outcome, e.attestation, e.enrollment.clone()))
        .collect();
    let enrollment = Some(format!("individual:{TPM_DEVICE}"));
    assert_eq!(
        seen,
        [
            (
                Outcome::Refused,
                Some(AttestationType::Tpm),
                enrollment.clone()
            ),
            (Outcome::Assigned, Some(AttestationType::Tpm), enrollment),
        ]
    );

    // 6. Once expired it reads nothing either.
    p.clock.advance_seconds(16 * 60);
    let late = p
        .engine
        .registration_status(StatusRequest {
            id_scope: p.scope.clone(),
            registration_id: TPM_DEVICE.into(),
            credential: DeviceCredential::SasToken(token),
            protocol: Protocol::Https,
        })
        .await
        .unwrap_err();
    assert_refused(&late, ErrorCode::Unauthorized, "expired");
}

#[tokio::test]
async fn a_challenge_is_refused_to_keys_that_are_not_enrolled_or_incomplete() {
    let (ek, srk) = checked_in_keys();
    let p = provisioning(&ek).await;

    // Another TPM's endorsement key.
    let other = RsaPublic::endorsement_key(&[0xC5; 256]).unwrap();
    let refused = p.ask_challenge(&other, &srk).await;
    assert_eq!(refused.code, ErrorCode::Unauthorized);
    assert_eq!(refused.tpm_challenge, None);
    assert!(
        refused.message.contains("endorsement key"),
        "{}",
        refused.message
    );

    // No storage root key anywhere: nothing to wrap the key for.
    let keys = DeviceCredential::Tpm {
        endorsement_key: ek.to_base64(),
        storage_root_key: None,
        endorsement_key_certificate: None,
    };
    let refused = p.engine.register(p.register(keys, None)).await.unwrap_err();
    assert_refused(&refused, ErrorCode::InvalidArgument, "tpm.storageRootKey");

    // A token before any challenge.
    let token = sas::sign(
        &p.resource(TPM_DEVICE),
        &STANDARD.encode([7u8; 32]),
        now() + 60,
        None,
    )
    .unwrap();
    let refused = p
        .engine
        .register(p.register(DeviceCredential::SasToken(token), None))
        .await
        .unwrap_err();
    assert_refused(&refused, ErrorCode::Unauthorized, "no TPM challenge");

    // A device without an enrollment.
    let mut req = p.register(
        DeviceCredential::Tpm {
            endorsement_key: ek.to_base64(),
            storage_root_key: Some(srk.to_base64()),
            endorsement_key_certificate: None,
        },
        None,
    );
    req.registration_id = "someone-else".into();
    req.body.registration_id = None;
    let refused = p.engine.register(req).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::EnrollmentNotFound);

    // The right keys: a challenge whose key the store keeps.
    let challenge = p.ask_challenge(&ek, &srk).await;
    assert!(challenge.tpm_challenge.is_some());
    let kept = p.kept_challenge().await;
    assert_eq!(kept.spent_by, None);
    assert_eq!(
        STANDARD.decode(kept.key.expose()).unwrap().len(),
        tpm::CHALLENGE_KEY_LEN
    );
}

/// The EK and SRK checked in beside these tests: no TPM is needed to be refused.
fn checked_in_keys() -> (RsaPublic, RsaPublic) {
    let read =
        |name: &str| RsaPublic::parse(&std::fs::read(data_dir().join(name)).unwrap()).unwrap();
    (read("ek.pub"), read("srk.pub"))
}

/// Asserts a refusal's Azure error code, and that its message names `what`.
fn assert_refused(e: &ProvisioningError, code: ErrorCode, what: &str) {
    assert_eq!(e.code, code, "{}", e.message);
    assert!(e.message.contains(what), "{}", e.message);
}

/// A token signed with the key of the challenge the store now keeps, as the
/// device would sign it after opening the blob.
async fn token_of_pending_challenge(p: &Provisioning) -> String {
    let kept = p.kept_challenge().await;
    sas::sign(
        &p.resource(TPM_DEVICE),
        kept.key.expose(),
        now() + 3600,
        Some("registration"),
    )
    .unwrap()
}

#[tokio::test]
async fn stale_replayed_malformed_disabled_and_mqtt_tpm_requests_are_refused() {
    let (ek, srk) = checked_in_keys();
    let p = provisioning(&ek).await;
    let signed = |token: &str| p.register(DeviceCredential::SasToken(token.to_owned()), None);

    // A malformed endorsement key.
    let keys = DeviceCredential::Tpm {
        endorsement_key: "AAAA".into(),
        storage_root_key: Some(srk.to_base64()),
        endorsement_key_certificate: None,
    };
    let refused = p.engine.register(p.register(keys, None)).await.unwrap_err();
    assert_refused(&refused, ErrorCode::InvalidArgument, "tpm.endorsementKey");

    // A second challenge replaces the first: the first key is stale.
    p.ask_challenge(&ek, &srk).await;
    let stale = token_of_pending_challenge(&p).await;
    p.ask_challenge(&ek, &srk).await;
    let fresh = token_of_pending_challenge(&p).await;
    let refused = p.engine.register(signed(&stale)).await.unwrap_err();
    assert_refused(&refused, ErrorCode::Unauthorized, "not signed with the key");

    // Over MQTT the fresh token is refused as TPM over the wrong protocol.
    let refused = p.token_refused_over(&fresh, Protocol::Mqtt).await;
    assert_refused(&refused, ErrorCode::UnsupportedAttestation, "HTTPS");

    // Over HTTPS it registers once; replayed, it is refused.
    let op = p.engine.register(signed(&fresh)).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Assigned);
    let replayed = p.engine.register(signed(&fresh)).await.unwrap_err();
    assert_refused(&replayed, ErrorCode::Unauthorized, "spent");
    // Nor does it open a new connection (AMQP authenticates before it
    // registers): the spent challenge is refused there already.
    let refused = p.token_refused_over(&fresh, Protocol::Amqp).await;
    assert_refused(&refused, ErrorCode::Unauthorized, "spent");

    // A disabled enrollment still gets a challenge (the key proves nothing
    // yet), and its signed retry is refused as disabled.
    let mut disabled = tpm_enrollment(TPM_DEVICE, &ek);
    disabled.provisioning_status = Some(onramp_model::ProvisioningStatus::Disabled);
    given(&*p.store, "default", disabled).await;
    p.ask_challenge(&ek, &srk).await;
    let token = token_of_pending_challenge(&p).await;
    let refused = p.engine.register(signed(&token)).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::EnrollmentDisabled);
}

/// The engine's clock jumping between a challenge and the signed retry: an
/// hour back, the challenge is still good and the device is assigned (and
/// registers again through a new challenge); past the challenge's life
/// forward, its token is refused as expired, and a fresh challenge works.
#[tokio::test]
async fn a_tpm_challenge_across_clock_jumps() {
    let Some((tpm, ek, srk)) = tpm_with_keys() else {
        return;
    };
    let p = provisioning(&ek).await;
    let signed_retry = |blob: Vec<u8>| {
        tpm.import(&blob).unwrap();
        let token = tpm.sign(
            &p.resource(TPM_DEVICE),
            now() + 3 * 3600,
            Some("registration"),
        );
        p.register(DeviceCredential::SasToken(token), None)
    };
    let challenge_blob = |e: ProvisioningError| STANDARD.decode(e.tpm_challenge.unwrap()).unwrap();

    let blob = challenge_blob(p.ask_challenge(&ek, &srk).await);
    p.clock.advance_seconds(-3600);
    let op = p.engine.register(signed_retry(blob)).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Assigned, "{op:?}");

    // Back at the hour it was: a new challenge, left until it has expired.
    p.clock.advance_seconds(3600);
    let blob = challenge_blob(p.ask_challenge(&ek, &srk).await);
    p.clock.advance_seconds(16 * 60);
    let late = p.engine.register(signed_retry(blob)).await.unwrap_err();
    assert_eq!(late.code, ErrorCode::Unauthorized, "{late:?}");
    let blob = challenge_blob(p.ask_challenge(&ek, &srk).await);
    let op = p.engine.register(signed_retry(blob)).await.unwrap();
    assert_eq!(op.status, RegistrationStatus::Assigned, "{op:?}");
    assert_eq!(p.hubs.count(), 1, "one identity throughout");
}
