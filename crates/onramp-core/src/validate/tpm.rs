//! TPM attestation as the service API writes it: an individual enrollment's
//! endorsement key (and storage root key), or — Onramp's extension, as Azure
//! has no TPM groups — an enrollment group's manufacturer CA certificates
//! and allow list.

use onramp_model::{
    AttestationMechanism, AttestationType, EnrollmentKind, RegistrationId, TpmAttestation,
};

use crate::ProvisioningError;
use crate::tpm::ek_cert;

/// How many manufacturer certificates and allow-list entries a group holds
/// at most: the group is read by every registration it may admit.
pub const MAX_MANUFACTURER_CERTIFICATES: usize = 32;
pub const MAX_ALLOW_LIST: usize = 10_000;

const GROUP_FIELDS: &str =
    "manufacturerCertificates, allowRegistrationIds and allowEndorsementKeyHashes";

pub(super) fn attestation(
    tpm: Option<TpmAttestation>,
    kind: EnrollmentKind,
) -> Result<AttestationMechanism, ProvisioningError> {
    let Some(tpm) = tpm else {
        return Err(ProvisioningError::invalid(match kind {
            EnrollmentKind::Individual => {
                "attestation.tpm is required when attestation.type is tpm; give tpm.endorsementKey"
            }
            EnrollmentKind::Group => {
                "attestation.tpm is required when attestation.type is tpm; give \
                 tpm.manufacturerCertificates (the CA certificates that issue the TPMs' EK certificates)"
            }
        }));
    };
    if tpm.endorsement_key_certificate.is_some() {
        return Err(ProvisioningError::invalid(
            "attestation.tpm.endorsementKeyCertificate is what a device sends when it registers; \
             an enrollment does not hold one",
        ));
    }
    let tpm = match kind {
        EnrollmentKind::Individual => individual(tpm)?,
        EnrollmentKind::Group => group(tpm)?,
    };
    Ok(AttestationMechanism {
        kind: AttestationType::Tpm,
        tpm: Some(tpm),
        x509: None,
        symmetric_key: None,
    })
}

fn individual(mut tpm: TpmAttestation) -> Result<TpmAttestation, ProvisioningError> {
    if tpm.manufacturer_certificates.is_some()
        || tpm.allow_registration_ids.is_some()
        || tpm.allow_endorsement_key_hashes.is_some()
    {
        return Err(ProvisioningError::invalid(format!(
            "attestation.tpm of an individual enrollment holds the device's endorsementKey; \
             {GROUP_FIELDS} belong to TPM enrollment groups"
        )));
    }
    tpm.endorsement_key = tpm.endorsement_key.trim().to_owned();
    check_key("attestation.tpm.endorsementKey", &tpm.endorsement_key)?;
    if let Some(srk) = tpm.storage_root_key.as_mut() {
        *srk = srk.trim().to_owned();
        if srk.is_empty() {
            tpm.storage_root_key = None;
        } else {
            check_key("attestation.tpm.storageRootKey", srk)?;
        }
    }
    Ok(tpm)
}

fn group(tpm: TpmAttestation) -> Result<TpmAttestation, ProvisioningError> {
    if !tpm.endorsement_key.trim().is_empty() || tpm.storage_root_key.is_some() {
        return Err(ProvisioningError::invalid(
            "attestation.tpm of an enrollment group holds no endorsementKey or storageRootKey: \
             it admits every TPM whose EK certificate its manufacturerCertificates issued; enroll \
             one TPM by its keys as an individual enrollment",
        ));
    }
    let certificates: Vec<String> = tpm
        .manufacturer_certificates
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.trim().to_owned())
        .collect();
    if certificates.is_empty() {
        return Err(ProvisioningError::invalid(
            "attestation.tpm.manufacturerCertificates needs at least one CA certificate (PEM or \
             base64 DER) that issues the TPMs' endorsement key certificates",
        ));
    }
    bounded(
        "attestation.tpm.manufacturerCertificates",
        certificates.len(),
        MAX_MANUFACTURER_CERTIFICATES,
    )?;
    for (i, c) in certificates.iter().enumerate() {
        ek_cert::manufacturer_der(c).map_err(|e| {
            ProvisioningError::invalid(format!(
                "attestation.tpm.manufacturerCertificates[{i}] {e}; give the CA certificate as \
                 PEM text or base64 DER"
            ))
        })?;
    }
    let ids = tpm.allow_registration_ids.map(|ids| {
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| {
                RegistrationId::parse(id.trim())
                    .map(|id| id.as_str().to_owned())
                    .map_err(|e| {
                        ProvisioningError::invalid(format!(
                            "attestation.tpm.allowRegistrationIds[{i}]: {e}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let hashes = tpm.allow_endorsement_key_hashes.map(|hashes| {
        hashes
            .into_iter()
            .enumerate()
            .map(|(i, h)| ek_hash(i, &h))
            .collect::<Result<Vec<_>, _>>()
    });
    let ids = ids.transpose()?.filter(|l| !l.is_empty());
    let hashes = hashes.transpose()?.filter(|l| !l.is_empty());
    for (field, list) in [
        ("allowRegistrationIds", &ids),
        ("allowEndorsementKeyHashes", &hashes),
    ] {
        let len = list.as_ref().map_or(0, Vec::len);
        bounded(&format!("attestation.tpm.{field}"), len, MAX_ALLOW_LIST)?;
    }
    Ok(TpmAttestation {
        manufacturer_certificates: Some(certificates),
        allow_registration_ids: ids,
        allow_endorsement_key_hashes: hashes,
        ..Default::default()
    })
}

/// An allow-list entry: 64 hex digits, kept lower-case.
fn ek_hash(i: usize, text: &str) -> Result<String, ProvisioningError> {
    let hex = text.trim().to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProvisioningError::invalid(format!(
            "attestation.tpm.allowEndorsementKeyHashes[{i}] '{text}' is not a SHA-256 in hex; \
             give the 64 hex digits of the SHA-256 of the endorsement key's marshaled TPM2B_PUBLIC \
             (sha256sum of the file tpm2_readpublic -f tss writes)"
        )));
    }
    Ok(hex)
}

fn bounded(field: &str, len: usize, max: usize) -> Result<(), ProvisioningError> {
    if len > max {
        return Err(ProvisioningError::invalid(format!(
            "{field} has {len} entries; at most {max} are allowed"
        )));
    }
    Ok(())
}

fn check_key(field: &str, key: &str) -> Result<(), ProvisioningError> {
    crate::tpm::RsaPublic::from_base64(key)
        .map(drop)
        .map_err(|e| ProvisioningError::invalid(format!("{field} {e}")))
}
