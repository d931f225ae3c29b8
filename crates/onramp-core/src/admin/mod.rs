//! The service API's rules: enrollments, groups and registration records as
//! operators see them. Endpoints decode HTTP and call these; nothing here
//! knows about HTTP.
//!
//! - `enrollments`: individual enrollments and groups, one path for both;
//! - `certificates`: CA certificates and their proof of possession;
//! - `registrations`: the registration records devices leave;
//! - `diagnostics`: the registration attempts devices made (an Onramp extension).
//! - `overview`: the service and its linked hubs as the console shows them
//!   (Onramp's read-only extension routes).

mod certificates;
mod diagnostics;
mod enrollments;
mod overview;
mod registrations;

pub use overview::{LatencyMeasured, LinkedHubStatus, ServiceSummary};

use std::sync::Arc;

pub use diagnostics::{DEFAULT_DIAGNOSTICS, DiagnosticsFilter, MAX_DIAGNOSTICS};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use onramp_model::{
    AttestationMechanism, DeviceRegistrationState, EnrollmentGroup, EnrollmentKind,
    EnrollmentRecord, ErrorCode, IdKey, IndividualEnrollment, RegistrationId,
    query::{BulkMode, QuerySpecification},
};

use onramp_model::certificate::{
    CertificateBody, CertificateList, CertificateProperties, CertificateResponse,
};

use crate::ports::{
    Clock, Precondition, RegistrationRecord, Store, StoreError, StoreExt, StoredRecord,
};
use crate::tenant::{CaCertificate, LinkedHub};
use crate::{ProvisioningError, validate, x509};

/// Page sizes when the caller gives none, and at most.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Items per bulk call. Azure allows 10; Onramp's limit only bounds one request's work.
pub const MAX_BULK_ITEMS: usize = 10_000;

/// Paging headers of a query request.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub max_items: Option<usize>,
    pub continuation: Option<String>,
}

/// What a write of the service API carries: the ID its path names, the
/// body, and the request's If-Match.
#[derive(Debug, Clone)]
pub struct Write<'a, B> {
    pub id: &'a str,
    pub body: B,
    pub if_match: Option<&'a str>,
}

/// One page of results and the token for the next, if there is one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub continuation: Option<String>,
}

/// What enrollments are checked against: the linked hubs, and whether the
/// service has a default custom-allocation webhook. Read once per request or
/// bulk batch.
struct Targets {
    linked_hubs: Vec<LinkedHub>,
    service_webhook: bool,
}

impl Targets {
    fn context<'a>(&'a self, existing: Option<&'a AttestationMechanism>) -> validate::Context<'a> {
        validate::Context {
            linked_hubs: &self.linked_hubs,
            service_webhook: self.service_webhook,
            existing_attestation: existing,
        }
    }
}

/// An individual enrollment or a group, as the service rules check and the
/// store keeps it.
pub trait EnrollmentResource: EnrollmentRecord + ServiceApiRecord {}

impl<E: EnrollmentRecord + ServiceApiRecord> EnrollmentResource for E {}

/// The records the service API reads and deletes by ID. Linked hubs are not
/// among them: their edits go through [`crate::linked_hubs`].
pub trait ServiceApiRecord: StoredRecord {}

impl ServiceApiRecord for IndividualEnrollment {}
impl ServiceApiRecord for EnrollmentGroup {}
impl ServiceApiRecord for RegistrationRecord {}
impl ServiceApiRecord for CaCertificate {}

pub struct Admin {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Admin {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Deletes an enrollment, a group, a registration record or a CA
    /// certificate if `if_match` allows.
    pub async fn delete<T: ServiceApiRecord>(
        &self,
        service: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ProvisioningError> {
        let condition = Precondition::from_if_match(if_match);
        let deleted = self
            .store
            .delete::<T>(service, &IdKey::of(id), condition)
            .await;
        deleted.map_err(|e| record_error::<T>(e, id))
    }

    /// A record that must exist: its kind's "not found" otherwise.
    async fn existing<T: StoredRecord>(
        &self,
        service: &str,
        id: &str,
    ) -> Result<T, ProvisioningError> {
        let found = self.store.get::<T>(service, &IdKey::of(id)).await?;
        found.ok_or_else(|| not_found::<T>(id))
    }

    async fn allocation_targets(&self, service: &str) -> Result<Targets, ProvisioningError> {
        let linked_hubs = self.store.linked_hubs(service).await?;
        let service_webhook = self
            .store
            .service(service)
            .await?
            .is_some_and(|s| s.custom_allocation.is_some());
        Ok(Targets {
            linked_hubs,
            service_webhook,
        })
    }
}

/// The registration record as the service API shows it: the device API's
/// attestation-specific members (`symmetricKey`, `x509`, `tpm`, issued
/// certificates) are not part of `DeviceRegistrationState`.
fn service_view(mut state: DeviceRegistrationState) -> DeviceRegistrationState {
    state.symmetric_key = None;
    state.x509 = None;
    state.tpm = None;
    state.issued_certificate_chain = None;
    state
}

/// "Not found" for a record of kind `T`, named by the ID as the caller sent it.
fn not_found<T: StoredRecord>(id: &str) -> ProvisioningError {
    ProvisioningError::new(T::RECORD_KIND.not_found_code(), T::RECORD_KIND.missing(id))
}

/// The error of a store call on the record of kind `T` named `id`, its
/// "not found" in the service API's words.
fn record_error<T: StoredRecord>(e: StoreError, id: &str) -> ProvisioningError {
    match e {
        StoreError::NotFound(_) => not_found::<T>(id),
        other => other.into(),
    }
}

/// Azure's service ignores the query text and returns the whole collection,
/// and real callers lean on that: PowerShell and the Java SDK's examples send
/// `SELECT * FROM enrollments` to the registration query, and filters are
/// sent and ignored. Onramp does the same for any `SELECT … FROM …`, and
/// refuses only text that is no query at all.
fn check_query(query: &QuerySpecification, collection: &str) -> Result<(), ProvisioningError> {
    let text = query.query.trim();
    if text.is_empty() || text == "*" {
        return Ok(());
    }
    let lower = text.to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    if words.next() == Some("select") && words.any(|w| w == "from") {
        return Ok(());
    }
    Err(ProvisioningError::invalid(format!(
        "query '{text}' is not a query; use '*' or 'SELECT * FROM {collection}' (every item is returned, \
         as Azure's service does)"
    )))
}

fn page_bounds(page: &PageRequest) -> Result<(Option<IdKey>, usize), ProvisioningError> {
    let limit = page
        .max_items
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .clamp(1, MAX_PAGE_SIZE);
    let after = match page
        .continuation
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        None => None,
        Some(token) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|_| bad_continuation(token))?;
            let key = String::from_utf8(bytes).map_err(|_| bad_continuation(token))?;
            if RegistrationId::parse(&key).is_err() {
                return Err(bad_continuation(token));
            }
            Some(IdKey::of(&key))
        }
    };
    Ok((after, limit))
}

fn bad_continuation(token: &str) -> ProvisioningError {
    ProvisioningError::invalid(format!(
        "x-ms-continuation '{token}' is not a token this service issued; repeat the query without it"
    ))
}

/// Trims `items` (fetched with one extra) to `limit`, and returns the token
/// for the next page when the extra one showed there is more.
fn next_token<T>(items: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> IdKey) -> Option<String> {
    if items.len() <= limit {
        return None;
    }
    items.truncate(limit);
    items
        .last()
        .map(|last| URL_SAFE_NO_PAD.encode(key(last).as_str()))
}

#[cfg(test)]
mod query_tests {
    use super::*;

    fn q(text: &str) -> QuerySpecification {
        QuerySpecification { query: text.into() }
    }

    #[test]
    fn every_form_the_sdks_and_tools_send_is_accepted() {
        for (text, collection) in [
            ("*", "enrollments"),
            ("", "enrollmentGroups"),
            ("SELECT * FROM enrollments", "enrollments"),
            (
                "select * from enrollmentGroups where attestation.type = 'x509'",
                "enrollmentGroups",
            ),
            ("SELECT * FROM enrollments", "deviceRegistrations"),
            ("SELECT * FROM enrollmentGroups", "deviceRegistrations"),
            ("select * from deviceRegistrations", "deviceRegistrations"),
        ] {
            assert!(check_query(&q(text), collection).is_ok(), "{text}");
        }
        let err = check_query(&q("hello"), "enrollmentGroups").unwrap_err();
        assert!(
            err.message.contains("SELECT * FROM enrollmentGroups"),
            "{}",
            err.message
        );
    }
}
