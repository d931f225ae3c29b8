//! Device identities, one at a time: list, read, create or update, delete.

use super::*;

pub(super) fn device_view(hub: &CompanionHub, record: &DeviceRecord) -> Device {
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

#[derive(Deserialize)]
pub(super) struct ListQuery {
    top: Option<usize>,
}

pub(super) async fn list_devices(call: Call, Query(q): Query<ListQuery>) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_READ)?;
    let top = q.top.unwrap_or(1000).clamp(1, 10_000);
    let records = hub
        .store()
        .devices(None, top)
        .await
        .map_err(HubStoreError::from)?;
    Ok(ok_json(
        records
            .iter()
            .map(|r| device_view(hub, r))
            .collect::<Vec<_>>(),
    ))
}

pub(super) async fn get_device(call: Call, Path(id): Path<String>) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_READ)?;
    let record = existing_device(hub, &id).await?;
    Ok(ok_json(device_view(hub, &record)))
}

pub(super) async fn put_device(call: Call, Path(id): Path<String>, body: Bytes) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_WRITE)?;
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
        .put_device(device, call.if_match(), UtcTime::now())
        .await?;
    Ok(ok_json(device_view(hub, &record)))
}

/// IoT Hub's rule for device IDs, on every write that names one.
pub(super) fn check_device_id(id: &str) -> Result<(), HubFailure> {
    onramp_model::ids::check_device_id(id)
        .map_err(|m| HubFailure::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", m))
}

pub(super) fn normalize_identity(device: &mut Device) -> Result<(), HubFailure> {
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

pub(super) async fn delete_device(call: Call, Path(id): Path<String>) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_WRITE)?;
    hub.store().delete_device(&id, call.if_match()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
