//! SharedAccessSignature attestation: the token's shape, resource and
//! expiry first; then the individual enrollment's keys, else the first
//! symmetric-key group whose key, derived for this registration ID, signed it.

use onramp_model::{AttestationType, ErrorCode, Secret};

use super::{Attempt, Attested, Enrollment, GroupPages, Prefetched, Proof, finish};
use crate::{ProvisioningError, sas};

pub(super) async fn attest(
    attempt: Attempt<'_>,
    mut prefetched: Prefetched,
    token: &str,
) -> Result<Attested, ProvisioningError> {
    let Attempt {
        store,
        service,
        id_scope,
        registration_id,
        now,
        config,
    } = attempt;
    let now_unix = now.unix_seconds();
    let token = sas::parse(token).map_err(|e| ProvisioningError::unauthorized(e.to_string()))?;
    let expected = format!("{id_scope}/registrations/{registration_id}");
    if !token.resource_is(&expected) {
        return Err(ProvisioningError::unauthorized(
            sas::SasError::WrongResource {
                actual: token.resource.clone(),
                expected,
            }
            .to_string(),
        ));
    }
    token
        .check_expiry(now_unix, config.token_skew_seconds)
        .map_err(|e| ProvisioningError::unauthorized(e.to_string()))?;

    let key = registration_id.key();
    if let Some(enrollment) = prefetched.enrollment(store, service, &key).await? {
        let id = enrollment.registration_id.clone();
        if enrollment.attestation.as_ref().map(|a| a.kind) == Some(AttestationType::Tpm) {
            return super::tpm::verify(store, service, registration_id, enrollment, &token, now)
                .await
                .map_err(|e| e.from_individual(&id));
        }
        let (primary, secondary) = symmetric_keys_of(
            enrollment
                .attestation
                .as_ref()
                .map(|a| (a.kind, a.symmetric_key.as_ref())),
            &format!("individual enrollment '{id}'"),
        )
        .map_err(|e| e.from_individual(&id))?;
        if !(token.is_signed_by(primary.expose()) || token.is_signed_by(secondary.expose())) {
            return Err(ProvisioningError::unauthorized(format!(
                "the token's signature matches neither key of individual enrollment '{id}'; \
                 sign the token with the enrollment's primary or secondary key"
            ))
            .from_individual(&id));
        }
        return finish(
            registration_id,
            Enrollment::Individual(enrollment),
            Proof::SymmetricKey { primary, secondary },
        );
    }

    // No individual enrollment: a symmetric-key group whose derived key signs the token.
    let mut pages = GroupPages::new(prefetched.first_groups.take());
    while let Some(page) = pages.next(store, service).await? {
        for group in page {
            let Some(att) = group.attestation.as_ref() else {
                continue;
            };
            if att.kind != AttestationType::SymmetricKey {
                continue;
            }
            let Ok((gp, gs)) = symmetric_keys_of(
                Some((att.kind, att.symmetric_key.as_ref())),
                &format!("enrollment group '{}'", group.enrollment_group_id),
            ) else {
                continue;
            };
            let derive = |k: &Secret| {
                sas::derive_device_key(k.expose(), registration_id.as_str())
                    .map(Secret::new)
                    .map_err(|e| {
                        ProvisioningError::internal(format!(
                            "enrollment group '{}' holds an unusable key: {e}",
                            group.enrollment_group_id
                        ))
                    })
            };
            let (dp, ds) = (derive(&gp)?, derive(&gs)?);
            if token.is_signed_by(dp.expose()) || token.is_signed_by(ds.expose()) {
                return finish(
                    registration_id,
                    Enrollment::Group(Box::new(group)),
                    Proof::SymmetricKey {
                        primary: dp,
                        secondary: ds,
                    },
                );
            }
        }
    }
    // Nor that: a TPM whose challenge a TPM enrollment group issued.
    if let Some(attested) =
        super::tpm_group::verify(store, service, registration_id, &token, now).await?
    {
        return Ok(attested);
    }
    Err(ProvisioningError::new(
        ErrorCode::EnrollmentNotFound,
        format!(
            "no individual enrollment has registration ID '{registration_id}' and no symmetric-key \
             enrollment group's derived key signs this token; create an enrollment for the device, \
             or sign with the key derived from its group's key"
        ),
    ))
}

fn symmetric_keys_of(
    attestation: Option<(
        AttestationType,
        Option<&onramp_model::SymmetricKeyAttestation>,
    )>,
    what: &str,
) -> Result<(Secret, Secret), ProvisioningError> {
    match attestation {
        Some((AttestationType::SymmetricKey, Some(keys))) => {
            match (&keys.primary_key, &keys.secondary_key) {
                (Some(p), Some(s)) => Ok((p.clone(), s.clone())),
                (Some(p), None) => Ok((p.clone(), p.clone())),
                (None, Some(s)) => Ok((s.clone(), s.clone())),
                (None, None) => Err(ProvisioningError::internal(format!(
                    "{what} has no keys stored"
                ))),
            }
        }
        Some((kind, _)) => Err(ProvisioningError::unauthorized(format!(
            "{what} uses {kind} attestation, but the device presented a SharedAccessSignature token; \
             authenticate with the enrollment's mechanism"
        ))),
        None => Err(ProvisioningError::internal(format!(
            "{what} has no attestation stored"
        ))),
    }
}
