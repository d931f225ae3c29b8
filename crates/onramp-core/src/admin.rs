//! The service API's rules: enrollments, groups and registration records as
//! operators see them. Endpoints decode HTTP and call these; nothing here
//! knows about HTTP.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use onramp_model::{
    AttestationMechanism, DeviceRegistrationState, EnrollmentGroup, ErrorCode,
    IndividualEnrollment, RegistrationId,
    query::{
        BulkEnrollmentGroupOperation, BulkEnrollmentGroupOperationError,
        BulkEnrollmentGroupOperationResult, BulkEnrollmentOperation, BulkEnrollmentOperationError,
        BulkEnrollmentOperationResult, BulkMode, QuerySpecification,
    },
};

use crate::ports::{Clock, Precondition, Store, StoreError};
use crate::{ProvisioningError, validate};

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

/// One page of results and the token for the next, if there is one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub continuation: Option<String>,
}

/// What a query is over (checked against the query text).
#[derive(Debug, Clone, Copy)]
enum Collection {
    Enrollments,
    EnrollmentGroups,
    DeviceRegistrations,
}

pub struct Admin {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Admin {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    // ---- individual enrollments ----

    pub async fn put_enrollment(
        &self,
        service: &str,
        path_id: &str,
        body: IndividualEnrollment,
        if_match: Option<&str>,
    ) -> Result<IndividualEnrollment, ProvisioningError> {
        let key = path_id.to_ascii_lowercase();
        let existing = self.store.enrollment(service, &key).await?;
        let hubs = self.store.linked_hubs(service).await?;
        let ctx = validate::Context {
            linked_hubs: &hubs,
            existing_attestation: existing.as_ref().and_then(|e| e.attestation.as_ref()),
        };
        let enrollment = validate::individual_enrollment(path_id, body, &ctx)?;
        let stored = self
            .store
            .put_enrollment(
                service,
                &enrollment,
                Precondition::from_if_match(if_match),
                self.clock.now(),
            )
            .await
            .map_err(|e| not_found_as(e, ErrorCode::EnrollmentNotFound))?;
        Ok(stored)
    }

    /// The enrollment with its registration record; keys are not returned
    /// (use [`Admin::enrollment_attestation`]).
    pub async fn enrollment(
        &self,
        service: &str,
        id: &str,
    ) -> Result<IndividualEnrollment, ProvisioningError> {
        let key = id.to_ascii_lowercase();
        let mut e = self
            .store
            .enrollment(service, &key)
            .await?
            .ok_or_else(|| enrollment_not_found(id))?;
        e.registration_state = self
            .store
            .registration(service, &key)
            .await?
            .map(|r| r.state);
        Ok(hide_enrollment_keys(e))
    }

    pub async fn delete_enrollment(
        &self,
        service: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ProvisioningError> {
        self.store
            .delete_enrollment(
                service,
                &id.to_ascii_lowercase(),
                Precondition::from_if_match(if_match),
            )
            .await
            .map_err(|e| not_found_as(e, ErrorCode::EnrollmentNotFound))
    }

    pub async fn enrollment_attestation(
        &self,
        service: &str,
        id: &str,
    ) -> Result<AttestationMechanism, ProvisioningError> {
        self.store
            .enrollment(service, &id.to_ascii_lowercase())
            .await?
            .and_then(|e| e.attestation)
            .ok_or_else(|| enrollment_not_found(id))
    }

    pub async fn query_enrollments(
        &self,
        service: &str,
        query: &QuerySpecification,
        page: &PageRequest,
    ) -> Result<Page<IndividualEnrollment>, ProvisioningError> {
        check_query(query, Collection::Enrollments)?;
        let (after, limit) = page_bounds(page)?;
        let mut items = self
            .store
            .enrollments(service, after.as_deref(), limit + 1)
            .await?;
        let continuation = next_token(&mut items, limit, |e| {
            e.registration_id.to_ascii_lowercase()
        });
        Ok(Page {
            items: items.into_iter().map(hide_enrollment_keys).collect(),
            continuation,
        })
    }

    /// Applies a bulk operation item by item; failures are reported per item
    /// and do not stop the others.
    pub async fn bulk_enrollments(
        &self,
        service: &str,
        op: BulkEnrollmentOperation,
    ) -> Result<BulkEnrollmentOperationResult, ProvisioningError> {
        check_bulk_size(op.enrollments.len())?;
        let mut errors = Vec::new();
        for item in op.enrollments {
            let id = item.registration_id.clone();
            let outcome = match op.mode {
                BulkMode::Delete => {
                    let cond = item.etag.as_ref().map(|t| t.as_str().to_owned());
                    self.delete_enrollment(service, &id, cond.as_deref()).await
                }
                mode => self
                    .bulk_put_enrollment(service, item, mode)
                    .await
                    .map(|_| ()),
            };
            if let Err(e) = outcome {
                errors.push(BulkEnrollmentOperationError {
                    registration_id: id,
                    error_code: e.code.code(),
                    error_status: e.message,
                });
            }
        }
        Ok(BulkEnrollmentOperationResult {
            is_successful: errors.is_empty(),
            errors,
        })
    }

    async fn bulk_put_enrollment(
        &self,
        service: &str,
        item: IndividualEnrollment,
        mode: BulkMode,
    ) -> Result<IndividualEnrollment, ProvisioningError> {
        if item.registration_id.is_empty() {
            return Err(ProvisioningError::invalid(
                "registrationId is required for every bulk item",
            ));
        }
        let key = item.registration_id.to_ascii_lowercase();
        let existing = self.store.enrollment(service, &key).await?;
        let hubs = self.store.linked_hubs(service).await?;
        let ctx = validate::Context {
            linked_hubs: &hubs,
            existing_attestation: existing.as_ref().and_then(|e| e.attestation.as_ref()),
        };
        let etag = item.etag.clone();
        let id = item.registration_id.clone();
        let enrollment = validate::individual_enrollment(&id, item, &ctx)?;
        let condition = bulk_condition(mode, etag.as_ref().map(|t| t.as_str()));
        self.store
            .put_enrollment(service, &enrollment, condition, self.clock.now())
            .await
            .map_err(|e| bulk_error(e, &id))
    }

    // ---- enrollment groups ----

    pub async fn put_group(
        &self,
        service: &str,
        path_id: &str,
        body: EnrollmentGroup,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup, ProvisioningError> {
        let key = path_id.to_ascii_lowercase();
        let existing = self.store.enrollment_group(service, &key).await?;
        let hubs = self.store.linked_hubs(service).await?;
        let ctx = validate::Context {
            linked_hubs: &hubs,
            existing_attestation: existing.as_ref().and_then(|g| g.attestation.as_ref()),
        };
        let group = validate::enrollment_group(path_id, body, &ctx)?;
        self.store
            .put_enrollment_group(
                service,
                &group,
                Precondition::from_if_match(if_match),
                self.clock.now(),
            )
            .await
            .map_err(|e| not_found_as(e, ErrorCode::EnrollmentGroupNotFound))
    }

    pub async fn group(
        &self,
        service: &str,
        id: &str,
    ) -> Result<EnrollmentGroup, ProvisioningError> {
        self.store
            .enrollment_group(service, &id.to_ascii_lowercase())
            .await?
            .map(hide_group_keys)
            .ok_or_else(|| group_not_found(id))
    }

    pub async fn delete_group(
        &self,
        service: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ProvisioningError> {
        self.store
            .delete_enrollment_group(
                service,
                &id.to_ascii_lowercase(),
                Precondition::from_if_match(if_match),
            )
            .await
            .map_err(|e| not_found_as(e, ErrorCode::EnrollmentGroupNotFound))
    }

    pub async fn group_attestation(
        &self,
        service: &str,
        id: &str,
    ) -> Result<AttestationMechanism, ProvisioningError> {
        self.store
            .enrollment_group(service, &id.to_ascii_lowercase())
            .await?
            .and_then(|g| g.attestation)
            .ok_or_else(|| group_not_found(id))
    }

    pub async fn query_groups(
        &self,
        service: &str,
        query: &QuerySpecification,
        page: &PageRequest,
    ) -> Result<Page<EnrollmentGroup>, ProvisioningError> {
        check_query(query, Collection::EnrollmentGroups)?;
        let (after, limit) = page_bounds(page)?;
        let mut items = self
            .store
            .enrollment_groups(service, after.as_deref(), limit + 1)
            .await?;
        let continuation = next_token(&mut items, limit, |g| {
            g.enrollment_group_id.to_ascii_lowercase()
        });
        Ok(Page {
            items: items.into_iter().map(hide_group_keys).collect(),
            continuation,
        })
    }

    pub async fn bulk_groups(
        &self,
        service: &str,
        op: BulkEnrollmentGroupOperation,
    ) -> Result<BulkEnrollmentGroupOperationResult, ProvisioningError> {
        check_bulk_size(op.enrollment_groups.len())?;
        let mut errors = Vec::new();
        for item in op.enrollment_groups {
            let id = item.enrollment_group_id.clone();
            let outcome = match op.mode {
                BulkMode::Delete => {
                    let cond = item.etag.as_ref().map(|t| t.as_str().to_owned());
                    self.delete_group(service, &id, cond.as_deref()).await
                }
                mode => {
                    let etag = item.etag.clone();
                    if id.is_empty() {
                        Err(ProvisioningError::invalid(
                            "enrollmentGroupId is required for every bulk item",
                        ))
                    } else {
                        let key = id.to_ascii_lowercase();
                        let existing = self.store.enrollment_group(service, &key).await?;
                        let hubs = self.store.linked_hubs(service).await?;
                        let ctx = validate::Context {
                            linked_hubs: &hubs,
                            existing_attestation: existing
                                .as_ref()
                                .and_then(|g| g.attestation.as_ref()),
                        };
                        match validate::enrollment_group(&id, item, &ctx) {
                            Ok(group) => self
                                .store
                                .put_enrollment_group(
                                    service,
                                    &group,
                                    bulk_condition(mode, etag.as_ref().map(|t| t.as_str())),
                                    self.clock.now(),
                                )
                                .await
                                .map(|_| ())
                                .map_err(|e| bulk_error(e, &id)),
                            Err(e) => Err(e),
                        }
                    }
                }
            };
            if let Err(e) = outcome {
                errors.push(BulkEnrollmentGroupOperationError {
                    enrollment_group_id: id,
                    error_code: e.code.code(),
                    error_status: e.message,
                });
            }
        }
        Ok(BulkEnrollmentGroupOperationResult {
            is_successful: errors.is_empty(),
            errors,
        })
    }

    // ---- registration records ----

    pub async fn registration(
        &self,
        service: &str,
        id: &str,
    ) -> Result<DeviceRegistrationState, ProvisioningError> {
        self.store
            .registration(service, &id.to_ascii_lowercase())
            .await?
            .map(|r| service_view(r.state))
            .ok_or_else(|| registration_not_found(id))
    }

    pub async fn delete_registration(
        &self,
        service: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ProvisioningError> {
        self.store
            .delete_registration(
                service,
                &id.to_ascii_lowercase(),
                Precondition::from_if_match(if_match),
            )
            .await
            .map_err(|e| not_found_as(e, ErrorCode::RegistrationNotFound))
    }

    /// Registration records of one enrollment group. The query body is
    /// optional here (Python's SDK sends none).
    pub async fn query_registrations(
        &self,
        service: &str,
        group_id: &str,
        query: Option<&QuerySpecification>,
        page: &PageRequest,
    ) -> Result<Page<DeviceRegistrationState>, ProvisioningError> {
        if let Some(q) = query {
            check_query(q, Collection::DeviceRegistrations)?;
        }
        let group_key = group_id.to_ascii_lowercase();
        if self
            .store
            .enrollment_group(service, &group_key)
            .await?
            .is_none()
        {
            return Err(group_not_found(group_id));
        }
        let (after, limit) = page_bounds(page)?;
        let mut items = self
            .store
            .registrations_of_group(service, &group_key, after.as_deref(), limit + 1)
            .await?;
        let continuation = next_token(&mut items, limit, |r| {
            r.state.registration_id.to_ascii_lowercase()
        });
        Ok(Page {
            items: items.into_iter().map(|r| service_view(r.state)).collect(),
            continuation,
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

fn enrollment_not_found(id: &str) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::EnrollmentNotFound,
        format!("no individual enrollment has registration ID '{id}'"),
    )
}

fn group_not_found(id: &str) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::EnrollmentGroupNotFound,
        format!("no enrollment group has ID '{id}'"),
    )
}

fn registration_not_found(id: &str) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::RegistrationNotFound,
        format!("no device has registered with registration ID '{id}'"),
    )
}

fn not_found_as(e: StoreError, code: ErrorCode) -> ProvisioningError {
    match e {
        StoreError::NotFound(m) => ProvisioningError::new(code, m),
        other => other.into(),
    }
}

fn bulk_condition(mode: BulkMode, etag: Option<&str>) -> Precondition {
    match mode {
        BulkMode::Create => Precondition::IfNotExists,
        BulkMode::UpdateIfMatchETag => match etag {
            Some(t) => Precondition::IfMatch(t.to_owned()),
            None => Precondition::IfMatch(String::new()),
        },
        BulkMode::Update | BulkMode::Delete => Precondition::None,
    }
}

fn bulk_error(e: StoreError, id: &str) -> ProvisioningError {
    match e {
        StoreError::AlreadyExists(_) => ProvisioningError::new(
            ErrorCode::AlreadyExists,
            format!("'{id}' already exists; use mode update to replace it"),
        ),
        other => other.into(),
    }
}

fn check_bulk_size(n: usize) -> Result<(), ProvisioningError> {
    if n > MAX_BULK_ITEMS {
        return Err(ProvisioningError::invalid(format!(
            "the bulk operation has {n} items; send at most {MAX_BULK_ITEMS} per call"
        )));
    }
    Ok(())
}

fn hide_enrollment_keys(mut e: IndividualEnrollment) -> IndividualEnrollment {
    if let Some(att) = e.attestation.as_mut() {
        hide_keys(att);
    }
    e
}

fn hide_group_keys(mut g: EnrollmentGroup) -> EnrollmentGroup {
    if let Some(att) = g.attestation.as_mut() {
        hide_keys(att);
    }
    g
}

/// GET and query never return symmetric keys (as in Azure); the
/// attestation-mechanism call does.
fn hide_keys(att: &mut AttestationMechanism) {
    if let Some(keys) = att.symmetric_key.as_mut() {
        keys.primary_key = None;
        keys.secondary_key = None;
    }
}

/// Accepts `*` and `SELECT * FROM <collection> [WHERE …]` in any case. Like
/// Azure, the service returns the whole collection; a WHERE clause is accepted
/// and not applied.
fn check_query(
    query: &QuerySpecification,
    collection: Collection,
) -> Result<(), ProvisioningError> {
    let text = query.query.trim();
    if text.is_empty() || text == "*" {
        return Ok(());
    }
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let from_ok = |name: &str| {
        let expected: &[&str] = match collection {
            Collection::Enrollments => &["enrollments", "enrollment"],
            Collection::EnrollmentGroups => &["enrollmentgroups", "enrollmentgroup"],
            Collection::DeviceRegistrations => {
                &["deviceregistrations", "registrations", "deviceregistration"]
            }
        };
        expected.contains(&name)
    };
    if words.len() >= 4
        && words[0] == "select"
        && words[1] == "*"
        && words[2] == "from"
        && from_ok(words[3])
    {
        return Ok(());
    }
    let example = match collection {
        Collection::Enrollments => "SELECT * FROM enrollments",
        Collection::EnrollmentGroups => "SELECT * FROM enrollmentGroups",
        Collection::DeviceRegistrations => "SELECT * FROM deviceRegistrations",
    };
    Err(ProvisioningError::invalid(format!(
        "query '{text}' is not supported; use '*' or '{example}'"
    )))
}

fn page_bounds(page: &PageRequest) -> Result<(Option<String>, usize), ProvisioningError> {
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
            Some(key)
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
fn next_token<T>(items: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Option<String> {
    if items.len() <= limit {
        return None;
    }
    items.truncate(limit);
    items.last().map(|last| URL_SAFE_NO_PAD.encode(key(last)))
}
