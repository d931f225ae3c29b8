//! The IoT Hub service REST subset: `/devices/{id}` and `/twins/{id}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
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
        Some(v) => onramp_model::ids::check_api_version(v).err(),
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
}

impl HubFailure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
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

fn check(
    hub: &CompanionHub,
    uri: &Uri,
    headers: &HeaderMap,
    any_of: HubRights,
) -> Result<(), HubFailure> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let rights = authorize(
        &hub.policies(),
        auth,
        hub.host_name(),
        uri.path(),
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
    Ok(())
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get("if-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|v| !v.trim().is_empty())
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, HubFailure> {
    if body.len() > MAX_BODY {
        return Err(HubFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageTooLarge",
            format!("the body exceeds {MAX_BODY} bytes"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        HubFailure::new(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            format!("the JSON body is invalid{at}: {}", e.inner()),
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

fn device_view(hub: &CompanionHub, record: &DeviceRecord) -> Device {
    let mut d = record.device.clone();
    d.connection_state = Some(connection_state(hub, &d.device_id).into());
    d.connection_state_updated_time
        .get_or_insert_with(|| "0001-01-01T00:00:00Z".into());
    d.status_updated_time
        .get_or_insert_with(|| "0001-01-01T00:00:00Z".into());
    d.last_activity_time
        .get_or_insert_with(|| "0001-01-01T00:00:00Z".into());
    d.cloud_to_device_message_count.get_or_insert(0);
    d
}

/// The twin document IoT Hub returns, with `$version` and `$metadata`.
pub fn twin_view(hub: &CompanionHub, record: &DeviceRecord) -> Value {
    let t = &record.twin;
    let d = &record.device;
    let collection = |props: &Map<String, Value>, version: i64, updated: Option<UtcTime>| {
        let mut m = props.clone();
        m.insert(
            "$metadata".into(),
            json!({"$lastUpdated": updated.unwrap_or_else(UtcTime::now).to_string()}),
        );
        m.insert("$version".into(), json!(version));
        Value::Object(m)
    };
    let auth_type = d
        .authentication
        .as_ref()
        .map(|a| a.kind)
        .unwrap_or_default();
    json!({
        "deviceId": d.device_id,
        "etag": t.etag,
        "deviceEtag": d.etag,
        "status": d.status.unwrap_or_default(),
        "statusUpdateTime": "0001-01-01T00:00:00Z",
        "connectionState": connection_state(hub, &d.device_id),
        "lastActivityTime": "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": 0,
        "authenticationType": auth_type,
        "version": t.version,
        "tags": t.tags,
        "properties": {
            "desired": collection(&t.desired, t.desired_version, t.desired_updated),
            "reported": collection(&t.reported, t.reported_version, t.reported_updated),
        },
        "capabilities": d.capabilities.unwrap_or_default(),
    })
}

#[derive(Deserialize)]
struct ListQuery {
    top: Option<usize>,
}

async fn list_devices(
    State(hub): State<Arc<CompanionHub>>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_READ)?;
    let top = q.top.unwrap_or(1000).clamp(1, 10_000);
    let records = hub
        .store()
        .devices(None, top)
        .await
        .map_err(HubStoreError::from)?;
    Ok(ok_json(
        records
            .iter()
            .map(|r| device_view(&hub, r))
            .collect::<Vec<_>>(),
    ))
}

async fn get_device(
    State(hub): State<Arc<CompanionHub>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_READ)?;
    let record = hub
        .store()
        .device(&id)
        .await
        .map_err(HubStoreError::from)?
        .ok_or_else(|| HubStoreError::NotFound(format!("device '{id}' does not exist")))?;
    Ok(ok_json(device_view(&hub, &record)))
}

async fn put_device(
    State(hub): State<Arc<CompanionHub>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_WRITE)?;
    let mut device: Device = parse(&body)?;
    if device.device_id.is_empty() {
        device.device_id = id.clone();
    } else if device.device_id != id {
        return Err(HubFailure::new(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            format!(
                "deviceId '{}' in the body differs from '{id}' in the path",
                device.device_id
            ),
        ));
    }
    check_device_id(&device.device_id)?;
    normalize_identity(&mut device)?;
    // Read-only members the hub owns.
    device.connection_state = None;
    device.connection_state_updated_time = None;
    device.status_updated_time = None;
    device.last_activity_time = None;
    device.cloud_to_device_message_count = None;
    let record = hub
        .store()
        .put_device(device, if_match(&headers), UtcTime::now())
        .await?;
    Ok(ok_json(device_view(&hub, &record)))
}

/// IoT Hub's rule for device IDs, on every write that names one.
fn check_device_id(id: &str) -> Result<(), HubFailure> {
    onramp_model::ids::check_device_id(id)
        .map_err(|m| HubFailure::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", m))
}

fn normalize_identity(device: &mut Device) -> Result<(), HubFailure> {
    device.status.get_or_insert(DeviceStatus::Enabled);
    let auth = device
        .authentication
        .get_or_insert_with(AuthenticationMechanism::default);
    match auth.kind {
        AuthenticationType::Sas => {
            let keys = auth.symmetric_key.get_or_insert_with(SymmetricKey::default);
            for (field, slot) in [
                ("primaryKey", &mut keys.primary_key),
                ("secondaryKey", &mut keys.secondary_key),
            ] {
                match slot
                    .as_ref()
                    .map(|k| k.expose().trim().to_owned())
                    .filter(|k| !k.is_empty())
                {
                    None => *slot = Some(keys::generate()),
                    Some(k) => {
                        keys::validate(&format!("authentication.symmetricKey.{field}"), &k)
                            .map_err(|m| {
                                HubFailure::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", m)
                            })?;
                        *slot = Some(Secret::new(k));
                    }
                }
            }
            auth.x509_thumbprint = None;
        }
        AuthenticationType::SelfSigned => {
            let prints = auth.x509_thumbprint.get_or_insert_with(Default::default);
            let ok = |t: &Option<String>| {
                t.as_deref().is_none_or(|t| {
                    matches!(t.len(), 40 | 64) && t.chars().all(|c| c.is_ascii_hexdigit())
                })
            };
            if prints.primary_thumbprint.is_none() && prints.secondary_thumbprint.is_none()
                || !ok(&prints.primary_thumbprint)
                || !ok(&prints.secondary_thumbprint)
            {
                return Err(HubFailure::new(
                    StatusCode::BAD_REQUEST,
                    "ArgumentInvalid",
                    "selfSigned authentication needs x509Thumbprint.primaryThumbprint as 40 (SHA-1) or 64 (SHA-256) hex digits",
                ));
            }
            auth.symmetric_key = None;
        }
        AuthenticationType::CertificateAuthority | AuthenticationType::None => {
            auth.symmetric_key = None;
            auth.x509_thumbprint = None;
        }
    }
    Ok(())
}

async fn delete_device(
    State(hub): State<Arc<CompanionHub>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_WRITE)?;
    hub.store().delete_device(&id, if_match(&headers)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Most items one bulk registry call takes, as in IoT Hub.
const MAX_BULK: usize = 100;

/// `POST /devices`: creates, updates or deletes identities, or overwrites
/// twins (reported properties included, which is how a provisioning service
/// carries a device's data to another hub).
async fn bulk_devices(
    State(hub): State<Arc<CompanionHub>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_WRITE)?;
    let items: Vec<ExportImportDevice> = parse(&body)?;
    if items.is_empty() || items.len() > MAX_BULK {
        return Err(HubFailure::new(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            format!(
                "a bulk registry operation takes 1 to {MAX_BULK} devices, got {}",
                items.len()
            ),
        ));
    }
    // An item the hub could never store refuses the call, as a single write
    // would be refused, before any item is applied.
    for (i, item) in items.iter().enumerate() {
        check_device_id(&item.id).map_err(|f| {
            HubFailure::new(f.status, f.code, format!("devices[{i}].id: {}", f.message))
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = items
        .iter()
        .find(|i| !seen.insert(i.id.to_ascii_lowercase()))
    {
        return Err(HubFailure::new(
            StatusCode::BAD_REQUEST,
            "DeviceDefinedMultipleTimes",
            format!(
                "device '{}' appears more than once; name each device once",
                dup.id
            ),
        ));
    }
    let mut errors = Vec::new();
    for item in items {
        let device_id = item.id.clone();
        if let Err(f) = bulk_item(&hub, item).await {
            // The store failing is the hub's trouble, not the item's: the
            // whole call answers 503, which callers retry later.
            if f.status.is_server_error() {
                return Err(f);
            }
            errors.push(DeviceRegistryOperationError {
                device_id,
                error_code: f.code.to_owned(),
                error_status: f.message,
            });
        }
    }
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut resp = ok_json(BulkRegistryOperationResult {
        is_successful: errors.is_empty(),
        errors,
        warnings: Vec::new(),
    });
    *resp.status_mut() = status;
    Ok(resp)
}

async fn bulk_item(hub: &CompanionHub, item: ExportImportDevice) -> Result<(), HubFailure> {
    let mode = item.import_mode.unwrap_or_default();
    let etag = |tag: &Option<String>| {
        Some(tag.clone().unwrap_or_else(|| "*".into())).filter(|_| {
            matches!(
                mode,
                ImportMode::UpdateIfMatchETag
                    | ImportMode::DeleteIfMatchETag
                    | ImportMode::UpdateTwinIfMatchETag
            )
        })
    };
    match mode {
        ImportMode::Create | ImportMode::Update | ImportMode::UpdateIfMatchETag => {
            let mut device = Device {
                device_id: item.id.clone(),
                status: item.status,
                status_reason: item.status_reason.clone(),
                authentication: item.authentication.clone(),
                capabilities: item.capabilities,
                ..Default::default()
            };
            normalize_identity(&mut device)?;
            let put = match mode {
                ImportMode::Create => PutMode::Create,
                // Overwrites an existing device, creates a missing one.
                ImportMode::Update => PutMode::Upsert,
                _ => PutMode::Update(item.e_tag.clone().unwrap_or_else(|| "*".into())),
            };
            // The identity and its twin in one transaction.
            let props = item.properties.unwrap_or_default();
            let twin: Option<TwinChange> =
                if item.tags.is_some() || props.desired.is_some() || props.reported.is_some() {
                    let (tags, desired, reported) =
                        bulk_twin(item.tags, props.desired, props.reported)?;
                    Some(Box::new(move |t: &mut TwinState| {
                        Ok(overwrite_twin(t, tags, desired, reported))
                    }))
                } else {
                    None
                };
            let (record, desired_changed) = hub
                .store()
                .put_device_and_twin(device, put, UtcTime::now(), twin)
                .await?;
            if desired_changed {
                notify(hub, &record, None);
            }
            Ok(())
        }
        ImportMode::Delete | ImportMode::DeleteIfMatchETag => {
            { hub.store().delete_device(&item.id, etag(&item.e_tag)).await }
                .map_err(HubFailure::from)
        }
        ImportMode::UpdateTwin | ImportMode::UpdateTwinIfMatchETag => {
            let props = item.properties.unwrap_or_default();
            let (tags, desired, reported) = bulk_twin(item.tags, props.desired, props.reported)?;
            let if_match = etag(&item.twin_e_tag);
            let (record, desired_changed) = write_twin_as(hub, &item.id, if_match, move |t| {
                overwrite_twin(t, tags, desired, reported)
            })
            .await?;
            if desired_changed {
                notify(hub, &record, None);
            }
            Ok(())
        }
    }
}

/// Overwrites what a bulk item carries (as IoT Hub's import does), reported
/// properties included; returns (anything changed, desired changed).
fn overwrite_twin(
    t: &mut TwinState,
    tags: Option<Map<String, Value>>,
    desired: Option<Map<String, Value>>,
    reported: Option<Map<String, Value>>,
) -> (bool, bool) {
    let (mut any, desired_changed) = apply(t, tags, desired, true);
    if let Some(reported) = reported
        && reported != t.reported
    {
        t.reported = reported;
        t.reported_version += 1;
        t.reported_updated = Some(UtcTime::now());
        any = true;
    }
    (any, desired_changed)
}

type BulkTwin = (
    Option<Map<String, Value>>,
    Option<Map<String, Value>>,
    Option<Map<String, Value>>,
);

/// Tags and properties of a bulk item, checked and without `$` members.
fn bulk_twin(
    tags: Option<Map<String, Value>>,
    desired: Option<Map<String, Value>>,
    reported: Option<Map<String, Value>>,
) -> Result<BulkTwin, HubFailure> {
    let clean = |path: &str, m: Option<Map<String, Value>>| {
        m.map(|mut m| {
            twin::strip_system_members(&mut m);
            check_names(path, &m, 1).map(|()| m)
        })
        .transpose()
    };
    Ok((
        clean("tags", tags)?,
        clean("properties.desired", desired)?,
        clean("properties.reported", reported)?,
    ))
}

async fn get_twin(
    State(hub): State<Arc<CompanionHub>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> HubResult {
    check(
        &hub,
        &uri,
        &headers,
        HubRights::REGISTRY_READ.union(HubRights::SERVICE_CONNECT),
    )?;
    let record = hub
        .store()
        .device(&id)
        .await
        .map_err(HubStoreError::from)?
        .ok_or_else(|| HubStoreError::NotFound(format!("device '{id}' does not exist")))?;
    Ok(ok_json(twin_view(&hub, &record)))
}

/// Tags and desired properties of a service write.
type TwinWrite = (Option<Map<String, Value>>, Option<Map<String, Value>>);

/// Tags and desired properties of a service write, checked and without `$` members.
fn twin_write(body: &Bytes) -> Result<TwinWrite, HubFailure> {
    let twin: Twin = parse(body)?;
    let props = twin.properties.unwrap_or_default();
    if props.reported.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(HubFailure::new(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "properties.reported can only be written by the device",
        ));
    }
    let mut desired = props.desired;
    if let Some(d) = desired.as_mut() {
        twin::strip_system_members(d);
    }
    for (path, map) in [
        ("tags", twin.tags.as_ref()),
        ("properties.desired", desired.as_ref()),
    ] {
        if let Some(m) = map {
            check_names(path, m, 1)?;
        }
    }
    Ok((twin.tags, desired))
}

fn check_names(path: &str, map: &Map<String, Value>, depth: usize) -> Result<(), HubFailure> {
    let bad = |m: String| HubFailure::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", m);
    if depth > 10 {
        return Err(bad(format!("{path} nests deeper than 10 levels")));
    }
    for (k, v) in map {
        if k.is_empty()
            || k.chars()
                .any(|c| c == '.' || c == '$' || c == ' ' || c.is_control())
        {
            return Err(bad(format!(
                "{path} has the property name '{k}'; names cannot contain '.', '$', spaces or control characters"
            )));
        }
        if let Value::Object(inner) = v {
            check_names(&format!("{path}.{k}"), inner, depth + 1)?;
        }
    }
    Ok(())
}

/// Applies a service write; returns (anything changed, desired changed).
fn apply(
    twin: &mut TwinState,
    tags: Option<Map<String, Value>>,
    desired: Option<Map<String, Value>>,
    replace: bool,
) -> (bool, bool) {
    let before = (twin.tags.clone(), twin.desired.clone());
    if let Some(tags) = tags {
        if replace {
            twin.tags = twin::without_nulls(&tags);
        } else {
            twin::merge(&mut twin.tags, &tags);
        }
    }
    if let Some(desired) = desired {
        if replace {
            twin.desired = twin::without_nulls(&desired);
        } else {
            twin::merge(&mut twin.desired, &desired);
        }
    }
    let desired_changed = twin.desired != before.1;
    if desired_changed {
        twin.desired_version += 1;
        twin.desired_updated = Some(UtcTime::now());
    }
    (
        (twin.tags.clone(), twin.desired.clone()) != before,
        desired_changed,
    )
}

/// Tells a connected device about a desired-properties change: the patch (or
/// the whole desired document after a replace) with its new `$version`.
fn notify(hub: &CompanionHub, record: &DeviceRecord, patch: Option<Map<String, Value>>) {
    let mut body = patch.unwrap_or_else(|| record.twin.desired.clone());
    body.insert("$version".into(), json!(record.twin.desired_version));
    hub.connections().notify_desired(
        &record.device.device_id,
        record.twin.desired_version,
        Value::Object(body).to_string().into(),
    );
}

async fn patch_twin(
    State(hub): State<Arc<CompanionHub>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HubResult {
    check(
        &hub,
        &uri,
        &headers,
        HubRights::SERVICE_CONNECT.union(HubRights::REGISTRY_WRITE),
    )?;
    let (tags, desired) = twin_write(&body)?;
    let patch = desired.clone();
    let (record, desired_changed) =
        write_twin(&hub, &id, &headers, move |t| apply(t, tags, desired, false)).await?;
    if desired_changed {
        notify(&hub, &record, patch);
    }
    Ok(ok_json(twin_view(&hub, &record)))
}

/// Runs a twin write; returns the record and whether desired properties changed.
async fn write_twin(
    hub: &CompanionHub,
    id: &str,
    headers: &HeaderMap,
    change: impl FnOnce(&mut TwinState) -> (bool, bool) + Send + 'static,
) -> Result<(DeviceRecord, bool), HubFailure> {
    write_twin_as(hub, id, if_match(headers), change).await
}

async fn write_twin_as(
    hub: &CompanionHub,
    id: &str,
    if_match: Option<String>,
    change: impl FnOnce(&mut TwinState) -> (bool, bool) + Send + 'static,
) -> Result<(DeviceRecord, bool), HubFailure> {
    let desired_changed = Arc::new(AtomicBool::new(false));
    let flag = desired_changed.clone();
    let record = hub
        .store()
        .update_twin(id, if_match, move |t| {
            let (any, desired) = change(t);
            flag.store(desired, Ordering::Relaxed);
            Ok(any)
        })
        .await?;
    Ok((record, desired_changed.load(Ordering::Relaxed)))
}

async fn replace_twin(
    State(hub): State<Arc<CompanionHub>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HubResult {
    check(
        &hub,
        &uri,
        &headers,
        HubRights::SERVICE_CONNECT.union(HubRights::REGISTRY_WRITE),
    )?;
    let (tags, desired) = twin_write(&body)?;
    let (record, desired_changed) = write_twin(&hub, &id, &headers, move |t| {
        apply(
            t,
            Some(tags.unwrap_or_default()),
            Some(desired.unwrap_or_default()),
            true,
        )
    })
    .await?;
    if desired_changed {
        notify(&hub, &record, None);
    }
    Ok(ok_json(twin_view(&hub, &record)))
}

// Trusted CA certificates: an Onramp extension (IoT Hub manages them through
// Azure Resource Manager). Devices with `certificateAuthority` authentication
// must chain to one of them.

#[derive(Deserialize)]
struct CertificateUpload {
    certificate: String,
}

fn certificate_view(name: &str, der: &[u8]) -> Value {
    match onramp_core::x509::info_from_der(der) {
        Ok(info) => {
            json!({"name": name, "subject": info.subject_name, "thumbprint": info.sha256_thumbprint, "expiry": info.not_after_utc})
        }
        Err(_) => json!({"name": name}),
    }
}

async fn list_certificates(
    State(hub): State<Arc<CompanionHub>>,
    uri: Uri,
    headers: HeaderMap,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_READ)?;
    let certs = hub
        .store()
        .certificates()
        .await
        .map_err(HubStoreError::from)?;
    Ok(ok_json(
        json!({"value": certs.iter().map(|(n, d)| certificate_view(n, d)).collect::<Vec<_>>()}),
    ))
}

async fn put_certificate(
    State(hub): State<Arc<CompanionHub>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_WRITE)?;
    let upload: CertificateUpload = parse(&body)?;
    let bad = |m: String| HubFailure::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", m);
    let der = onramp_core::x509::decode(&upload.certificate)
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let parsed =
        onramp_core::x509::Parsed::from_der(&der).map_err(|e| bad(format!("certificate: {e}")))?;
    if !parsed.is_ca {
        return Err(bad(format!(
            "{} is not a CA certificate",
            parsed.info.subject_name
        )));
    }
    hub.trust_ca(&name, der.clone())
        .await
        .map_err(HubStoreError::from)?;
    Ok(ok_json(certificate_view(&name, &der)))
}

async fn delete_certificate(
    State(hub): State<Arc<CompanionHub>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> HubResult {
    check(&hub, &uri, &headers, HubRights::REGISTRY_WRITE)?;
    if !hub.untrust_ca(&name).await.map_err(HubStoreError::from)? {
        return Err(HubFailure::new(
            StatusCode::NOT_FOUND,
            "CertificateNotFound",
            format!("no certificate named '{name}'"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
