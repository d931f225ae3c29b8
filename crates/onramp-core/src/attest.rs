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

use crate::ports::Store;
use crate::{ProvisioningError, sas};

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
    /// The device's own keys: the hub identity is created with them.
    pub device_keys: (Secret, Secret),
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
pub async fn attest(
    store: &dyn Store,
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
                service,
                id_scope,
                registration_id,
                token,
                now_unix,
                config,
            )
            .await
        }
        DeviceCredential::X509Chain(_) => Err(ProvisioningError::new(
            ErrorCode::UnsupportedAttestation,
            "X.509 attestation is not available on this Onramp server yet; \
             provision this device with a symmetric key (SharedAccessSignature) instead",
        )),
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

async fn attest_token(
    store: &dyn Store,
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
    if let Some(enrollment) = store.enrollment(service, &key).await? {
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
            Enrollment::Individual(Box::new(enrollment)),
            (primary, secondary),
        );
    }

    // No individual enrollment: a symmetric-key group whose derived key signs the token.
    let mut after: Option<String> = None;
    loop {
        let page = store
            .enrollment_groups(service, after.as_deref(), 500)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.enrollment_group_id.to_ascii_lowercase());
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
                    (dp, ds),
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
    device_keys: (Secret, Secret),
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
        device_keys,
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
