//! What both stores write the same way: a record stamped and sealed before
//! it reaches a connection, and the columns a registration keeps beside its
//! document. Each store only says how the rows go in (its SQL dialect and
//! its way of holding a condition).

use onramp_core::ports::{Record, RegistrationRecord, StoreError};
use onramp_core::tenant::{CaCertificate, LinkedHub};
use onramp_model::{EnrollmentGroup, IndividualEnrollment, UtcTime};

use crate::seal::Sealer;
use crate::sqlite::challenges::ChallengeWrite;
use crate::sqlite::enrollments::EnrollmentWrite;
use crate::sqlite::rows::corrupt;
use crate::sqlite::services::SealedHub;
use crate::sqlite::{certificates, registrations};

/// What a write under a service that is not there is refused with.
pub(crate) fn missing_service(service: &str) -> StoreError {
    StoreError::NotFound(format!("no provisioning service '{service}'"))
}

/// A record ready to write: stamped, its secrets sealed (work done before a
/// connection or the writer thread is taken).
pub(crate) enum RecordWrite {
    Enrollment(Box<EnrollmentWrite<IndividualEnrollment>>),
    EnrollmentGroup(Box<EnrollmentWrite<EnrollmentGroup>>),
    Registration(Box<RegistrationRecord>, UtcTime),
    CaCertificate(Box<CaCertificate>),
    LinkedHub(Box<SealedHub>, Box<LinkedHub>),
    TpmChallenge(Box<ChallengeWrite>),
}

impl RecordWrite {
    pub(crate) fn prepare(
        sealer: &Sealer,
        service: &str,
        record: Record,
        now: UtcTime,
    ) -> Result<Self, StoreError> {
        Ok(match record {
            Record::Enrollment(e) => {
                RecordWrite::Enrollment(Box::new(EnrollmentWrite::seal(sealer, service, &*e, now)?))
            }
            Record::EnrollmentGroup(g) => RecordWrite::EnrollmentGroup(Box::new(
                EnrollmentWrite::seal(sealer, service, &*g, now)?,
            )),
            Record::Registration(r) => {
                RecordWrite::Registration(Box::new(registrations::stamp(&r, now)), now)
            }
            Record::CaCertificate(c) => {
                RecordWrite::CaCertificate(Box::new(certificates::stamp(&c)))
            }
            Record::LinkedHub(h) => {
                RecordWrite::LinkedHub(Box::new(SealedHub::seal(sealer, service, &h)?), h)
            }
            Record::TpmChallenge(c) => {
                RecordWrite::TpmChallenge(Box::new(ChallengeWrite::seal(sealer, service, *c)?))
            }
        })
    }
}

/// The columns a registration's row keeps beside its document: the key of
/// its group, its ETag, where it is placed and the key of that hub.
pub(crate) struct RegistrationColumns {
    pub(crate) group_key: Option<String>,
    pub(crate) etag: String,
    pub(crate) placement: Option<String>,
    pub(crate) hub_key: Option<String>,
}

impl RegistrationColumns {
    pub(crate) fn of(stored: &RegistrationRecord) -> Result<Self, StoreError> {
        let placement = stored.current_placement();
        Ok(Self {
            group_key: stored
                .enrollment_group_id
                .as_ref()
                .map(|g| g.to_ascii_lowercase()),
            etag: stored
                .state
                .etag
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            hub_key: placement.as_ref().map(|p| p.hub.to_ascii_lowercase()),
            placement: placement
                .map(|p| serde_json::to_string(&p))
                .transpose()
                .map_err(|e| corrupt("registration placement", e))?,
        })
    }
}
