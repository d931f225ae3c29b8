//! The DPS service API over HTTPS: enrollments, enrollment groups and
//! registration records, authenticated by shared access policies.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use onramp_core::ProvisioningError;
use onramp_core::admin::{
    DiagnosticsFilter, EnrollmentResource, Page, PageRequest, ServiceSummary, Write,
};
use onramp_core::auth::{ServiceCaller, ServiceRequest};
use onramp_core::ports::RegistrationRecord;
use onramp_core::tenant::{AccessRights, CaCertificate};
use onramp_model::query::QuerySpecification;
use onramp_model::{EnrollmentGroup, ErrorCode, IndividualEnrollment, UtcTime};
use serde::Serialize;

use super::route::Route;
use super::{AppState, Incoming, header, respond};

pub(super) async fn handle(state: &Arc<AppState>, route: Route, req: Incoming) -> Response {
    let started = std::time::Instant::now();
    let name = operation_name(&route);
    let result = run(state, route, req).await;
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
        Route::Diagnostics => "Diagnostics",
        Route::ServiceSummary => "Onramp.Service",
        Route::LinkedHubs => "Onramp.LinkedHubs",
        _ => "Other",
    }
}

async fn run(
    state: &Arc<AppState>,
    route: Route,
    req: Incoming,
) -> Result<(Response, ServiceCaller), ProvisioningError> {
    let Incoming { query, parts, body } = req;
    let (method, headers) = (&parts.method, &parts.headers);
    query.require_api_version()?;
    let caller = state
        .engine
        .authenticate_service_call(&ServiceRequest {
            authorization: header(headers, "authorization"),
            host_names: &state.config.service_host_names,
            // As sent: the token's resource must cover it.
            request_path: parts.uri.path(),
            now_unix: UtcTime::now().unix_seconds(),
            skew_seconds: state.config.token_skew_seconds,
        })
        .await?;
    let call = Call {
        state,
        caller: &caller,
    };
    let svc = caller.service.as_str();
    let admin = &state.admin;
    let limit = state.config.max_body_bytes;
    let if_match = header(headers, "if-match");
    let resp = match (route, Method::of(method)) {
        (Route::Enrollment(id), m) => {
            one::<IndividualEnrollment>(&call, id, m, body, if_match).await?
        }
        (Route::Group(id), m) => one::<EnrollmentGroup>(&call, id, m, body, if_match).await?,
        (Route::EnrollmentAttestation(id), _) => {
            attestation::<IndividualEnrollment>(&call, &id).await?
        }
        (Route::GroupAttestation(id), _) => attestation::<EnrollmentGroup>(&call, &id).await?,
        (Route::EnrollmentQuery, _) => {
            query_page::<IndividualEnrollment>(&call, headers, body).await?
        }
        (Route::GroupQuery, _) => query_page::<EnrollmentGroup>(&call, headers, body).await?,
        (Route::EnrollmentBulk, _) => bulk::<IndividualEnrollment>(&call, body).await?,
        (Route::GroupBulk, _) => bulk::<EnrollmentGroup>(&call, body).await?,
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
            admin
                .delete::<RegistrationRecord>(svc, &id, if_match)
                .await?;
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
        (Route::Diagnostics, _) => {
            caller.require(
                AccessRights::REGISTRATION_STATUS_READ,
                "reading diagnostics",
            )?;
            let filter = DiagnosticsFilter {
                registration_id: query.get("registrationId"),
                outcome: query.get("outcome"),
                since: query.get("since"),
                top: query.get("top"),
            };
            ok(&admin.diagnostics(svc, filter).await?)
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
            let upload = write_of(&name, body, limit, if_match).await?;
            ok(&admin.put_ca_certificate(svc, upload).await?)
        }
        (Route::Certificate(name), Method::Delete) => {
            caller.require(AccessRights::SERVICE_CONFIG, "deleting a CA certificate")?;
            admin.delete::<CaCertificate>(svc, &name, if_match).await?;
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
            let proof = write_of(&name, body, limit, if_match).await?;
            ok(&admin.verify_ca_certificate(svc, proof).await?)
        }
        (Route::ServiceSummary, _) => ok(&CallerService {
            service: admin.service_summary(svc).await?,
            global_device_endpoint: global_device_endpoint(&state.config),
            policy: &caller.policy,
            rights: caller.rights.to_string(),
        }),
        (Route::LinkedHubs, _) => {
            caller.require(AccessRights::SERVICE_CONFIG, "listing linked hubs")?;
            ok(&admin.linked_hub_status(svc).await?)
        }
        (other, _) => {
            return Err(ProvisioningError::internal(format!(
                "unexpected route {other:?}"
            )));
        }
    };
    Ok((resp, caller))
}

/// `GET /service` (Onramp's extension): the service the caller's policy
/// belongs to, where its devices connect, and what the policy may do.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallerService<'a> {
    #[serde(flatten)]
    service: ServiceSummary,
    global_device_endpoint: String,
    policy: &'a str,
    rights: String,
}

/// The host (and port) of the public base URL: what devices are given.
fn global_device_endpoint(config: &super::EndpointConfig) -> String {
    let url = &config.public_base_url;
    url.split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

/// An authenticated call: what every handler of a resource needs.
struct Call<'a> {
    state: &'a Arc<AppState>,
    caller: &'a ServiceCaller,
}

impl Call<'_> {
    fn service(&self) -> &str {
        &self.caller.service
    }

    /// The caller may read enrollments and groups, for `action`.
    fn may_read_enrollments(&self, action: &str) -> Result<(), ProvisioningError> {
        self.caller.require(AccessRights::ENROLLMENT_READ, action)
    }

    /// The caller may write enrollments and groups (or read their keys),
    /// for `action`.
    fn may_write_enrollments(&self, action: &str) -> Result<(), ProvisioningError> {
        self.caller.require(AccessRights::ENROLLMENT_WRITE, action)
    }
}

/// GET, PUT or DELETE of one individual enrollment or group.
async fn one<E: EnrollmentResource>(
    call: &Call<'_>,
    id: String,
    method: Method,
    body: Body,
    if_match: Option<&str>,
) -> Result<Response, ProvisioningError> {
    let (admin, svc, what) = (&call.state.admin, call.service(), E::KIND.short_noun());
    match method {
        Method::Get => {
            call.may_read_enrollments(&format!("reading an {what}"))?;
            Ok(ok(&admin.get::<E>(svc, &id).await?))
        }
        Method::Delete => {
            call.may_write_enrollments(&format!("deleting an {what}"))?;
            admin.delete::<E>(svc, &id, if_match).await?;
            Ok(no_content())
        }
        Method::Put => {
            call.may_write_enrollments(&format!("writing an {what}"))?;
            let limit = call.state.config.max_body_bytes;
            let request = write_of(&id, body, limit, if_match).await?;
            Ok(ok(&admin.put::<E>(svc, request).await?))
        }
        // The router answers 405 for other methods before this.
        Method::Other => Err(ProvisioningError::internal(format!(
            "unexpected method on {what} '{id}'"
        ))),
    }
}

/// A write's JSON body, for the record `id` names, with its If-Match.
async fn write_of<'a, B: serde::de::DeserializeOwned>(
    id: &'a str,
    body: Body,
    limit: usize,
    if_match: Option<&'a str>,
) -> Result<Write<'a, B>, ProvisioningError> {
    let body = respond::read_json(body, limit, false).await?;
    Ok(Write { id, body, if_match })
}

async fn attestation<E: EnrollmentResource>(
    call: &Call<'_>,
    id: &str,
) -> Result<Response, ProvisioningError> {
    // The answer holds the keys: as sensitive as writing them.
    call.may_write_enrollments(&format!("reading an {}'s keys", E::KIND.short_noun()))?;
    Ok(ok(&call
        .state
        .admin
        .attestation::<E>(call.service(), id)
        .await?))
}

async fn query_page<E: EnrollmentResource>(
    call: &Call<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ProvisioningError> {
    call.may_read_enrollments(&format!("querying {}s", E::KIND.short_noun()))?;
    let spec: QuerySpecification =
        respond::read_json(body, call.state.config.max_body_bytes, true).await?;
    let found = call
        .state
        .admin
        .query::<E>(call.service(), &spec, &page_request(headers)?)
        .await?;
    Ok(page(found, E::KIND.item_type()))
}

async fn bulk<E: EnrollmentResource>(
    call: &Call<'_>,
    body: Body,
) -> Result<Response, ProvisioningError> {
    call.may_write_enrollments(&format!("bulk {} operations", E::KIND.short_noun()))?;
    let op: E::BulkOperation =
        respond::read_json(body, call.state.config.max_bulk_body_bytes, false).await?;
    Ok(ok(&call.state.admin.bulk::<E>(call.service(), op).await?))
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
