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

use super::route::Route;
use super::{AppState, Query, respond};
use crate::wire::{self, Call};

pub(super) async fn handle(
    state: &Arc<AppState>,
    route: Route,
    query: &Query,
    parts: &http::request::Parts,
    body: Body,
) -> Response {
    let result = match route {
        Route::DeviceRegister {
            scope,
            registration_id,
        } => register(state, scope, registration_id, query, parts, body).await,
        Route::DeviceOperation {
            scope,
            registration_id,
            operation_id,
        } => operation(state, scope, registration_id, operation_id, query, parts).await,
        Route::DeviceStatus {
            scope,
            registration_id,
        } => status(state, scope, registration_id, query, parts, body).await,
        _ => Err(ProvisioningError::internal("not a device route")),
    };
    result.unwrap_or_else(|e| respond::error(&e))
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
    match body.and_then(|b| b.tpm.as_ref()) {
        Some(tpm) => DeviceCredential::Tpm {
            endorsement_key: tpm.endorsement_key.clone(),
            storage_root_key: tpm.storage_root_key.clone(),
        },
        None => DeviceCredential::None,
    }
}

async fn register(
    state: &Arc<AppState>,
    scope: String,
    registration_id: String,
    query: &Query,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, ProvisioningError> {
    query.require_api_version()?;
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
        registration_id: registration_id.clone(),
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
    state: &Arc<AppState>,
    scope: String,
    registration_id: String,
    operation_id: String,
    query: &Query,
    parts: &http::request::Parts,
) -> Result<Response, ProvisioningError> {
    query.require_api_version()?;
    let status = state
        .engine
        .operation_status(OperationRequest {
            id_scope: scope,
            registration_id,
            credential: credential(parts, None),
            operation_id,
            protocol: Protocol::Https,
        })
        .await?;
    Ok(respond::answer(wire::operation(Call::Poll, &status)))
}

async fn status(
    state: &Arc<AppState>,
    scope: String,
    registration_id: String,
    query: &Query,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, ProvisioningError> {
    query.require_api_version()?;
    // The credential comes from the headers alone here, so the caller is
    // checked before its body is read.
    let record = state
        .engine
        .registration_status(StatusRequest {
            id_scope: scope,
            registration_id,
            credential: credential(parts, None),
            protocol: Protocol::Https,
        })
        .await?;
    // The body (a DeviceRegistration) carries nothing this call needs; it is
    // still bounded and must be JSON if present.
    let bytes = respond::read_body(body, state.config.max_body_bytes).await?;
    let _: serde_json::Value = wire::parse(&bytes, true)?;
    Ok(respond::answer(wire::registration(&record)))
}
