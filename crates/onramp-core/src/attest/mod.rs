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

//!
//! - `token`: SharedAccessSignature tokens, against an individual
//!   enrollment's keys or a group's derived keys.
//! - `certificate`: X.509 chains, walked from the device certificate up.
//! - `tpm`: the TPM nonce challenge, and tokens signed with its key.
//! - `tpm_group`: which TPM enrollment group (Onramp's extension) admits a
//!   TPM without an individual enrollment, by its EK certificate or EK hash.

mod certificate;
mod token;
mod tpm;
mod tpm_group;

use onramp_model::{
    EnrollmentGroup, ErrorCode, IdKey, IndividualEnrollment, RegistrationId, Secret, UtcTime,
};

use crate::ports::{Store, StoreExt, TpmChallenge};
use crate::{ProvisioningError, x509};

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
        /// The EK certificate a device of a TPM enrollment group sends
        /// (Onramp's extension), PEM or base64 DER.
        endorsement_key_certificate: Option<String>,
    },
    /// Nothing: no token and no client certificate.
    None,
}

/// The enrollment that vouched for a device.
pub use onramp_model::Enrollment;

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
    /// A token signed with the key of its TPM challenge. The hub identity is
    /// made with fresh keys; the primary travels to the TPM when assigned.
    Tpm {
        challenge: Box<TpmChallenge>,
        hub_primary: Secret,
        hub_secondary: Secret,
    },
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
        key: &IdKey,
    ) -> Result<Option<Box<IndividualEnrollment>>, ProvisioningError> {
        match self.enrollment.take() {
            Some(found) => Ok(found),
            None => Ok(store
                .get::<IndividualEnrollment>(service, key)
                .await?
                .map(Box::new)),
        }
    }
}

/// Enrollment groups page by page, the first page perhaps read already.
struct GroupPages {
    first: Option<Vec<EnrollmentGroup>>,
    after: Option<IdKey>,
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
                    .list::<EnrollmentGroup>(service, self.after.as_ref(), GROUP_PAGE)
                    .await?
            }
        };
        // A short page is the last one: no need to ask for the next.
        self.done = page.len() < GROUP_PAGE;
        self.after = page.last().map(|g| IdKey::of(&g.enrollment_group_id));
        Ok(Some(page).filter(|p| !p.is_empty()))
    }
}

/// Attestation settings the engine needs.
#[derive(Debug, Clone, Copy)]
pub struct AttestationConfig {
    /// How far past its expiry a token is still accepted (clock skew).
    pub token_skew_seconds: i64,
    /// How long the key of a TPM challenge signs tokens: its registration
    /// and that registration's polls.
    pub tpm_challenge_seconds: i64,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        Self {
            token_skew_seconds: 300,
            tpm_challenge_seconds: 15 * 60,
        }
    }
}

/// One registration's attestation: who asks, in which provisioning
/// service, when, and under which settings.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    pub store: &'a dyn Store,
    pub service: &'a str,
    pub id_scope: &'a str,
    pub registration_id: &'a RegistrationId,
    pub now: UtcTime,
    pub config: AttestationConfig,
}

/// Decides whether `credential` proves the attempt's registration ID.
pub async fn attest(
    attempt: Attempt<'_>,
    prefetched: Prefetched,
    credential: &DeviceCredential,
) -> Result<Attested, ProvisioningError> {
    match credential {
        DeviceCredential::SasToken(token) => token::attest(attempt, prefetched, token).await,
        DeviceCredential::X509Chain(chain) => certificate::attest(attempt, prefetched, chain).await,
        DeviceCredential::Tpm {
            endorsement_key,
            storage_root_key,
            endorsement_key_certificate,
        } => {
            let keys = tpm::SentKeys {
                endorsement_key,
                storage_root_key: storage_root_key.as_deref(),
                certificate: endorsement_key_certificate.as_deref(),
            };
            tpm::challenge(attempt, prefetched, keys).await
        }
        DeviceCredential::None => Err(ProvisioningError::new(
            ErrorCode::MissingAuthorization,
            "the request carries no credential; send a SharedAccessSignature token \
             (HTTP Authorization header, MQTT password) signed with the device key",
        )),
    }
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
        )
        .from_enrollment(&enrollment));
    }
    Ok(Attested {
        registration_id: registration_id.clone(),
        enrollment,
        proof,
    })
}
