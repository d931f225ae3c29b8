//! The service API's rules: enrollments, groups and registration records as
//! operators see them. Endpoints decode HTTP and call these; nothing here
//! knows about HTTP.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use onramp_model::{
    AttestationMechanism, DeviceRegistrationState, Enrollment, EnrollmentGroup, EnrollmentKind,
    EnrollmentRecord, ErrorCode, RegistrationId,
    query::{BulkMode, QuerySpecification},
};

use onramp_model::certificate::{
    CertificateBody, CertificateList, CertificateProperties, CertificateResponse,
};

use crate::ports::{Clock, Precondition, Store, StoreError, StoreExt};
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

    // ---- individual enrollments and enrollment groups ----

    /// Creates or replaces an individual enrollment or a group (PUT).
    pub async fn put<E: EnrollmentRecord>(
        &self,
        service: &str,
        path_id: &str,
        body: E,
        if_match: Option<&str>,
    ) -> Result<E, ProvisioningError> {
        let targets = self.allocation_targets(service).await?;
        let condition = Precondition::from_if_match(if_match);
        self.write(service, path_id, body, condition, &targets, |e| {
            not_found_as(e, E::KIND.not_found_code())
        })
        .await
    }

    /// Validates a record against what it replaces, the allocation targets
    /// and the CA certificates it names, and stores it: the one path of
    /// single and bulk writes.
    async fn write<E: EnrollmentRecord>(
        &self,
        service: &str,
        id: &str,
        body: E,
        condition: Precondition,
        targets: &Targets,
        store_error: impl FnOnce(StoreError) -> ProvisioningError,
    ) -> Result<E, ProvisioningError> {
        let existing = self
            .store
            .get_enrollment::<E>(service, &id.to_ascii_lowercase())
            .await?;
        let ctx = targets.context(existing.as_ref().and_then(|e| e.attestation()));
        let record = validate::enrollment(id, body, &ctx)?;
        self.check_ca_references(service, record.attestation())
            .await?;
        self.store
            .put_enrollment_of(service, record, condition, self.clock.now())
            .await
            .map_err(store_error)
    }

    /// A record without its keys (see [`Admin::attestation`]); an individual
    /// enrollment with its device's registration record.
    pub async fn get<E: EnrollmentRecord>(
        &self,
        service: &str,
        id: &str,
    ) -> Result<E, ProvisioningError> {
        let key = id.to_ascii_lowercase();
        let mut record = self
            .store
            .get_enrollment::<E>(service, &key)
            .await?
            .ok_or_else(|| not_found(E::KIND, id))?
            .into_enrollment();
        if let Enrollment::Individual(e) = &mut record {
            e.registration_state = self
                .store
                .registration(service, &key)
                .await?
                .map(|r| service_view(r.state));
        }
        E::from_enrollment(record)
            .map(hide_keys)
            .ok_or_else(|| ProvisioningError::internal("an enrollment changed its kind"))
    }

    pub async fn delete<E: EnrollmentRecord>(
        &self,
        service: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ProvisioningError> {
        self.store
            .delete_enrollment_of::<E>(
                service,
                &id.to_ascii_lowercase(),
                Precondition::from_if_match(if_match),
            )
            .await
            .map_err(|e| not_found_as(e, E::KIND.not_found_code()))
    }

    /// The attestation mechanism with its keys.
    pub async fn attestation<E: EnrollmentRecord>(
        &self,
        service: &str,
        id: &str,
    ) -> Result<AttestationMechanism, ProvisioningError> {
        self.store
            .get_enrollment::<E>(service, &id.to_ascii_lowercase())
            .await?
            .and_then(|e| e.attestation().cloned())
            .ok_or_else(|| not_found(E::KIND, id))
    }

    pub async fn query<E: EnrollmentRecord>(
        &self,
        service: &str,
        query: &QuerySpecification,
        page: &PageRequest,
    ) -> Result<Page<E>, ProvisioningError> {
        check_query(query, E::KIND.collection())?;
        let (after, limit) = page_bounds(page)?;
        let mut items = self
            .store
            .enrollments_of::<E>(service, after.as_deref(), limit + 1)
            .await?;
        let continuation = next_token(&mut items, limit, |e| e.id().to_ascii_lowercase());
        Ok(Page {
            items: items.into_iter().map(hide_keys).collect(),
            continuation,
        })
    }

    /// Applies a bulk operation item by item; failures are reported per item
    /// and do not stop the others.
    pub async fn bulk<E: EnrollmentRecord>(
        &self,
        service: &str,
        op: E::BulkOperation,
    ) -> Result<E::BulkResult, ProvisioningError> {
        let (mode, items) = E::bulk_items(op);
        check_bulk_size(items.len())?;
        check_bulk_ids(items.iter().map(|e| e.id()), E::KIND)?;
        // Read once for the whole batch, not once per item.
        let targets = self.allocation_targets(service).await?;
        let mut errors = Vec::new();
        for item in items {
            let id = item.id().to_owned();
            let etag = item.etag().map(|t| t.as_str().to_owned());
            let outcome = match mode {
                BulkMode::Delete => self.delete::<E>(service, &id, etag.as_deref()).await,
                mode => {
                    let condition = bulk_condition(mode, etag.as_deref());
                    self.write(service, &id, item, condition, &targets, |e| {
                        bulk_error(e, &id)
                    })
                    .await
                    .map(drop)
                }
            };
            if let Err(e) = outcome {
                errors.push((id, e.code.code(), e.message));
            }
        }
        Ok(E::bulk_result(errors))
    }

    /// An X.509 group's `caReferences` must name CA certificates of this service.
    async fn check_ca_references(
        &self,
        service: &str,
        attestation: Option<&AttestationMechanism>,
    ) -> Result<(), ProvisioningError> {
        let refs = attestation
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
            check_query(q, "deviceRegistrations")?;
        }
        let group_key = group_id.to_ascii_lowercase();
        if self
            .store
            .get_enrollment::<EnrollmentGroup>(service, &group_key)
            .await?
            .is_none()
        {
            return Err(not_found(EnrollmentKind::Group, group_id));
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

fn not_found(kind: EnrollmentKind, id: &str) -> ProvisioningError {
    ProvisioningError::new(kind.not_found_code(), kind.not_found(id))
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
    kind: EnrollmentKind,
) -> Result<(), ProvisioningError> {
    let (list, field) = (kind.collection(), kind.id_field());
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

/// GET and query never return symmetric keys (as in Azure); the
/// attestation-mechanism call does.
fn hide_keys<E: EnrollmentRecord>(mut record: E) -> E {
    if let Some(keys) = record
        .attestation_mut()
        .as_mut()
        .and_then(|a| a.symmetric_key.as_mut())
    {
        keys.primary_key = None;
        keys.secondary_key = None;
    }
    record
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
