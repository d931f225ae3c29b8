//! The DPS device API over HTTPS: register, operation status, status lookup.
//!
//! The engine answers a register call within its reply budget, with the
//! finished status or `assigning`; [`wire`] decides the status code and
//! `Retry-After`, and the operation stays queryable either way.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use onramp_core::ProvisioningError;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::{OperationRequest, RegisterRequest, StatusRequest};
use onramp_core::events::Protocol;
use onramp_model::DeviceRegistration;
use onramp_net::PeerCertificates;

use super::route::{DevicePath, Route};
use super::{AppState, Incoming, Query, respond};
use crate::wire::{self, Call};

pub(super) async fn handle(state: &Arc<AppState>, route: Route, req: Incoming) -> Response {
    answer(state, route, req)
        .await
        .unwrap_or_else(|e| respond::error(&e))
}

/// A device-API request: the device its path names and the request's head.
struct DeviceCall<'a> {
    state: &'a AppState,
    device: DevicePath,
    query: &'a Query,
    parts: &'a http::request::Parts,
}

impl DeviceCall<'_> {
    /// Who the device says it is; a status lookup needs nothing more.
    fn into_status_request(self) -> StatusRequest {
        StatusRequest {
            credential: credential(self.parts, None),
            id_scope: self.device.scope,
            registration_id: self.device.registration_id,
            protocol: Protocol::Https,
        }
    }
}

async fn answer(
    state: &AppState,
    route: Route,
    req: Incoming,
) -> Result<Response, ProvisioningError> {
    req.query.require_api_version()?;
    let Incoming { query, parts, body } = req;
    let call = |device| DeviceCall {
        state,
        device,
        query: &query,
        parts: &parts,
    };
    match route {
        Route::DeviceRegister(device) => register(call(device), body).await,
        Route::DeviceOperation(device, operation_id) => operation(call(device), operation_id).await,
        Route::DeviceStatus(device) => status(call(device), body).await,
        _ => Err(ProvisioningError::internal("not a device route")),
    }
}

/// The token from `Authorization`, else the TLS client certificate chain,
/// else the TPM keys of the register body.
fn credential(parts: &http::request::Parts, body: Option<&DeviceRegistration>) -> DeviceCredential {
    if let Some(token) =
        super::header(&parts.headers, "authorization").filter(|t| !t.trim().is_empty())
    {
        return DeviceCredential::SasToken(token.to_owned());
    }
    if let Some(PeerCertificates(chain)) = parts.extensions.get::<PeerCertificates>()
        && !chain.is_empty()
    {
        return DeviceCredential::X509Chain(chain.iter().map(|c| c.as_ref().to_vec()).collect());
    }
    match body.and_then(|b| b.tpm.as_ref().map(|tpm| (tpm, b))) {
        Some((tpm, body)) => DeviceCredential::Tpm {
            endorsement_key: tpm.endorsement_key.clone(),
            storage_root_key: tpm.storage_root_key.clone(),
            endorsement_key_certificate: wire::endorsement_key_certificate(body),
        },
        None => DeviceCredential::None,
    }
}

async fn register(call: DeviceCall<'_>, body: Body) -> Result<Response, ProvisioningError> {
    let DeviceCall {
        state,
        device: DevicePath {
            scope,
            registration_id,
        },
        query,
        parts,
    } = call;
    let bytes = respond::read_body(body, state.config.max_body_bytes).await?;
    let registration = wire::decode_registration(&bytes, state.config.max_body_bytes)?;
    let force_registration = query
        .get("forceRegistration")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let location = format!(
        "{}/{scope}/registrations/{registration_id}/register",
        state.config.public_base_url.trim_end_matches('/')
    );
    let request = RegisterRequest {
        id_scope: scope,
        registration_id,
        credential: credential(parts, Some(&registration)),
        body: registration,
        force_registration,
        protocol: Protocol::Https,
        client_addr: parts
            .extensions
            .get::<onramp_net::RemoteAddr>()
            .map(|a| a.0.ip()),
    };
    let outcome = state.engine.register(request).await?;
    let mut resp = respond::answer(wire::operation(Call::Register, &outcome));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn operation(
    call: DeviceCall<'_>,
    operation_id: String,
) -> Result<Response, ProvisioningError> {
    let engine = &call.state.engine;
    let StatusRequest {
        id_scope,
        registration_id,
        credential,
        protocol,
    } = call.into_status_request();
    let request = OperationRequest {
        id_scope,
        registration_id,
        credential,
        operation_id,
        protocol,
    };
    let status = engine.operation_status(request).await?;
    Ok(respond::answer(wire::operation(Call::Poll, &status)))
}

async fn status(call: DeviceCall<'_>, body: Body) -> Result<Response, ProvisioningError> {
    let state = call.state;
    // The credential comes from the headers alone here, so the caller is
    // checked before its body is read.
    let record = state
        .engine
        .registration_status(call.into_status_request())
        .await?;
    // The body (a DeviceRegistration) carries nothing this call needs; it is
    // still bounded and must be JSON if present.
    let bytes = respond::read_body(body, state.config.max_body_bytes).await?;
    let _: serde_json::Value = wire::parse(&bytes, true)?;
    Ok(respond::answer(wire::registration(&record)))
}
