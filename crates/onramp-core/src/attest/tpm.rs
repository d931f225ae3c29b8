//! TPM attestation: the nonce challenge, and the token signed with the key
//! it carried. A TPM device first sends its endorsement and storage root
//! keys without a token; it is answered with an activation blob that only
//! its TPM opens, holding a fresh HMAC key. The key is kept in the store
//! (sealed) until it expires, so that the signed retry may reach any node.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_model::{AttestationType, ErrorCode, IndividualEnrollment, RegistrationId, UtcTime};

use super::{AttestationConfig, Attested, Enrollment, Prefetched, Proof, finish};
use crate::ports::{Precondition, Store, StoreExt, TpmChallenge};
use crate::sas::SasToken;
use crate::tpm::{self, RsaPublic};
use crate::{ProvisioningError, keys};

/// Answers a TPM device's first request: checks its endorsement key against
/// its individual enrollment, keeps a fresh key and sends it wrapped for the
/// TPM. Always an `Err`: [`ProvisioningError::tpm_challenge`] on success.
#[allow(clippy::too_many_arguments)]
pub(super) async fn challenge(
    store: &dyn Store,
    mut prefetched: Prefetched,
    service: &str,
    registration_id: &RegistrationId,
    endorsement_key: &str,
    storage_root_key: Option<&str>,
    now: UtcTime,
    config: AttestationConfig,
) -> Result<Attested, ProvisioningError> {
    let key = registration_id.key();
    let enrollment = prefetched
        .enrollment(store, service, &key)
        .await?
        .ok_or_else(|| {
            ProvisioningError::new(
                ErrorCode::EnrollmentNotFound,
                format!(
                    "no individual enrollment has registration ID '{registration_id}'; a TPM \
                     device needs one with attestation.tpm holding its endorsement key"
                ),
            )
        })?;
    let enrolled = enrolled_tpm(&enrollment)?;
    let sent = RsaPublic::from_base64(endorsement_key)
        .map_err(|e| ProvisioningError::invalid(format!("tpm.endorsementKey {e}")))?;
    let enrolled_ek = RsaPublic::from_base64(&enrolled.endorsement_key).map_err(|e| {
        ProvisioningError::internal(format!(
            "individual enrollment '{registration_id}' holds an unusable endorsement key: {e}"
        ))
    })?;
    if sent.modulus() != enrolled_ek.modulus() || sent.exponent() != enrolled_ek.exponent() {
        return Err(ProvisioningError::unauthorized(format!(
            "the endorsement key sent is not the one individual enrollment \
             '{registration_id}' holds; send this TPM's endorsement key, or enroll it"
        )));
    }
    let srk_text = storage_root_key
        .filter(|k| !k.trim().is_empty())
        .or(enrolled.storage_root_key.as_deref())
        .ok_or_else(|| {
            ProvisioningError::invalid(
                "tpm.storageRootKey is required: the challenge key is wrapped for the \
                 TPM's storage root key; send it beside the endorsement key",
            )
        })?;
    let srk = RsaPublic::from_base64(srk_text)
        .map_err(|e| ProvisioningError::invalid(format!("tpm.storageRootKey {e}")))?;
    let challenge_key = tpm::challenge_key().map_err(tpm_failure)?;
    let blob = tpm::activation_blob(&sent, &srk, &challenge_key).map_err(tpm_failure)?;
    let pending = TpmChallenge {
        registration_id: registration_id.to_string(),
        key: onramp_model::Secret::new(STANDARD.encode(challenge_key)),
        endorsement_key: sent.to_base64(),
        storage_root_key: srk.to_base64(),
        expires: UtcTime::from_unix_nanos(
            now.unix_nanos() + i128::from(config.tpm_challenge_seconds) * 1_000_000_000,
        )
        .unwrap_or(now),
        spent_by: None,
    };
    store.put(service, pending, Precondition::None, now).await?;
    Err(ProvisioningError::tpm_challenge(STANDARD.encode(blob)))
}

/// A token for a TPM enrollment: signed with the key of the device's
/// pending challenge, which has not expired.
pub(super) async fn verify(
    store: &dyn Store,
    service: &str,
    registration_id: &RegistrationId,
    enrollment: Box<IndividualEnrollment>,
    token: &SasToken<'_>,
    now: UtcTime,
) -> Result<Attested, ProvisioningError> {
    enrolled_tpm(&enrollment)?;
    let ask_again = "send the register request without Authorization, with the tpm keys, \
                     to get a new challenge";
    let challenge = store
        .get::<TpmChallenge>(service, &registration_id.key())
        .await?
        .filter(|c| c.expires > now)
        .ok_or_else(|| {
            ProvisioningError::unauthorized(format!(
                "no TPM challenge is pending for registration ID '{registration_id}' \
                 (none was sent, or it expired); {ask_again}"
            ))
        })?;
    let key = STANDARD.decode(challenge.key.expose()).map_err(|e| {
        ProvisioningError::internal(format!("a stored TPM challenge key is not base64: {e}"))
    })?;
    if !token.is_signed_with(&key) {
        return Err(ProvisioningError::unauthorized(format!(
            "the token is not signed with the key of the TPM challenge sent to \
             '{registration_id}'; sign it with the key imported from authenticationKey, or {ask_again}"
        )));
    }
    finish(
        registration_id,
        Enrollment::Individual(enrollment),
        Proof::Tpm {
            challenge: Box::new(challenge),
            hub_primary: keys::generate(),
            hub_secondary: keys::generate(),
        },
    )
}

/// The TPM attestation of an individual enrollment, or why it has none.
fn enrolled_tpm(
    enrollment: &IndividualEnrollment,
) -> Result<&onramp_model::TpmAttestation, ProvisioningError> {
    match enrollment.attestation.as_ref() {
        Some(a) if a.kind == AttestationType::Tpm => a.tpm.as_ref().ok_or_else(|| {
            ProvisioningError::internal(format!(
                "individual enrollment '{}' is of type tpm but has no endorsement key",
                enrollment.registration_id
            ))
        }),
        Some(a) => Err(ProvisioningError::unauthorized(format!(
            "individual enrollment '{}' attests with {}, not TPM; authenticate as it says",
            enrollment.registration_id, a.kind
        ))),
        None => Err(ProvisioningError::unauthorized(format!(
            "individual enrollment '{}' has no attestation mechanism",
            enrollment.registration_id
        ))),
    }
}

fn tpm_failure(e: tpm::TpmError) -> ProvisioningError {
    ProvisioningError::internal(format!("the TPM challenge could not be built: {e}"))
}
