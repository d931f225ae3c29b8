//! MQTT CONNECT user names: the DPS form `{idScope}/registrations/{id}/…`
//! and the hub form `{hub}/{deviceId}/?…`, as the listener tells them apart
//! and each endpoint reads them (IDs, host, the `api-version` in the query).
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_endpoints::mqtt::parse_dps_username;
use onramp_hub::companion::parse_hub_username;
use onramp_model::{IdScope, RegistrationId, authority, ids};
use onramp_net::mqtt::topic;

fuzz_target!(|data: &[u8]| {
    let Ok(username) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((scope, registration_id)) = parse_dps_username(username) {
        let _ = IdScope::parse(scope);
        let _ = RegistrationId::parse(registration_id);
        let query = username.splitn(4, '/').nth(3).unwrap_or("");
        if let Some(version) = topic::get(&topic::pairs(query), "api-version") {
            let _ = ids::check_api_version(version);
        }
    }
    if let Some((host, device_id)) = parse_hub_username(username) {
        let _ = authority::same_host(host, "hub.example.net:8883");
        let _ = ids::check_device_id(device_id);
        let query = username.split_once('?').map_or("", |(_, q)| q);
        if let Some(version) = topic::get(&topic::pairs(query), "api-version") {
            let _ = ids::check_api_version(version);
        }
    }
});
