//! The setup of a TPM device's tests through the engine: one service with a
//! linked hub and an individual enrollment of the device's endorsement key.

use std::sync::Arc;

use onramp_core::engine::Engine;
use onramp_core::ports::{StoreExt, TpmChallenge};
use onramp_core::tpm::RsaPublic;
use onramp_model::{
    AttestationMechanism, AttestationType, IdKey, IndividualEnrollment, TpmAttestation, UtcTime,
};

use crate::{
    ManualClock, MemoryStore, RecordingHubs, conformance, default_service, engine_over, given,
};

/// An engine over in-memory ports, with hub `hub-a` linked to service
/// `default` and `registration_id` enrolled with a TPM key; the clock starts
/// at the wall clock (a TPM signs tokens that expire in real time).
pub struct TpmEnrolled {
    pub engine: Arc<Engine>,
    pub store: Arc<MemoryStore>,
    pub hubs: Arc<RecordingHubs>,
    pub clock: Arc<ManualClock>,
    /// The service's ID scope.
    pub scope: String,
    pub registration_id: String,
}

impl TpmEnrolled {
    /// The setup for the device `registration_id` whose TPM has `ek`, in a
    /// service of ID scope `scope`.
    pub async fn new(scope: u32, registration_id: &str, ek: &RsaPublic) -> Self {
        let (store, svc) = default_service(scope).await;
        given(&*store, "default", conformance::hub("hub-a")).await;
        given(&*store, "default", tpm_enrollment(registration_id, ek)).await;
        let (engine, hubs, clock) = engine_over(store.clone(), UtcTime::now());
        Self {
            engine,
            store,
            hubs,
            clock,
            scope: svc.id_scope.to_string(),
            registration_id: registration_id.to_owned(),
        }
    }

    /// The resource a token of registration `id` signs.
    pub fn resource(&self, id: &str) -> String {
        format!("{}/registrations/{id}", self.scope)
    }

    /// The challenge the store keeps for the device.
    pub async fn kept_challenge(&self) -> TpmChallenge {
        self.store
            .get::<TpmChallenge>("default", &IdKey::of(&self.registration_id))
            .await
            .expect("reading the kept challenge")
            .expect("a challenge kept for the device")
    }
}

/// An individual enrollment of `id` attested by the TPM endorsement key `ek`.
pub fn tpm_enrollment(id: &str, ek: &RsaPublic) -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: id.into(),
        attestation: Some(AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                endorsement_key: ek.to_base64(),
                storage_root_key: None,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
