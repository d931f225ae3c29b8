//! Twins: the document IoT Hub returns, and reads, patches and replacements
//! of tags and desired properties, each pushed to a connected device.

use super::*;

/// The twin document IoT Hub returns, with `$version` and `$metadata`.
pub(super) fn twin_view(hub: &CompanionHub, record: &DeviceRecord) -> Value {
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

pub(super) async fn get_twin(call: Call, Path(id): Path<String>) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_READ.union(HubRights::SERVICE_CONNECT))?;
    let record = existing_device(hub, &id).await?;
    Ok(ok_json(twin_view(hub, &record)))
}

/// Tags and desired properties of a service write.
type TwinWrite = (Option<Map<String, Value>>, Option<Map<String, Value>>);

/// Tags and desired properties of a service write, checked and without `$` members.
pub(super) fn twin_write(body: &Bytes) -> Result<TwinWrite, HubFailure> {
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

pub(super) fn check_names(
    path: &str,
    map: &Map<String, Value>,
    depth: usize,
) -> Result<(), HubFailure> {
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
pub(super) fn apply(
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
pub(super) fn notify(hub: &CompanionHub, record: &DeviceRecord, patch: Option<Map<String, Value>>) {
    let mut body = patch.unwrap_or_else(|| record.twin.desired.clone());
    body.insert("$version".into(), json!(record.twin.desired_version));
    hub.connections().notify_desired(
        &record.device.device_id,
        record.twin.desired_version,
        Value::Object(body).to_string().into(),
    );
}

pub(super) async fn patch_twin(call: Call, Path(id): Path<String>, body: Bytes) -> HubResult {
    service_twin_write(&call, &id, &body, false).await
}

pub(super) async fn replace_twin(call: Call, Path(id): Path<String>, body: Bytes) -> HubResult {
    service_twin_write(&call, &id, &body, true).await
}

/// A service's PATCH (merge) or PUT (replace) of tags and desired properties;
/// a connected device hears of a desired change: the patch after a merge, the
/// whole desired document after a replace.
async fn service_twin_write(call: &Call, id: &str, body: &Bytes, replace: bool) -> HubResult {
    let hub = call.allow(HubRights::SERVICE_CONNECT.union(HubRights::REGISTRY_WRITE))?;
    let (mut tags, mut desired) = twin_write(body)?;
    if replace {
        tags.get_or_insert_with(Map::new);
        desired.get_or_insert_with(Map::new);
    }
    let patch = if replace { None } else { desired.clone() };
    let (record, desired_changed) = write_twin(hub, id, call.if_match(), move |t| {
        apply(t, tags, desired, replace)
    })
    .await?;
    if desired_changed {
        notify(hub, &record, patch);
    }
    Ok(ok_json(twin_view(hub, &record)))
}

/// Runs a twin write; returns the record and whether desired properties changed.
pub(super) async fn write_twin(
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
