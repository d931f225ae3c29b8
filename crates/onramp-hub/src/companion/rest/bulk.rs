//! The bulk registry operation (`POST /devices`), as IoT Hub answers it:
//! each item succeeds or fails on its own.

use super::*;

/// Most items one bulk registry call takes, as in IoT Hub.
pub(super) const MAX_BULK: usize = 100;

/// `POST /devices`: creates, updates or deletes identities, or overwrites
/// twins (reported properties included, which is how a provisioning service
/// carries a device's data to another hub).
pub(super) async fn bulk_devices(call: Call, body: Bytes) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_WRITE)?;
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
        if let Err(f) = bulk_item(hub, item).await {
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

pub(super) async fn bulk_item(
    hub: &CompanionHub,
    item: ExportImportDevice,
) -> Result<(), HubFailure> {
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
            let (record, desired_changed) = write_twin(hub, &item.id, if_match, move |t| {
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
pub(super) fn overwrite_twin(
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
pub(super) fn bulk_twin(
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
