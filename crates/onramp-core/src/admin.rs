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

use onramp_model::certificate::{
    CertificateBody, CertificateList, CertificateProperties, CertificateResponse,
};

use crate::ports::{Clock, Precondition, Store, StoreError};
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

pub struct Admin {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Admin {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
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

    // ---- individual enrollments ----

    pub async fn put_enrollment(
        &self,
        service: &str,
        path_id: &str,
        body: IndividualEnrollment,
        if_match: Option<&str>,
    ) -> Result<IndividualEnrollment, ProvisioningError> {
        let targets = self.allocation_targets(service).await?;
        let condition = Precondition::from_if_match(if_match);
        self.write_enrollment(service, path_id, body, condition, &targets, |e| {
            not_found_as(e, ErrorCode::EnrollmentNotFound)
        })
        .await
    }

    /// Validates an enrollment against what it replaces and the allocation
    /// targets, and stores it: the one path of single and bulk writes.
    async fn write_enrollment(
        &self,
        service: &str,
        id: &str,
        body: IndividualEnrollment,
        condition: Precondition,
        targets: &Targets,
        store_error: impl FnOnce(StoreError) -> ProvisioningError,
    ) -> Result<IndividualEnrollment, ProvisioningError> {
        let existing = self
            .store
            .enrollment(service, &id.to_ascii_lowercase())
            .await?;
        let ctx = targets.context(existing.as_ref().and_then(|e| e.attestation.as_ref()));
        let enrollment = validate::individual_enrollment(id, body, &ctx)?;
        self.store
            .put_enrollment(service, &enrollment, condition, self.clock.now())
            .await
            .map_err(store_error)
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
            .map(|r| service_view(r.state));
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
        check_bulk_ids(
            op.enrollments.iter().map(|e| e.registration_id.as_str()),
            "enrollments",
            "registrationId",
        )?;
        // Read once for the whole batch, not once per item.
        let targets = self.allocation_targets(service).await?;
        let mut errors = Vec::new();
        for item in op.enrollments {
            let id = item.registration_id.clone();
            let outcome = match op.mode {
                BulkMode::Delete => {
                    let cond = item.etag.as_ref().map(|t| t.as_str().to_owned());
                    self.delete_enrollment(service, &id, cond.as_deref()).await
                }
                mode => self
                    .bulk_put_enrollment(service, item, mode, &targets)
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
        targets: &Targets,
    ) -> Result<IndividualEnrollment, ProvisioningError> {
        let condition = bulk_condition(mode, item.etag.as_ref().map(|t| t.as_str()));
        let id = item.registration_id.clone();
        self.write_enrollment(service, &id, item, condition, targets, |e| {
            bulk_error(e, &id)
        })
        .await
    }

    // ---- enrollment groups ----

    pub async fn put_group(
        &self,
        service: &str,
        path_id: &str,
        body: EnrollmentGroup,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup, ProvisioningError> {
        let targets = self.allocation_targets(service).await?;
        let condition = Precondition::from_if_match(if_match);
        self.write_group(service, path_id, body, condition, &targets, |e| {
            not_found_as(e, ErrorCode::EnrollmentGroupNotFound)
        })
        .await
    }

    /// Validates a group against what it replaces, the allocation targets and
    /// the CA certificates it names, and stores it.
    async fn write_group(
        &self,
        service: &str,
        id: &str,
        body: EnrollmentGroup,
        condition: Precondition,
        targets: &Targets,
        store_error: impl FnOnce(StoreError) -> ProvisioningError,
    ) -> Result<EnrollmentGroup, ProvisioningError> {
        let existing = self
            .store
            .enrollment_group(service, &id.to_ascii_lowercase())
            .await?;
        let ctx = targets.context(existing.as_ref().and_then(|g| g.attestation.as_ref()));
        let group = validate::enrollment_group(id, body, &ctx)?;
        self.check_ca_references(service, &group).await?;
        self.store
            .put_enrollment_group(service, &group, condition, self.clock.now())
            .await
            .map_err(store_error)
    }

    async fn bulk_put_group(
        &self,
        service: &str,
        item: EnrollmentGroup,
        mode: BulkMode,
        targets: &Targets,
    ) -> Result<EnrollmentGroup, ProvisioningError> {
        let condition = bulk_condition(mode, item.etag.as_ref().map(|t| t.as_str()));
        let id = item.enrollment_group_id.clone();
        self.write_group(service, &id, item, condition, targets, |e| {
            bulk_error(e, &id)
        })
        .await
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
        check_bulk_ids(
            op.enrollment_groups
                .iter()
                .map(|g| g.enrollment_group_id.as_str()),
            "enrollmentGroups",
            "enrollmentGroupId",
        )?;
        // Read once for the whole batch, not once per item.
        let targets = self.allocation_targets(service).await?;
        let mut errors = Vec::new();
        for item in op.enrollment_groups {
            let id = item.enrollment_group_id.clone();
            let outcome = match op.mode {
                BulkMode::Delete => {
                    let cond = item.etag.as_ref().map(|t| t.as_str().to_owned());
                    self.delete_group(service, &id, cond.as_deref()).await
                }
                mode => self
                    .bulk_put_group(service, item, mode, &targets)
                    .await
                    .map(|_| ()),
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

    /// A group's `caReferences` must name CA certificates of this service.
    async fn check_ca_references(
        &self,
        service: &str,
        group: &EnrollmentGroup,
    ) -> Result<(), ProvisioningError> {
        let refs = group
            .attestation
            .as_ref()
            .and_then(|a| a.x509.as_ref())
            .and_then(|x| x.ca_references.as_ref());
        for (slot, name) in [
            ("primary", refs.and_then(|r| r.primary.as_ref())),
            ("secondary", refs.and_then(|r| r.secondary.as_ref())),
        ] {
            if let Some(name) = name
                && self.store.ca_certificate(service, name).await?.is_none()
            {
                return Err(ProvisioningError::invalid(format!(
                    "attestation.x509.caReferences.{slot} '{name}' names no CA certificate of this service; \
                     upload it first (onramp cert upload)"
                )));
            }
        }
        Ok(())
    }

    // ---- CA certificates (proof of possession) ----

    /// Uploads (or replaces) a CA certificate. A new or changed certificate
    /// starts unverified unless `isVerified` says otherwise.
    pub async fn put_ca_certificate(
        &self,
        service: &str,
        name: &str,
        body: CertificateBody,
        if_match: Option<&str>,
    ) -> Result<CertificateResponse, ProvisioningError> {
        check_certificate_name(name)?;
        let der = x509::decode(&body.certificate)
            .map_err(|e| ProvisioningError::invalid(format!("certificate: {e}")))?;
        let parsed = x509::Parsed::from_der(&der)
            .map_err(|e| ProvisioningError::invalid(format!("certificate: {e}")))?;
        if !parsed.is_ca {
            return Err(ProvisioningError::invalid(format!(
                "certificate {} is not a CA certificate (basicConstraints CA:TRUE); upload the root or intermediate                  that signs device certificates",
                parsed.info.subject_name
            )));
        }
        let now = self.clock.now();
        let existing = self.store.ca_certificate(service, name).await?;
        let same = existing.as_ref().is_some_and(|e| e.der == der);
        let ca = CaCertificate {
            name: existing
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_else(|| name.to_owned()),
            subject: parsed.info.subject_name.clone(),
            thumbprint: parsed.info.sha1_thumbprint.clone(),
            sha256_thumbprint: parsed.info.sha256_thumbprint.clone(),
            not_after: parsed.info.not_after_utc,
            is_verified: body
                .is_verified
                .unwrap_or(same && existing.as_ref().is_some_and(|e| e.is_verified)),
            verification_code: if same {
                existing.as_ref().and_then(|e| e.verification_code.clone())
            } else {
                None
            },
            etag: None,
            created: existing.as_ref().map(|e| e.created).unwrap_or(now),
            updated: now,
            der,
        };
        let stored = self
            .store
            .put_ca_certificate(service, &ca, Precondition::from_if_match(if_match))
            .await
            .map_err(|e| not_found_as(e, ErrorCode::CaCertificateNotFound))?;
        Ok(certificate_response(service, &stored))
    }

    pub async fn ca_certificate(
        &self,
        service: &str,
        name: &str,
    ) -> Result<CertificateResponse, ProvisioningError> {
        let ca = self
            .store
            .ca_certificate(service, name)
            .await?
            .ok_or_else(|| ca_not_found(name))?;
        Ok(certificate_response(service, &ca))
    }

    pub async fn ca_certificates(
        &self,
        service: &str,
    ) -> Result<CertificateList, ProvisioningError> {
        let list = self.store.ca_certificates(service).await?;
        Ok(CertificateList {
            value: list
                .iter()
                .map(|c| certificate_response(service, c))
                .collect(),
        })
    }

    pub async fn delete_ca_certificate(
        &self,
        service: &str,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<(), ProvisioningError> {
        self.store
            .delete_ca_certificate(service, name, Precondition::from_if_match(if_match))
            .await
            .map_err(|e| not_found_as(e, ErrorCode::CaCertificateNotFound))
    }

    /// Issues the code a verification certificate must carry as its CN.
    pub async fn generate_verification_code(
        &self,
        service: &str,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<CertificateResponse, ProvisioningError> {
        let mut ca = self
            .store
            .ca_certificate(service, name)
            .await?
            .ok_or_else(|| ca_not_found(name))?;
        let code: String = crate::keys::random_bytes(16)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        ca.verification_code = Some(code.clone());
        ca.updated = self.clock.now();
        let stored = self
            .store
            .put_ca_certificate(
                service,
                &ca,
                Precondition::from_if_match(if_match).or_as_read(ca.etag.as_ref()),
            )
            .await
            .map_err(|e| not_found_as(e, ErrorCode::CaCertificateNotFound))?;
        let mut response = certificate_response(service, &stored);
        response.properties.verification_code = Some(code);
        Ok(response)
    }

    /// Proof of possession: a certificate whose CN is the verification code,
    /// signed with the CA's private key, marks the CA verified.
    pub async fn verify_ca_certificate(
        &self,
        service: &str,
        name: &str,
        body: CertificateBody,
        if_match: Option<&str>,
    ) -> Result<CertificateResponse, ProvisioningError> {
        let mut ca = self
            .store
            .ca_certificate(service, name)
            .await?
            .ok_or_else(|| ca_not_found(name))?;
        let failed = |m: String| ProvisioningError::new(ErrorCode::VerificationFailed, m);
        let Some(code) = ca.verification_code.clone() else {
            return Err(failed(format!(
                "CA certificate '{name}' has no verification code yet; generate one first (generateVerificationCode)"
            )));
        };
        let der = x509::decode(&body.certificate)
            .map_err(|e| ProvisioningError::invalid(format!("certificate: {e}")))?;
        let parsed = x509::Parsed::from_der(&der)
            .map_err(|e| ProvisioningError::invalid(format!("certificate: {e}")))?;
        if !parsed
            .common_name
            .as_deref()
            .is_some_and(|cn| cn.eq_ignore_ascii_case(&code))
        {
            return Err(failed(format!(
                "the verification certificate's CN is '{}', not the verification code '{code}'",
                parsed.common_name.as_deref().unwrap_or("")
            )));
        }
        if !x509::is_signed_by(&der, &ca.der) {
            return Err(failed(format!(
                "the verification certificate is not signed by CA certificate '{name}' ({}); sign it with that CA's key",
                ca.subject
            )));
        }
        parsed
            .validity_at(self.clock.now())
            .map_err(|e| failed(format!("the verification certificate: {e}")))?;
        ca.is_verified = true;
        ca.verification_code = None;
        ca.updated = self.clock.now();
        let stored = self
            .store
            .put_ca_certificate(
                service,
                &ca,
                Precondition::from_if_match(if_match).or_as_read(ca.etag.as_ref()),
            )
            .await
            .map_err(|e| not_found_as(e, ErrorCode::CaCertificateNotFound))?;
        Ok(certificate_response(service, &stored))
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

fn ca_not_found(name: &str) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::CaCertificateNotFound,
        format!("no CA certificate is named '{name}'"),
    )
}

fn check_certificate_name(name: &str) -> Result<(), ProvisioningError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(ProvisioningError::invalid(format!(
            "certificate name '{name}' must be 1 to 64 letters, digits, '-', '.' or '_'"
        )));
    }
    Ok(())
}

/// The ARM-style resource Azure returns for a CA certificate.
fn certificate_response(service: &str, ca: &CaCertificate) -> CertificateResponse {
    use base64::Engine as _;
    CertificateResponse {
        properties: CertificateProperties {
            subject: ca.subject.clone(),
            expiry: ca.not_after.to_http_date(),
            thumbprint: ca.thumbprint.clone(),
            is_verified: ca.is_verified,
            certificate: base64::engine::general_purpose::STANDARD.encode(&ca.der),
            created: ca.created.to_http_date(),
            updated: ca.updated.to_http_date(),
            verification_code: None,
        },
        id: format!("/provisioningServices/{service}/certificates/{}", ca.name),
        name: ca.name.clone(),
        kind: "Microsoft.Devices/ProvisioningServices/Certificates".into(),
        etag: ca
            .etag
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
    }
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

/// A bulk item without an ID could only be answered with an error item
/// whose ID is empty, which the API's schema forbids: the whole request is
/// refused, as a single write without an ID is.
fn check_bulk_ids<'a>(
    ids: impl Iterator<Item = &'a str>,
    list: &str,
    field: &str,
) -> Result<(), ProvisioningError> {
    for (i, id) in ids.enumerate() {
        if id.trim().is_empty() {
            return Err(ProvisioningError::invalid(format!(
                "{list}[{i}] has no {field}; give every item of a bulk operation its {field} \
                 (nothing in this request was applied)"
            )));
        }
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

/// Azure's service ignores the query text and returns the whole collection,
/// and real callers lean on that: PowerShell and the Java SDK's examples send
/// `SELECT * FROM enrollments` to the registration query, and filters are
/// sent and ignored. Onramp does the same for any `SELECT … FROM …`, and
/// refuses only text that is no query at all.
fn check_query(
    query: &QuerySpecification,
    collection: Collection,
) -> Result<(), ProvisioningError> {
    let text = query.query.trim();
    if text.is_empty() || text == "*" {
        return Ok(());
    }
    let lower = text.to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    if words.next() == Some("select") && words.any(|w| w == "from") {
        return Ok(());
    }
    let example = match collection {
        Collection::Enrollments => "SELECT * FROM enrollments",
        Collection::EnrollmentGroups => "SELECT * FROM enrollmentGroups",
        Collection::DeviceRegistrations => "SELECT * FROM deviceRegistrations",
    };
    Err(ProvisioningError::invalid(format!(
        "query '{text}' is not a query; use '*' or '{example}' (every item is returned, \
         as Azure's service does)"
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

#[cfg(test)]
mod query_tests {
    use super::*;

    fn q(text: &str) -> QuerySpecification {
        QuerySpecification { query: text.into() }
    }

    #[test]
    fn every_form_the_sdks_and_tools_send_is_accepted() {
        for (text, collection) in [
            ("*", Collection::Enrollments),
            ("", Collection::EnrollmentGroups),
            ("SELECT * FROM enrollments", Collection::Enrollments),
            (
                "select * from enrollmentGroups where attestation.type = 'x509'",
                Collection::EnrollmentGroups,
            ),
            ("SELECT * FROM enrollments", Collection::DeviceRegistrations),
            (
                "SELECT * FROM enrollmentGroups",
                Collection::DeviceRegistrations,
            ),
            (
                "select * from deviceRegistrations",
                Collection::DeviceRegistrations,
            ),
        ] {
            assert!(check_query(&q(text), collection).is_ok(), "{text}");
        }
        let err = check_query(&q("hello"), Collection::EnrollmentGroups).unwrap_err();
        assert!(
            err.message.contains("SELECT * FROM enrollmentGroups"),
            "{}",
            err.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ManualClock, MemoryStore, conformance};
    use onramp_model::UtcTime;

    async fn admin() -> Admin {
        let store = Arc::new(MemoryStore::new());
        store
            .create_service(
                &conformance::service("default", 0x1234),
                &[conformance::owner("b3duZXI=")],
            )
            .await
            .unwrap();
        Admin::new(store, Arc::new(ManualClock::new(UtcTime::now())))
    }

    #[tokio::test]
    async fn a_bulk_item_without_an_id_refuses_the_whole_request() {
        let admin = admin().await;
        for mode in [BulkMode::Create, BulkMode::Update, BulkMode::Delete] {
            let op = BulkEnrollmentOperation {
                mode,
                enrollments: vec![
                    conformance::enrollment("bulk-1"),
                    conformance::enrollment(""),
                ],
            };
            let e = admin.bulk_enrollments("default", op).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{mode:?}");
            assert!(
                e.message.contains("enrollments[1] has no registrationId"),
                "{}",
                e.message
            );
            assert!(admin.enrollment("default", "bulk-1").await.is_err());

            let op = BulkEnrollmentGroupOperation {
                mode,
                enrollment_groups: vec![conformance::group(" "), conformance::group("g-1")],
            };
            let e = admin.bulk_groups("default", op).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{mode:?}");
            assert!(
                e.message
                    .contains("enrollmentGroups[0] has no enrollmentGroupId"),
                "{}",
                e.message
            );
            assert!(admin.group("default", "g-1").await.is_err());
        }
        // Every item named: applied, and failures reported under their IDs.
        let op = BulkEnrollmentOperation {
            mode: BulkMode::Create,
            enrollments: vec![conformance::enrollment("bulk-1"), {
                let mut e = conformance::enrollment("bad id");
                e.registration_id = "bad id".into();
                e
            }],
        };
        let result = admin.bulk_enrollments("default", op).await.unwrap();
        assert!(!result.is_successful);
        assert_eq!(result.errors.len(), 1);
        assert_eq!(result.errors[0].registration_id, "bad id");
        assert!(admin.enrollment("default", "bulk-1").await.is_ok());
    }
}
