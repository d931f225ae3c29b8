//! The IoT Hub service REST subset: `/devices/{id}` and `/twins/{id}`.
//!
//! This module routes and holds what every call shares (authorization,
//! `api-version`, IoT Hub's error bodies, JSON in and out):
//! - `devices`: device identities, one at a time;
//! - `bulk`: the bulk registry operation (`POST /devices`);
//! - `twins`: reading, patching and replacing twins;
//! - `certificates`: the CAs devices may chain to (an Onramp extension).

mod bulk;
mod certificates;
mod devices;
mod messages;
mod twins;

use bulk::*;
use certificates::*;
use devices::*;
use messages::*;
use twins::*;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use onramp_core::keys;
use onramp_model::hub::{
    AuthenticationMechanism, AuthenticationType, BulkRegistryOperationResult, Device,
    DeviceRegistryOperationError, DeviceStatus, ExportImportDevice, ImportMode, SymmetricKey, Twin,
};
use onramp_model::{Secret, UtcTime};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::CompanionHub;
use super::auth::{HubRights, authorize};
use super::store::{DeviceRecord, HubStoreError, PutMode, TwinChange, TwinState};
use crate::twin;

const MAX_BODY: usize = 128 * 1024;

pub fn router(hub: Arc<CompanionHub>) -> Router {
    Router::new()
        .route("/devices", get(list_devices).post(bulk_devices))
        .route(
            "/devices/{id}",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route(
            "/devices/{id}/messages/events",
            axum::routing::post(send_event).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/twins/{id}",
            get(get_twin).patch(patch_twin).put(replace_twin),
        )
        .route("/onramp/certificates", get(list_certificates))
        .route(
            "/onramp/certificates/{name}",
            axum::routing::put(put_certificate).delete(delete_certificate),
        )
        // Only on the hub's routes: an unknown path stays a plain 404.
        .route_layer(axum::middleware::from_fn(require_api_version))
        .with_state(hub)
}

/// IoT Hub refuses a call without a well-formed `api-version` with
/// `InvalidProtocolVersion`; any version is served the same model.
async fn require_api_version(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let version = pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("api-version"))
        .map(|(_, v)| v.as_str());
    let refusal = match version {
        None | Some("") => Some(
            "the api-version query parameter is required, e.g. ?api-version=2021-04-12".to_owned(),
        ),
        Some(v) => onramp_model::ids::check_api_version(v)
            .err()
            .map(|e| e.to_string()),
    };
    match refusal {
        Some(m) => {
            HubFailure::new(StatusCode::BAD_REQUEST, "InvalidProtocolVersion", m).into_response()
        }
        None => next.run(req).await,
    }
}

/// An IoT Hub error: `{"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:…"}`
/// with the `iothub-errorcode` header.
struct HubFailure {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After` (a throttled call).
    retry_after: Option<u64>,
}

impl HubFailure {
    fn new(status: StatusCode, code: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            code,
            message: message.to_string(),
            retry_after: None,
        }
    }
}

impl IntoResponse for HubFailure {
    fn into_response(self) -> Response {
        let body = json!({
            "Message": format!("ErrorCode:{};{}", self.code, self.message),
            "ExceptionMessage": format!("Tracking ID:{}-TimeStamp:{}", uuid::Uuid::new_v4().simple(), UtcTime::now()),
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.code));
        if let Some(seconds) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
        }
        resp
    }
}

impl From<HubStoreError> for HubFailure {
    fn from(e: HubStoreError) -> Self {
        match e {
            HubStoreError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "DeviceNotFound", m),
            HubStoreError::AlreadyExists(m) => {
                Self::new(StatusCode::CONFLICT, "DeviceAlreadyExists", m)
            }
            HubStoreError::PreconditionFailed(m) => {
                Self::new(StatusCode::PRECONDITION_FAILED, "PreconditionFailed", m)
            }
            HubStoreError::Invalid(m) => Self::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", m),
            HubStoreError::Store(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            ),
        }
    }
}

type HubResult = Result<Response, HubFailure>;

/// What every call brings: the hub it reached, the path its token must
/// cover, and the two headers its authorization and precondition come from.
struct Call {
    hub: Arc<CompanionHub>,
    uri: Uri,
    authorization: Option<String>,
    if_match: Option<String>,
}

impl FromRequestParts<Arc<CompanionHub>> for Call {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        hub: &Arc<CompanionHub>,
    ) -> Result<Self, Infallible> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Self {
            hub: hub.clone(),
            uri: parts.uri.clone(),
            authorization: header("authorization"),
            if_match: header("if-match").filter(|v| !v.trim().is_empty()),
        })
    }
}

impl Call {
    /// The hub, when the caller's token grants any of `any_of`.
    fn allow(&self, any_of: HubRights) -> Result<&CompanionHub, HubFailure> {
        let hub = &*self.hub;
        let rights = authorize(
            &hub.policies(),
            self.authorization.as_deref(),
            hub.host_name(),
            self.uri.path(),
            UtcTime::now().unix_seconds(),
        )
        .map_err(|r| {
            HubFailure::new(
                StatusCode::UNAUTHORIZED,
                "IotHubUnauthorizedAccess",
                r.message,
            )
        })?;
        if !rights.intersects(any_of) {
            return Err(HubFailure::new(
                StatusCode::UNAUTHORIZED,
                "IotHubUnauthorizedAccess",
                format!("the policy's rights [{rights}] do not include [{any_of}]"),
            ));
        }
        Ok(hub)
    }

    /// The `If-Match` ETag, when the caller gave one.
    fn if_match(&self) -> Option<String> {
        self.if_match.clone()
    }
}

/// The stored device with this ID, or IoT Hub's `DeviceNotFound`.
async fn existing_device(hub: &CompanionHub, id: &str) -> Result<DeviceRecord, HubFailure> {
    Ok(hub
        .store()
        .device(id)
        .await
        .map_err(HubStoreError::from)?
        .ok_or_else(|| HubStoreError::NotFound(format!("device '{id}' does not exist")))?)
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, HubFailure> {
    if body.len() > MAX_BODY {
        return Err(HubFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageTooLarge",
            format!("the body exceeds {MAX_BODY} bytes"),
        ));
    }
    onramp_model::json::decode(body).map_err(|e| {
        HubFailure::new(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            format!("the JSON body is invalid{}: {}", e.location(), e.reason()),
        )
    })
}

fn ok_json(value: impl serde::Serialize) -> Response {
    let mut resp = axum::Json(value).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn connection_state(hub: &CompanionHub, device_id: &str) -> &'static str {
    if hub.connections().is_connected(device_id) {
        "Connected"
    } else {
        "Disconnected"
    }
}
