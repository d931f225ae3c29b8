//! TPM enrollment groups, Onramp's extension (Azure has no TPM groups): a
//! TPM without an individual enrollment is admitted by the first group of
//! type `tpm` (in ID order) whose manufacturer CA certificates issued its
//! EK certificate — valid now, certifying the very endorsement key it
//! sent — and whose allow list, when it has one, names its registration ID
//! or its EK hash; or by a group whose allow list names its EK hash, with
//! no certificate. Possession of the EK is still proven by the nonce
//! challenge, exactly as for an individual enrollment: the challenge
//! records the group, and the signed retry is attested by that group.
//! The first group that admits decides, even a disabled one (which then
//! refuses, after the token, like a disabled individual enrollment).

use onramp_model::{
    AttestationType, EnrollmentGroup, ErrorCode, IdKey, RegistrationId, TpmAttestation, UtcTime,
};

use super::tpm::{SentKeys, pending, sent_endorsement_key, signed};
use super::{Attested, Enrollment, GroupPages};
use crate::ProvisioningError;
use crate::ports::{Store, StoreExt};
use crate::sas::SasToken;
use crate::tpm::RsaPublic;
use crate::tpm::ek_cert::{self, EkCertificate};

/// Why a group did not admit the device, most telling last: a refusal by a
/// group that trusts the device's manufacturer says more than "no group".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    /// No certificate, and the EK hash is on no group's list.
    NotListed,
    /// The certificate was issued by none of this group's CAs.
    Untrusted,
    /// Issued by this group's CA, but out of its validity (or the CA's).
    Expired(String),
    /// Issued by this group's CA, but the allow list names neither the
    /// registration ID nor the EK hash.
    NotAllowed(String),
}

/// The group that admits the device (its ID) and the endorsement key it sent.
pub(super) async fn admit(
    store: &dyn Store,
    first_groups: Option<Vec<EnrollmentGroup>>,
    service: &str,
    registration_id: &RegistrationId,
    keys: &SentKeys<'_>,
    now: UtcTime,
) -> Result<(String, RsaPublic), ProvisioningError> {
    // Read lazily: a service without TPM groups answers as before.
    let mut device: Option<(RsaPublic, String, Option<EkCertificate>)> = None;
    let mut refusal: Option<Miss> = None;
    let mut pages = GroupPages::new(first_groups);
    while let Some(page) = pages.next(store, service).await? {
        for group in page {
            let Some(tpm) = tpm_of(&group) else {
                continue;
            };
            if device.is_none() {
                device = Some(device_side(keys)?);
            }
            let Some((ek, hash, certificate)) = device.as_ref() else {
                continue;
            };
            let id = &group.enrollment_group_id;
            match admits(tpm, id, registration_id, hash, certificate.as_ref(), now) {
                Ok(()) => return Ok((group.enrollment_group_id.clone(), ek.clone())),
                Err(miss) => refusal = refusal.max(Some(miss)),
            }
        }
    }
    Err(refused(refusal, registration_id, device.map(|d| d.1)))
}

/// The sent endorsement key, its hash and its certificate, checked against each other.
fn device_side(
    keys: &SentKeys<'_>,
) -> Result<(RsaPublic, String, Option<EkCertificate>), ProvisioningError> {
    let ek = sent_endorsement_key(keys.endorsement_key)?;
    let certificate = keys
        .certificate
        .filter(|c| !c.trim().is_empty())
        .map(EkCertificate::parse)
        .transpose()
        .map_err(|e| ProvisioningError::invalid(format!("tpm.endorsementKeyCertificate {e}")))?;
    if let Some(c) = &certificate {
        c.check_key(&ek).map_err(|e| {
            ProvisioningError::unauthorized(format!("tpm.endorsementKeyCertificate {e}"))
        })?;
    }
    let hash = ek.sha256_hex();
    Ok((ek, hash, certificate))
}

/// The TPM attestation of a TPM enrollment group.
fn tpm_of(group: &EnrollmentGroup) -> Option<&TpmAttestation> {
    group
        .attestation
        .as_ref()
        .filter(|a| a.kind == AttestationType::Tpm)
        .and_then(|a| a.tpm.as_ref())
}

fn listed(list: Option<&Vec<String>>, entry: &str) -> bool {
    list.is_some_and(|l| l.iter().any(|e| e.eq_ignore_ascii_case(entry)))
}

/// Whether the allow list is set and names neither the registration ID nor
/// the EK hash.
fn outside_allow_list(tpm: &TpmAttestation, registration_id: &str, hash: &str) -> bool {
    let ids = tpm.allow_registration_ids.as_ref();
    let hashes = tpm.allow_endorsement_key_hashes.as_ref();
    let has_list = ids.is_some_and(|l| !l.is_empty()) || hashes.is_some_and(|l| !l.is_empty());
    has_list && !listed(ids, registration_id) && !listed(hashes, hash)
}

fn admits(
    tpm: &TpmAttestation,
    group_id: &str,
    registration_id: &RegistrationId,
    hash: &str,
    certificate: Option<&EkCertificate>,
    now: UtcTime,
) -> Result<(), Miss> {
    let Some(certificate) = certificate else {
        return if listed(tpm.allow_endorsement_key_hashes.as_ref(), hash) {
            Ok(())
        } else {
            Err(Miss::NotListed)
        };
    };
    let issuer = tpm
        .manufacturer_certificates
        .iter()
        .flatten()
        .filter_map(|c| ek_cert::manufacturer_der(c).ok())
        .find(|ca| certificate.issued_by(ca))
        .ok_or(Miss::Untrusted)?;
    certificate
        .validity_at(&issuer, now.unix_seconds())
        .map_err(|e| Miss::Expired(format!("TPM enrollment group '{group_id}': {e}")))?;
    if outside_allow_list(tpm, registration_id.as_str(), hash) {
        return Err(Miss::NotAllowed(format!(
            "TPM enrollment group '{group_id}' trusts this TPM's manufacturer, but its allow list \
             names neither registration ID '{registration_id}' nor endorsement key hash {hash}; \
             add one of them to attestation.tpm.allowRegistrationIds or allowEndorsementKeyHashes"
        )));
    }
    Ok(())
}

fn refused(
    miss: Option<Miss>,
    registration_id: &RegistrationId,
    hash: Option<String>,
) -> ProvisioningError {
    let no_individual = format!(
        "no individual enrollment has registration ID '{registration_id}'; a TPM device \
         needs one with attestation.tpm holding its endorsement key"
    );
    match miss {
        None => ProvisioningError::new(ErrorCode::EnrollmentNotFound, no_individual),
        Some(Miss::NotListed) => ProvisioningError::new(
            ErrorCode::EnrollmentNotFound,
            format!(
                "{no_individual}, or a TPM enrollment group: send the TPM's EK certificate \
                 (tpm.endorsementKeyCertificate) or list its endorsement key hash {} in a \
                 group's attestation.tpm.allowEndorsementKeyHashes",
                hash.unwrap_or_default()
            ),
        ),
        Some(Miss::Untrusted) => ProvisioningError::new(
            ErrorCode::CertificateUntrusted,
            format!(
                "{no_individual}, and no TPM enrollment group's manufacturerCertificates issued \
                 its endorsement key certificate; add its manufacturer's CA certificate to a group"
            ),
        ),
        Some(Miss::Expired(m)) => ProvisioningError::new(ErrorCode::CertificateExpired, m),
        Some(Miss::NotAllowed(m)) => ProvisioningError::new(ErrorCode::EnrollmentNotFound, m),
    }
}

/// A token from a TPM that a group admitted: signed with the key of the
/// challenge the group's admission issued, the group still of type `tpm`
/// and its allow list (when set) still naming the device. `None` when no
/// group's challenge is pending for the device.
pub(super) async fn verify(
    store: &dyn Store,
    service: &str,
    registration_id: &RegistrationId,
    token: &SasToken<'_>,
    now: UtcTime,
) -> Result<Option<Attested>, ProvisioningError> {
    let Some(challenge) = pending(store, service, registration_id, now).await? else {
        return Ok(None);
    };
    let Some(group_id) = challenge.enrollment_group_id.clone() else {
        return Ok(None);
    };
    let gone = || {
        ProvisioningError::new(
            ErrorCode::EnrollmentNotFound,
            format!(
                "TPM enrollment group '{group_id}', which admitted registration ID \
                 '{registration_id}', no longer admits it; ask for a new challenge"
            ),
        )
    };
    let group = store
        .get::<EnrollmentGroup>(service, &IdKey::of(&group_id))
        .await?;
    let hash = RsaPublic::from_base64(&challenge.endorsement_key)
        .map_err(|e| ProvisioningError::internal(format!("a stored TPM challenge's EK {e}")))?
        .sha256_hex();
    let still_admits = group
        .filter(|g| {
            tpm_of(g).is_some_and(|t| !outside_allow_list(t, registration_id.as_str(), &hash))
        })
        .map(|g| Enrollment::Group(Box::new(g)))
        .ok_or_else(gone);
    signed(challenge, registration_id, still_admits, token).map(Some)
}
