//! Attestation: which enrollment vouches for this device, and is its proof valid?
//!
//! Order of decisions, each with its own error:
//! 1. the credential's own shape (token fields, resource, expiry),
//! 2. the individual enrollment for the registration ID, if there is one —
//!    it takes precedence over every group,
//! 3. otherwise the enrollment groups whose attestation matches,
//! 4. finally the enrollment's `provisioningStatus`.
//!
//! The credential is checked before the enabled flag so that an
//! unauthenticated caller learns nothing about an enrollment's state.

use onramp_model::{
    AttestationType, EnrollmentGroup, ErrorCode, IndividualEnrollment, ProvisioningStatus,
    RegistrationId, Secret,
};

use onramp_model::UtcTime;

use crate::ports::{Store, client_thumbprints};
use crate::{ProvisioningError, sas, x509};

/// How the device proved (or tried to prove) who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceCredential {
    /// A SharedAccessSignature token (HTTP `Authorization`, MQTT password, SASL PLAIN).
    SasToken(String),
    /// The certificate chain from the TLS handshake, leaf first (DER).
    X509Chain(Vec<Vec<u8>>),
    /// A TPM's endorsement and storage root keys (base64 TPM2B_PUBLIC), sent
    /// to start the TPM challenge.
    Tpm {
        endorsement_key: String,
        storage_root_key: Option<String>,
    },
    /// Nothing: no token and no client certificate.
    None,
}

/// The enrollment that vouched for a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Enrollment {
    Individual(Box<IndividualEnrollment>),
    Group(Box<EnrollmentGroup>),
}

/// The outcome of a successful attestation.
#[derive(Debug, Clone, PartialEq)]
pub struct Attested {
    /// The registration ID as the device spells it.
    pub registration_id: RegistrationId,
    pub enrollment: Enrollment,
    pub proof: Proof,
}

/// What the device proved, and what its hub identity is made from.
#[derive(Debug, Clone, PartialEq)]
pub enum Proof {
    /// The device's own keys (for a group: derived from the group's keys).
    SymmetricKey { primary: Secret, secondary: Secret },
    /// Its certificate, and for a group the enrolled certificate it chains to.
    X509 {
        leaf: Box<x509::Parsed>,
        signing: Option<Box<x509::Parsed>>,
    },
}

impl Enrollment {
    pub fn group_id(&self) -> Option<&str> {
        match self {
            Enrollment::Individual(_) => None,
            Enrollment::Group(g) => Some(&g.enrollment_group_id),
        }
    }

    pub fn is_enabled(&self) -> bool {
        let status = match self {
            Enrollment::Individual(e) => e.provisioning_status,
            Enrollment::Group(g) => g.provisioning_status,
        };
        status != Some(ProvisioningStatus::Disabled)
    }

    /// A human name for messages: `individual enrollment 'x'` or `enrollment group 'g'`.
    pub fn describe(&self) -> String {
        match self {
            Enrollment::Individual(e) => format!("individual enrollment '{}'", e.registration_id),
            Enrollment::Group(g) => format!("enrollment group '{}'", g.enrollment_group_id),
        }
    }
}

/// How many enrollment groups attestation reads at a time.
pub const GROUP_PAGE: usize = 500;

/// Enrollment reads the caller has made already (with the rest of a
/// registration's reads), so that attestation does not ask the store again.
#[derive(Debug, Clone, Default)]
pub struct Prefetched {
    /// `Some(found)` when the individual enrollment was looked up.
    pub enrollment: Option<Option<Box<IndividualEnrollment>>>,
    /// The first page of enrollment groups (`GROUP_PAGE` at most), when read.
    pub first_groups: Option<Vec<EnrollmentGroup>>,
}

impl Prefetched {
    async fn enrollment(
        &mut self,
        store: &dyn Store,
        service: &str,
        key: &str,
    ) -> Result<Option<Box<IndividualEnrollment>>, ProvisioningError> {
        match self.enrollment.take() {
            Some(found) => Ok(found),
            None => Ok(store.enrollment(service, key).await?.map(Box::new)),
        }
    }
}

/// Enrollment groups page by page, the first page perhaps read already.
struct GroupPages {
    first: Option<Vec<EnrollmentGroup>>,
    after: Option<String>,
    done: bool,
}

impl GroupPages {
    fn new(first: Option<Vec<EnrollmentGroup>>) -> Self {
        Self {
            first,
            after: None,
            done: false,
        }
    }

    /// The next page, or `None` after the last.
    async fn next(
        &mut self,
        store: &dyn Store,
        service: &str,
    ) -> Result<Option<Vec<EnrollmentGroup>>, ProvisioningError> {
        if self.done {
            return Ok(None);
        }
        let page = match self.first.take() {
            Some(page) => page,
            None => {
                store
                    .enrollment_groups(service, self.after.as_deref(), GROUP_PAGE)
                    .await?
            }
        };
        // A short page is the last one: no need to ask for the next.
        self.done = page.len() < GROUP_PAGE;
        self.after = page
            .last()
            .map(|g| g.enrollment_group_id.to_ascii_lowercase());
        Ok(Some(page).filter(|p| !p.is_empty()))
    }
}

/// Attestation settings the engine needs.
#[derive(Debug, Clone, Copy)]
pub struct AttestationConfig {
    /// How far past its expiry a token is still accepted (clock skew).
    pub token_skew_seconds: i64,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        Self {
            token_skew_seconds: 300,
        }
    }
}

/// Decides whether `credential` proves `registration_id` in provisioning service `service`.
#[allow(clippy::too_many_arguments)]
pub async fn attest(
    store: &dyn Store,
    prefetched: Prefetched,
    service: &str,
    id_scope: &str,
    registration_id: &RegistrationId,
    credential: &DeviceCredential,
    now_unix: i64,
    config: AttestationConfig,
) -> Result<Attested, ProvisioningError> {
    match credential {
        DeviceCredential::SasToken(token) => {
            attest_token(
                store,
                prefetched,
                service,
                id_scope,
                registration_id,
                token,
                now_unix,
                config,
            )
            .await
        }
        DeviceCredential::X509Chain(chain) => {
            attest_x509(store, prefetched, service, registration_id, chain, now_unix).await
        }
        DeviceCredential::Tpm { .. } => Err(ProvisioningError::new(
            ErrorCode::UnsupportedAttestation,
            "TPM attestation is not available on this Onramp server yet; \
             provision this device with a symmetric key (SharedAccessSignature) instead",
        )),
        DeviceCredential::None => Err(ProvisioningError::new(
            ErrorCode::MissingAuthorization,
            "the request carries no credential; send a SharedAccessSignature token \
             (HTTP Authorization header, MQTT password) signed with the device key",
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn attest_token(
    store: &dyn Store,
    mut prefetched: Prefetched,
    service: &str,
    id_scope: &str,
    registration_id: &RegistrationId,
    token: &str,
    now_unix: i64,
    config: AttestationConfig,
) -> Result<Attested, ProvisioningError> {
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
        let (primary, secondary) = symmetric_keys_of(
            enrollment
                .attestation
                .as_ref()
                .map(|a| (a.kind, a.symmetric_key.as_ref())),
            &format!("individual enrollment '{}'", enrollment.registration_id),
        )?;
        if !(token.is_signed_by(primary.expose()) || token.is_signed_by(secondary.expose())) {
            return Err(ProvisioningError::unauthorized(format!(
                "the token's signature matches neither key of individual enrollment '{}'; \
                 sign the token with the enrollment's primary or secondary key",
                enrollment.registration_id
            )));
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
    Err(ProvisioningError::new(
        ErrorCode::EnrollmentNotFound,
        format!(
            "no individual enrollment has registration ID '{registration_id}' and no symmetric-key \
             enrollment group's derived key signs this token; create an enrollment for the device, \
             or sign with the key derived from its group's key"
        ),
    ))
}

fn finish(
    registration_id: &RegistrationId,
    enrollment: Enrollment,
    proof: Proof,
) -> Result<Attested, ProvisioningError> {
    if !enrollment.is_enabled() {
        return Err(ProvisioningError::new(
            ErrorCode::EnrollmentDisabled,
            format!(
                "{} is disabled (provisioningStatus: disabled); set it to enabled to let this device register",
                enrollment.describe()
            ),
        ));
    }
    Ok(Attested {
        registration_id: registration_id.clone(),
        enrollment,
        proof,
    })
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

/// The longest registration ID of an X.509 device: a CN holds 64 characters
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
async fn attest_x509(
    store: &dyn Store,
    mut prefetched: Prefetched,
    service: &str,
    registration_id: &RegistrationId,
    chain: &[Vec<u8>],
    now_unix: i64,
) -> Result<Attested, ProvisioningError> {
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
        let att = enrollment.attestation.as_ref();
        if !att.is_some_and(|a| a.kind == AttestationType::X509 && a.x509.is_some()) {
            return Err(ProvisioningError::unauthorized(format!(
                "individual enrollment '{}' uses {} attestation, but the device presented a certificate; \
                 authenticate with the enrollment's mechanism",
                enrollment.registration_id,
                att.map(|a| a.kind.as_str()).unwrap_or("no")
            )));
        }
        // The enrolled certificates' thumbprints, computed when the enrollment was written.
        if !client_thumbprints(&enrollment)
            .iter()
            .any(|t| leaf.has_thumbprint(t))
        {
            return Err(ProvisioningError::unauthorized(format!(
                "the device certificate (SHA-256 {}) is neither certificate of individual enrollment '{}'",
                leaf.info.sha256_thumbprint, enrollment.registration_id
            )));
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
                ));
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
            )));
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
