//! The engine's one error type: an Azure error code and a message for a human.

use std::fmt;

use onramp_model::ErrorCode;

use crate::ports::StoreError;

/// A refusal or failure, ready to become an Azure error body at the boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisioningError {
    pub code: ErrorCode,
    /// Names the field or check that failed and, where there is one, the fix.
    pub message: String,
    /// The activation blob (base64) of a TPM challenge: the refusal that asks
    /// the device to sign its next request with the key inside.
    pub tpm_challenge: Option<String>,
    /// Seconds the caller should wait before it asks again, where the
    /// refusal knows (a throttle's bucket); the protocols' default otherwise.
    pub retry_after: Option<u32>,
    /// The enrollment attestation had found when it refused
    /// (`individual:<id>` or `group:<id>`): for the operator's diagnostics,
    /// never sent to the device.
    pub enrollment: Option<String>,
}

impl ProvisioningError {
    /// `message` is any text or error that names the field or check and the fix.
    pub fn new(code: ErrorCode, message: impl std::fmt::Display) -> Self {
        Self {
            code,
            message: message.to_string(),
            tpm_challenge: None,
            retry_after: None,
            enrollment: None,
        }
    }

    /// The same refusal, naming (for the operator) the enrollment that
    /// refused, unless it names one already.
    pub fn from_enrollment(self, enrollment: &onramp_model::Enrollment) -> Self {
        self.naming(enrollment.kind(), enrollment.id())
    }

    /// [`from_enrollment`](Self::from_enrollment) for an individual
    /// enrollment, by its registration ID.
    pub fn from_individual(self, registration_id: &str) -> Self {
        self.naming(onramp_model::EnrollmentKind::Individual, registration_id)
    }

    /// [`from_enrollment`](Self::from_enrollment) for an enrollment group, by its ID.
    pub fn group_named(self, group_id: &str) -> Self {
        self.naming(onramp_model::EnrollmentKind::Group, group_id)
    }

    fn naming(mut self, kind: onramp_model::EnrollmentKind, id: &str) -> Self {
        self.enrollment
            .get_or_insert_with(|| enrollment_ref(kind, id));
        self
    }

    /// The answer to a TPM device's first request: sign the next one with
    /// the key this blob carries to your TPM.
    pub fn tpm_challenge(activation_blob: String) -> Self {
        Self {
            tpm_challenge: Some(activation_blob),
            ..Self::unauthorized(
                "import authenticationKey into the TPM and sign the registration's \
                 SharedAccessSignature with it (keyName: registration)",
            )
        }
    }

    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn unauthorized(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }

    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

impl fmt::Display for ProvisioningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.name(),
            self.code.code(),
            self.message
        )
    }
}

impl std::error::Error for ProvisioningError {}

impl From<StoreError> for ProvisioningError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PreconditionFailed(m) => Self::new(ErrorCode::PreconditionFailed, m),
            StoreError::NotFound(m) => Self::new(ErrorCode::RouteNotFound, m),
            StoreError::AlreadyExists(m) => Self::new(ErrorCode::AlreadyExists, m),
            StoreError::Unavailable(m) => Self::new(
                ErrorCode::StoreUnavailable,
                format!("the store is unavailable, retry later: {m}"),
            ),
            StoreError::Overtaken(m) => Self::new(ErrorCode::RegistrationSuperseded, m),
            StoreError::Corrupt(m) => {
                Self::internal(format!("a stored record could not be read: {m}"))
            }
        }
    }
}

/// How diagnostics name an enrollment: `individual:<id>` or `group:<id>`.
pub fn enrollment_ref(kind: onramp_model::EnrollmentKind, id: &str) -> String {
    match kind {
        onramp_model::EnrollmentKind::Individual => format!("individual:{id}"),
        onramp_model::EnrollmentKind::Group => format!("group:{id}"),
    }
}

/// An error and its sources on one line, `outer: inner: …`: what an operator
/// needs from a failed outbound call (a hub, a webhook).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
