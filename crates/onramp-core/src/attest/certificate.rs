//! X.509 attestation: the device's certificate chain from the TLS handshake,
//! matched against its individual enrollment, revocations and the groups'
//! certificates and verified CAs.

use onramp_model::{AttestationType, EnrollmentGroup, ErrorCode, ProvisioningStatus, UtcTime};

use super::{Attempt, Attested, Enrollment, GroupPages, Prefetched, Proof, finish};
use crate::ports::{StoreExt, client_thumbprints};
use crate::{ProvisioningError, x509};

/// (X.520's upper bound), and Azure applies the same limit.
const X509_MAX_ID_LEN: usize = 64;

/// X.509: the device's certificate chain, from the TLS handshake (which
/// already proved possession of the leaf's private key).
///
/// The first matching entry decides, walking from the device upward: an
/// individual enrollment for the registration ID (matched by certificate
/// thumbprint); then, for each certificate above the leaf, a disabled
/// individual enrollment naming it (revocation) or an enrollment group whose
/// certificate (`signingCertificates`, or a verified `caReferences` CA) it
/// is, nearest first; a group whose certificate issued the topmost
/// certificate the device sent comes last.
pub(super) async fn attest(
    attempt: Attempt<'_>,
    mut prefetched: Prefetched,
    chain: &[Vec<u8>],
) -> Result<Attested, ProvisioningError> {
    let Attempt {
        store,
        service,
        registration_id,
        ..
    } = attempt;
    let now_unix = attempt.now.unix_seconds();
    let untrusted = |m: String| ProvisioningError::new(ErrorCode::CertificateUntrusted, m);
    let Some(leaf_der) = chain.first() else {
        return Err(untrusted(
            "the TLS handshake carried no client certificate".into(),
        ));
    };
    let leaf = x509::Parsed::from_der(leaf_der)
        .map_err(|e| untrusted(format!("the device certificate: {e}")))?;
    let now =
        UtcTime::from_unix_nanos(i128::from(now_unix) * 1_000_000_000).unwrap_or_else(UtcTime::now);
    if registration_id.as_str().len() > X509_MAX_ID_LEN {
        return Err(ProvisioningError::invalid(format!(
            "the registration ID '{registration_id}' is {} characters long; an X.509 device's \
             registration ID is its certificate's CN, at most {X509_MAX_ID_LEN} characters",
            registration_id.as_str().len()
        )));
    }
    match leaf.common_name.as_deref() {
        Some(cn) if cn.eq_ignore_ascii_case(registration_id.as_str()) => {}
        Some(cn) => {
            return Err(ProvisioningError::new(
                ErrorCode::CertificateNameMismatch,
                format!(
                    "the device certificate's CN '{cn}' differs from the registration ID '{registration_id}'; \
                     register with the CN as registration ID"
                ),
            ));
        }
        None => {
            return Err(ProvisioningError::new(
                ErrorCode::CertificateNameMismatch,
                "the device certificate has no CN; its CN must be the registration ID",
            ));
        }
    }
    leaf.validity_at(now).map_err(chain_failure)?;
    let intermediates: Vec<Vec<u8>> = chain[1..].to_vec();

    // 1. The device's own individual enrollment.
    if let Some(enrollment) = prefetched
        .enrollment(store, service, &registration_id.key())
        .await?
    {
        let id = enrollment.registration_id.clone();
        let att = enrollment.attestation.as_ref();
        if !att.is_some_and(|a| a.kind == AttestationType::X509 && a.x509.is_some()) {
            return Err(ProvisioningError::unauthorized(format!(
                "individual enrollment '{}' uses {} attestation, but the device presented a certificate; \
                 authenticate with the enrollment's mechanism",
                enrollment.registration_id,
                att.map(|a| a.kind.as_str()).unwrap_or("no")
            ))
            .from_individual(&id));
        }
        // The enrolled certificates' thumbprints, computed when the enrollment was written.
        if !client_thumbprints(enrollment.attestation.as_ref())
            .iter()
            .any(|t| leaf.has_thumbprint(t))
        {
            return Err(ProvisioningError::unauthorized(format!(
                "the device certificate (SHA-256 {}) is neither certificate of individual enrollment '{}'",
                leaf.info.sha256_thumbprint, enrollment.registration_id
            ))
            .from_individual(&id));
        }
        return finish(
            registration_id,
            Enrollment::Individual(enrollment),
            Proof::X509 {
                leaf: Box::new(leaf),
                signing: None,
            },
        );
    }

    // 2. Enrollment groups (and revocations) above the leaf.
    let mut anchors: Vec<(EnrollmentGroup, x509::Parsed)> = Vec::new();
    let mut unverified: Vec<(String, String, Vec<u8>)> = Vec::new();
    // The service's CA certificates, read once when the first group refers to one.
    let mut cas: Option<Vec<crate::tenant::CaCertificate>> = None;
    let mut pages = GroupPages::new(prefetched.first_groups.take());
    while let Some(page) = pages.next(store, service).await? {
        for group in page {
            let Some(x) = group
                .attestation
                .as_ref()
                .filter(|a| a.kind == AttestationType::X509)
                .and_then(|a| a.x509.clone())
            else {
                continue;
            };
            for slot in [
                x.signing_certificates
                    .as_ref()
                    .and_then(|c| c.primary.as_ref()),
                x.signing_certificates
                    .as_ref()
                    .and_then(|c| c.secondary.as_ref()),
            ]
            .into_iter()
            .flatten()
            {
                if let Some(parsed) = slot
                    .certificate
                    .as_deref()
                    .and_then(|t| x509::decode(t).ok())
                    .and_then(|d| x509::Parsed::from_der(&d).ok())
                {
                    anchors.push((group.clone(), parsed));
                }
            }
            for name in [
                x.ca_references.as_ref().and_then(|r| r.primary.clone()),
                x.ca_references.as_ref().and_then(|r| r.secondary.clone()),
            ]
            .into_iter()
            .flatten()
            {
                if cas.is_none() {
                    cas = Some(store.ca_certificates(service).await?);
                }
                let ca = cas
                    .iter()
                    .flatten()
                    .find(|ca| ca.name.eq_ignore_ascii_case(&name))
                    .cloned();
                match ca {
                    Some(ca) if ca.is_verified => {
                        if let Ok(parsed) = x509::Parsed::from_der(&ca.der) {
                            anchors.push((group.clone(), parsed));
                        }
                    }
                    Some(ca) => unverified.push((group.enrollment_group_id.clone(), name, ca.der)),
                    None => {}
                }
            }
        }
    }

    // Each group whose certificate the chain verifies to, at its distance from the leaf.
    let mut matches: Vec<(usize, EnrollmentGroup, x509::Parsed)> = Vec::new();
    let mut first_error: Option<x509::ChainError> = None;
    for (group, anchor) in anchors {
        match x509::verify_chain(leaf_der, &intermediates, &anchor.der, now) {
            Ok(depth) => matches.push((depth, group, anchor)),
            Err(e) => {
                if !matches!(e, x509::ChainError::UnknownIssuer(_)) || first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    matches.sort_by_key(|(depth, _, _)| *depth);

    // Walk up: at each level a revocation of that certificate comes first.
    let levels = matches
        .last()
        .map(|(d, _, _)| *d)
        .unwrap_or(0)
        .max(intermediates.len());
    for level in 0..=levels {
        if let Some(cert) = intermediates.get(level) {
            let parsed = x509::Parsed::from_der(cert)
                .map_err(|e| untrusted(format!("an intermediate certificate: {e}")))?;
            let revocations = store
                .enrollments_by_thumbprint(service, &parsed.info.sha256_thumbprint)
                .await?;
            if let Some(revoked) = revocations
                .iter()
                .find(|e| e.provisioning_status == Some(ProvisioningStatus::Disabled))
            {
                return Err(ProvisioningError::new(
                    ErrorCode::EnrollmentDisabled,
                    format!(
                        "certificate {} in the device's chain is disabled by individual enrollment '{}'",
                        parsed.info.subject_name, revoked.registration_id
                    ),
                )
                .from_individual(&revoked.registration_id));
            }
        }
        if let Some((_, group, anchor)) = matches.iter().find(|(d, _, _)| *d == level) {
            return finish(
                registration_id,
                Enrollment::Group(Box::new(group.clone())),
                Proof::X509 {
                    leaf: Box::new(leaf),
                    signing: Some(Box::new(anchor.clone())),
                },
            );
        }
    }

    // Nothing matched: say why, as precisely as we can.
    for (group, name, der) in &unverified {
        if x509::verify_chain(leaf_der, &intermediates, der, now).is_ok() {
            return Err(untrusted(format!(
                "the device chains to CA certificate '{name}' of enrollment group '{group}', but that CA is not \
                 verified; complete its proof of possession (onramp cert verification-code / verify)"
            ))
            .group_named(group));
        }
    }
    Err(match first_error {
        Some(
            e @ (x509::ChainError::Expired(_)
            | x509::ChainError::NotYetValid(_)
            | x509::ChainError::Invalid(_)),
        ) => chain_failure(e),
        _ => untrusted(format!(
            "the certificate chain of '{registration_id}' leads to no enrolled certificate: no individual enrollment \
             has this registration ID and no enrollment group's certificate issued it (send the intermediate \
             certificates between the device certificate and the group's certificate)"
        )),
    })
}

fn chain_failure(e: x509::ChainError) -> ProvisioningError {
    match e {
        x509::ChainError::Expired(m) | x509::ChainError::NotYetValid(m) => {
            ProvisioningError::new(ErrorCode::CertificateExpired, m)
        }
        x509::ChainError::UnknownIssuer(m) | x509::ChainError::Invalid(m) => {
            ProvisioningError::new(ErrorCode::CertificateUntrusted, m)
        }
    }
}
