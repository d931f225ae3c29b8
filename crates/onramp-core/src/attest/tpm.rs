//! TPM attestation: the nonce challenge, and the token signed with the key
//! it carried. A TPM device first sends its endorsement and storage root
//! keys without a token; it is answered with an activation blob that only
//! its TPM opens, holding a fresh HMAC key. The key is kept in the store
//! (sealed) until it expires, so that the signed retry may reach any node.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_model::{AttestationType, IndividualEnrollment, RegistrationId, UtcTime};

use super::{Attempt, AttestationConfig, Attested, Enrollment, Prefetched, Proof, finish};
use crate::ports::{Precondition, Store, StoreExt, TpmChallenge};
use crate::sas::SasToken;
use crate::tpm::{self, RsaPublic};
use crate::{ProvisioningError, keys};

/// The keys (and for a TPM group, the EK certificate) a TPM device sent
/// without a token.
pub(super) struct SentKeys<'a> {
    pub endorsement_key: &'a str,
    pub storage_root_key: Option<&'a str>,
    pub certificate: Option<&'a str>,
}

/// Answers a TPM device's first request: checks its endorsement key against
/// its individual enrollment, else asks the TPM enrollment groups whether
/// one admits it; keeps a fresh key and sends it wrapped for the TPM.
/// Always an `Err`: [`ProvisioningError::tpm_challenge`] on success.
pub(super) async fn challenge(
    attempt: Attempt<'_>,
    mut prefetched: Prefetched,
    keys: SentKeys<'_>,
) -> Result<Attested, ProvisioningError> {
    let Attempt {
        store,
        service,
        registration_id,
        now,
        config,
        ..
    } = attempt;
    let key = registration_id.key();
    let Some(enrollment) = prefetched.enrollment(store, service, &key).await? else {
        let first_groups = prefetched.first_groups.take();
        let (group, sent) =
            super::tpm_group::admit(store, first_groups, service, registration_id, &keys, now)
                .await?;
        return issue(
            store,
            service,
            registration_id,
            &sent,
            &keys,
            None,
            Some(group),
            now,
            config,
        )
        .await;
    };
    let id = enrollment.registration_id.clone();
    let enrolled = enrolled_tpm(&enrollment).map_err(|e| e.from_individual(&id))?;
    let sent = sent_endorsement_key(keys.endorsement_key)?;
    let enrolled_ek = RsaPublic::from_base64(&enrolled.endorsement_key).map_err(|e| {
        ProvisioningError::internal(format!(
            "individual enrollment '{registration_id}' holds an unusable endorsement key: {e}"
        ))
    })?;
    if sent.modulus() != enrolled_ek.modulus() || sent.exponent() != enrolled_ek.exponent() {
        return Err(ProvisioningError::unauthorized(format!(
            "the endorsement key sent is not the one individual enrollment \
             '{registration_id}' holds; send this TPM's endorsement key, or enroll it"
        ))
        .from_individual(&id));
    }
    let enrolled_srk = enrolled.storage_root_key.as_deref();
    issue(
        store,
        service,
        registration_id,
        &sent,
        &keys,
        enrolled_srk,
        None,
        now,
        config,
    )
    .await
}

/// The endorsement key a device sent, parsed.
pub(super) fn sent_endorsement_key(text: &str) -> Result<RsaPublic, ProvisioningError> {
    RsaPublic::from_base64(text)
        .map_err(|e| ProvisioningError::invalid(format!("tpm.endorsementKey {e}")))
}

/// Keeps a fresh challenge key for the device (and the group that admitted
/// it) and answers with it wrapped for the TPM.
#[allow(clippy::too_many_arguments)]
async fn issue(
    store: &dyn Store,
    service: &str,
    registration_id: &RegistrationId,
    sent: &RsaPublic,
    keys: &SentKeys<'_>,
    enrolled_srk: Option<&str>,
    group: Option<String>,
    now: UtcTime,
    config: AttestationConfig,
) -> Result<Attested, ProvisioningError> {
    let srk_text = keys
        .storage_root_key
        .filter(|k| !k.trim().is_empty())
        .or(enrolled_srk)
        .ok_or_else(|| {
            ProvisioningError::invalid(
                "tpm.storageRootKey is required: the challenge key is wrapped for the \
                 TPM's storage root key; send it beside the endorsement key",
            )
        })?;
    let srk = RsaPublic::from_base64(srk_text)
        .map_err(|e| ProvisioningError::invalid(format!("tpm.storageRootKey {e}")))?;
    let challenge_key = tpm::challenge_key().map_err(tpm_failure)?;
    let blob = tpm::activation_blob(sent, &srk, &challenge_key).map_err(tpm_failure)?;
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
        enrollment_group_id: group,
    };
    store.put(service, pending, Precondition::None, now).await?;
    Err(ProvisioningError::tpm_challenge(STANDARD.encode(blob)))
}

const ASK_AGAIN: &str = "send the register request without Authorization, with the tpm keys, \
                         to get a new challenge";

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
    let challenge = pending(store, service, registration_id, now)
        .await?
        .ok_or_else(|| {
            ProvisioningError::unauthorized(format!(
                "no TPM challenge is pending for registration ID '{registration_id}' \
                 (none was sent, or it expired); {ASK_AGAIN}"
            ))
        })?;
    signed(
        challenge,
        registration_id,
        Ok(Enrollment::Individual(enrollment)),
        token,
    )
}

/// The device's challenge, unless none was sent or it expired.
pub(super) async fn pending(
    store: &dyn Store,
    service: &str,
    registration_id: &RegistrationId,
    now: UtcTime,
) -> Result<Option<TpmChallenge>, ProvisioningError> {
    Ok(store
        .get::<TpmChallenge>(service, &registration_id.key())
        .await?
        .filter(|c| c.expires > now))
}

/// Attested by `enrollment` when `token` is signed with the challenge's key.
/// The signature is checked first, so that an unauthenticated caller learns
/// nothing about the enrollment.
pub(super) fn signed(
    challenge: TpmChallenge,
    registration_id: &RegistrationId,
    enrollment: Result<Enrollment, ProvisioningError>,
    token: &SasToken<'_>,
) -> Result<Attested, ProvisioningError> {
    let key = STANDARD.decode(challenge.key.expose()).map_err(|e| {
        ProvisioningError::internal(format!("a stored TPM challenge key is not base64: {e}"))
    })?;
    if !token.is_signed_with(&key) {
        return Err(ProvisioningError::unauthorized(format!(
            "the token is not signed with the key of the TPM challenge sent to \
             '{registration_id}'; sign it with the key imported from authenticationKey, or {ASK_AGAIN}"
        )));
    }
    finish(
        registration_id,
        enrollment?,
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
