//! The DPS service API over HTTPS: enrollments, enrollment groups and
//! registration records, authenticated by shared access policies.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use onramp_core::ProvisioningError;
use onramp_core::admin::{Page, PageRequest};
use onramp_core::auth::{self, ServiceCaller};
use onramp_core::tenant::AccessRights;
use onramp_model::certificate::CertificateBody;
use onramp_model::query::{
    BulkEnrollmentGroupOperation, BulkEnrollmentOperation, QuerySpecification,
};
use onramp_model::{EnrollmentGroup, ErrorCode, IndividualEnrollment, UtcTime};
use serde::Serialize;

use super::route::Route;
use super::{AppState, Query, header, respond};

pub(super) async fn handle(
    state: &Arc<AppState>,
    route: Route,
    query: &Query,
    parts: &http::request::Parts,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let name = operation_name(&route);
    let result = run(state, route, query, parts, body).await;
    let (status, caller) = match &result {
        Ok((resp, caller)) => (resp.status().as_u16(), Some(caller.clone())),
        Err(e) => (e.http_status(), None),
    };
    tracing::info!(
        target: "onramp::service_operations",
        operation = name,
        service = caller.as_ref().map(|c| c.service.as_str()).unwrap_or("-"),
        policy = caller.as_ref().map(|c| c.policy.as_str()).unwrap_or("-"),
        status,
        error = result.as_ref().err().map(|e| e.code.name()),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    match result {
        Ok((resp, _)) => resp,
        Err(e) => respond::error(&e),
    }
}

fn operation_name(route: &Route) -> &'static str {
    match route {
        Route::Enrollment(_) => "IndividualEnrollment",
        Route::EnrollmentAttestation(_) => "IndividualEnrollment.GetAttestationMechanism",
        Route::EnrollmentQuery => "IndividualEnrollment.Query",
        Route::EnrollmentBulk => "IndividualEnrollment.RunBulkOperation",
        Route::Group(_) => "EnrollmentGroup",
        Route::GroupAttestation(_) => "EnrollmentGroup.GetAttestationMechanism",
        Route::GroupQuery => "EnrollmentGroup.Query",
        Route::GroupBulk => "EnrollmentGroup.RunBulkOperation",
        Route::Registration(_) => "DeviceRegistrationState",
        Route::RegistrationQuery(_) => "DeviceRegistrationState.Query",
        Route::Certificates | Route::Certificate(_) => "Certificate",
        Route::CertificateVerificationCode(_) => "Certificate.GenerateVerificationCode",
        Route::CertificateVerify(_) => "Certificate.Verify",
        _ => "Other",
    }
}

async fn run(
    state: &Arc<AppState>,
    route: Route,
    query: &Query,
    parts: &http::request::Parts,
    body: Body,
) -> Result<(Response, ServiceCaller), ProvisioningError> {
    let (method, headers) = (&parts.method, &parts.headers);
    query.require_api_version()?;
    let caller = auth::authenticate(
        &**state.engine.store(),
        header(headers, "authorization"),
        &state.config.service_host_names,
        // As sent: the token's resource must cover it.
        parts.uri.path(),
        UtcTime::now().unix_seconds(),
        state.config.token_skew_seconds,
    )
    .await?;
    let svc = caller.service.as_str();
    let admin = &state.admin;
    let limit = state.config.max_body_bytes;
    let if_match = header(headers, "if-match");
    let resp = match (route, Method::of(method)) {
        (Route::Enrollment(id), Method::Get) => {
            caller.require(AccessRights::ENROLLMENT_READ, "reading an enrollment")?;
            ok(&admin.enrollment(svc, &id).await?)
        }
        (Route::Enrollment(id), Method::Put) => {
            caller.require(AccessRights::ENROLLMENT_WRITE, "writing an enrollment")?;
            let body: IndividualEnrollment =
                respond::parse(&respond::read_body(body, limit).await?, false)?;
            ok(&admin.put_enrollment(svc, &id, body, if_match).await?)
        }
        (Route::Enrollment(id), Method::Delete) => {
            caller.require(AccessRights::ENROLLMENT_WRITE, "deleting an enrollment")?;
            admin.delete_enrollment(svc, &id, if_match).await?;
            no_content()
        }
        (Route::EnrollmentAttestation(id), _) => {
            // The answer holds the keys: as sensitive as writing them.
            caller.require(
                AccessRights::ENROLLMENT_WRITE,
                "reading an enrollment's keys",
            )?;
            ok(&admin.enrollment_attestation(svc, &id).await?)
        }
        (Route::EnrollmentQuery, _) => {
            caller.require(AccessRights::ENROLLMENT_READ, "querying enrollments")?;
            let spec: QuerySpecification =
                respond::parse(&respond::read_body(body, limit).await?, true)?;
            page(
                admin
                    .query_enrollments(svc, &spec, &page_request(headers)?)
                    .await?,
                "Enrollment",
            )
        }
        (Route::EnrollmentBulk, _) => {
            caller.require(AccessRights::ENROLLMENT_WRITE, "bulk enrollment operations")?;
            let op: BulkEnrollmentOperation = respond::parse(
                &respond::read_body(body, state.config.max_bulk_body_bytes).await?,
                false,
            )?;
            ok(&admin.bulk_enrollments(svc, op).await?)
        }
        (Route::Group(id), Method::Get) => {
            caller.require(AccessRights::ENROLLMENT_READ, "reading an enrollment group")?;
            ok(&admin.group(svc, &id).await?)
        }
        (Route::Group(id), Method::Put) => {
            caller.require(
                AccessRights::ENROLLMENT_WRITE,
                "writing an enrollment group",
            )?;
            let body: EnrollmentGroup =
                respond::parse(&respond::read_body(body, limit).await?, false)?;
            ok(&admin.put_group(svc, &id, body, if_match).await?)
        }
        (Route::Group(id), Method::Delete) => {
            caller.require(
                AccessRights::ENROLLMENT_WRITE,
                "deleting an enrollment group",
            )?;
            admin.delete_group(svc, &id, if_match).await?;
            no_content()
        }
        (Route::GroupAttestation(id), _) => {
            caller.require(
                AccessRights::ENROLLMENT_WRITE,
                "reading an enrollment group's keys",
            )?;
            ok(&admin.group_attestation(svc, &id).await?)
        }
        (Route::GroupQuery, _) => {
            caller.require(AccessRights::ENROLLMENT_READ, "querying enrollment groups")?;
            let spec: QuerySpecification =
                respond::parse(&respond::read_body(body, limit).await?, true)?;
            page(
                admin
                    .query_groups(svc, &spec, &page_request(headers)?)
                    .await?,
                "EnrollmentGroup",
            )
        }
        (Route::GroupBulk, _) => {
            caller.require(
                AccessRights::ENROLLMENT_WRITE,
                "bulk enrollment group operations",
            )?;
            let op: BulkEnrollmentGroupOperation = respond::parse(
                &respond::read_body(body, state.config.max_bulk_body_bytes).await?,
                false,
            )?;
            ok(&admin.bulk_groups(svc, op).await?)
        }
        (Route::Registration(id), Method::Get) => {
            caller.require(
                AccessRights::REGISTRATION_STATUS_READ,
                "reading a registration",
            )?;
            ok(&admin.registration(svc, &id).await?)
        }
        (Route::Registration(id), _) => {
            caller.require(
                AccessRights::REGISTRATION_STATUS_WRITE,
                "deleting a registration",
            )?;
            admin.delete_registration(svc, &id, if_match).await?;
            no_content()
        }
        (Route::RegistrationQuery(group), _) => {
            caller.require(
                AccessRights::REGISTRATION_STATUS_READ,
                "querying registrations",
            )?;
            let bytes = respond::read_body(body, limit).await?;
            let spec: Option<QuerySpecification> = if bytes.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(respond::parse(&bytes, true)?)
            };
            page(
                admin
                    .query_registrations(svc, &group, spec.as_ref(), &page_request(headers)?)
                    .await?,
                "DeviceRegistration",
            )
        }
        (Route::Certificates, _) => {
            caller.require(AccessRights::SERVICE_CONFIG, "listing CA certificates")?;
            ok(&admin.ca_certificates(svc).await?)
        }
        (Route::Certificate(name), Method::Get) => {
            caller.require(AccessRights::SERVICE_CONFIG, "reading a CA certificate")?;
            ok(&admin.ca_certificate(svc, &name).await?)
        }
        (Route::Certificate(name), Method::Put) => {
            caller.require(AccessRights::SERVICE_CONFIG, "uploading a CA certificate")?;
            let body: CertificateBody =
                respond::parse(&respond::read_body(body, limit).await?, false)?;
            ok(&admin.put_ca_certificate(svc, &name, body, if_match).await?)
        }
        (Route::Certificate(name), Method::Delete) => {
            caller.require(AccessRights::SERVICE_CONFIG, "deleting a CA certificate")?;
            admin.delete_ca_certificate(svc, &name, if_match).await?;
            no_content()
        }
        (Route::CertificateVerificationCode(name), _) => {
            caller.require(
                AccessRights::SERVICE_CONFIG,
                "generating a verification code",
            )?;
            ok(&admin
                .generate_verification_code(svc, &name, if_match)
                .await?)
        }
        (Route::CertificateVerify(name), _) => {
            caller.require(AccessRights::SERVICE_CONFIG, "verifying a CA certificate")?;
            let body: CertificateBody =
                respond::parse(&respond::read_body(body, limit).await?, false)?;
            ok(&admin
                .verify_ca_certificate(svc, &name, body, if_match)
                .await?)
        }
        (other, _) => {
            return Err(ProvisioningError::internal(format!(
                "unexpected route {other:?}"
            )));
        }
    };
    Ok((resp, caller))
}

/// The HTTP method, for routes where it picks the operation.
enum Method {
    Get,
    Put,
    Delete,
    Other,
}

impl Method {
    fn of(method: &http::Method) -> Self {
        match *method {
            http::Method::GET => Method::Get,
            http::Method::PUT => Method::Put,
            http::Method::DELETE => Method::Delete,
            _ => Method::Other,
        }
    }
}

fn ok(value: &impl Serialize) -> Response {
    respond::json(StatusCode::OK, value)
}

fn no_content() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn page<T: Serialize>(page: Page<T>, item_type: &'static str) -> Response {
    let count = page.items.len();
    let mut resp = ok(&page.items);
    let headers = resp.headers_mut();
    headers.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    headers.insert("x-ms-max-item-count", HeaderValue::from(count));
    // Absent on the last page: SDKs loop while the header is present.
    if let Some(token) = page.continuation
        && let Ok(v) = HeaderValue::from_str(&token)
    {
        headers.insert("x-ms-continuation", v);
    }
    resp
}

fn page_request(headers: &HeaderMap) -> Result<PageRequest, ProvisioningError> {
    let max_items = match header(headers, "x-ms-max-item-count")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ProvisioningError::new(
                ErrorCode::InvalidArgument,
                format!("x-ms-max-item-count '{v}' is not a positive number"),
            )
        })?),
    };
    Ok(PageRequest {
        max_items,
        continuation: header(headers, "x-ms-continuation").map(str::to_owned),
    })
}
