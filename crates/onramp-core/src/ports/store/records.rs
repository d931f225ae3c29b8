//! The records a service owns, as the [`Store`](super::Store) reads and
//! writes them: their kinds, where each is kept, pages of them, and the
//! typed forms [`StoreExt`](super::StoreExt) gives them.

use onramp_model::{
    EnrollmentGroup, EnrollmentKind, ErrorCode, IdKey, IndividualEnrollment, UtcTime,
};

use super::{Precondition, RegistrationRecord, TpmChallenge};
use crate::tenant::{CaCertificate, LinkedHub};

/// The kinds of record a provisioning service owns, each kept under the
/// service and an [`IdKey`] (the lower-case form of its ID or name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    Enrollment,
    EnrollmentGroup,
    Registration,
    CaCertificate,
    LinkedHub,
    TpmChallenge,
}

impl RecordKind {
    /// How a "not found" names a record of this kind and ID.
    pub fn missing(self, key: &str) -> String {
        match self {
            RecordKind::Enrollment => EnrollmentKind::Individual.not_found(key),
            RecordKind::EnrollmentGroup => EnrollmentKind::Group.not_found(key),
            RecordKind::Registration => {
                format!("no device has registered with registration ID '{key}'")
            }
            RecordKind::CaCertificate => format!("no CA certificate is named '{key}'"),
            RecordKind::LinkedHub => format!("no linked hub is named '{key}'"),
            RecordKind::TpmChallenge => {
                format!("no TPM challenge is pending for registration ID '{key}'")
            }
        }
    }

    /// The Azure error code of a missing record of this kind.
    pub fn not_found_code(self) -> ErrorCode {
        match self {
            RecordKind::Enrollment => EnrollmentKind::Individual.not_found_code(),
            RecordKind::EnrollmentGroup => EnrollmentKind::Group.not_found_code(),
            RecordKind::Registration => ErrorCode::RegistrationNotFound,
            RecordKind::CaCertificate => ErrorCode::CaCertificateNotFound,
            RecordKind::LinkedHub => ErrorCode::LinkedHubNotFound,
            RecordKind::TpmChallenge => ErrorCode::Unauthorized,
        }
    }
}

/// A record of any kind, as [`Store`] reads and writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    // Boxed: records travel inside futures, which are moved whole.
    Enrollment(Box<IndividualEnrollment>),
    EnrollmentGroup(Box<EnrollmentGroup>),
    Registration(Box<RegistrationRecord>),
    CaCertificate(Box<CaCertificate>),
    LinkedHub(Box<LinkedHub>),
    TpmChallenge(Box<TpmChallenge>),
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Enrollment(_) => RecordKind::Enrollment,
            Record::EnrollmentGroup(_) => RecordKind::EnrollmentGroup,
            Record::Registration(_) => RecordKind::Registration,
            Record::CaCertificate(_) => RecordKind::CaCertificate,
            Record::LinkedHub(_) => RecordKind::LinkedHub,
            Record::TpmChallenge(_) => RecordKind::TpmChallenge,
        }
    }

    /// The key the record is kept under.
    pub fn key(&self) -> IdKey {
        IdKey::of(match self {
            Record::Enrollment(e) => &e.registration_id,
            Record::EnrollmentGroup(g) => &g.enrollment_group_id,
            Record::Registration(r) => &r.state.registration_id,
            Record::CaCertificate(c) => &c.name,
            Record::LinkedHub(h) => h.name.trim(),
            Record::TpmChallenge(c) => &c.registration_id,
        })
    }
}

/// Where a record is kept: the service that owns it, its kind and its key.
/// (Ordered by kind, then service, then key.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordAt {
    pub kind: RecordKind,
    pub service: String,
    pub key: IdKey,
}

impl RecordAt {
    pub fn new(service: &str, kind: RecordKind, key: &IdKey) -> Self {
        Self {
            kind,
            service: service.to_owned(),
            key: key.clone(),
        }
    }

    /// Where `record` is kept in `service`.
    pub fn of(service: &str, record: &Record) -> Self {
        Self {
            kind: record.kind(),
            service: service.to_owned(),
            key: record.key(),
        }
    }

    /// How a "not found" names this record.
    pub fn missing(&self) -> String {
        self.kind.missing(&self.key)
    }
}

/// A page of a service's records in key order: at most `limit`, those
/// whose keys come after `after` (from the first when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub service: String,
    pub after: Option<IdKey>,
    pub limit: usize,
}

impl Page {
    pub fn new(service: &str, after: Option<&IdKey>, limit: usize) -> Self {
        Self {
            service: service.to_owned(),
            after: after.cloned(),
            limit,
        }
    }

    /// Every record of a service.
    pub fn all(service: &str) -> Self {
        Self::new(service, None, usize::MAX)
    }

    /// The key the page starts after: "" (before every key) for the first.
    pub fn after_key(&self) -> &str {
        self.after.as_ref().map_or("", IdKey::as_str)
    }
}

/// A page of the registrations of one enrollment group (by the group's
/// key) in the page's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPage {
    pub group_key: IdKey,
    pub page: Page,
}

impl GroupPage {
    pub fn new(group_key: &IdKey, page: Page) -> Self {
        Self {
            group_key: group_key.clone(),
            page,
        }
    }
}

/// A record to write, the condition the write must meet, and the time it
/// is written at (what the store stamps the record with).
#[derive(Debug, Clone, PartialEq)]
pub struct PutRecord {
    pub record: Record,
    pub condition: Precondition,
    pub now: UtcTime,
}

/// A type kept as one [`RecordKind`]: what the typed calls of [`StoreExt`]
/// take and return.
pub trait StoredRecord: Sized + Send + Sync + 'static {
    const RECORD_KIND: RecordKind;
    fn into_record(self) -> Record;
    fn from_record(record: Record) -> Option<Self>;
}

macro_rules! stored_record {
    ($($ty:ty => $variant:ident),+ $(,)?) => {$(
        impl StoredRecord for $ty {
            const RECORD_KIND: RecordKind = RecordKind::$variant;
            fn into_record(self) -> Record {
                Record::$variant(Box::new(self))
            }
            fn from_record(record: Record) -> Option<Self> {
                match record {
                    Record::$variant(r) => Some(*r),
                    _ => None,
                }
            }
        }
    )+};
}

stored_record!(
    IndividualEnrollment => Enrollment,
    EnrollmentGroup => EnrollmentGroup,
    RegistrationRecord => Registration,
    CaCertificate => CaCertificate,
    LinkedHub => LinkedHub,
    TpmChallenge => TpmChallenge,
);
