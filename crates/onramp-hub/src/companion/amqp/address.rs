//! Which device, and which of its links, an AMQP link address names.

use super::*;

/// What a hub link address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAddress {
    /// `$cbs`
    Cbs,
    /// `/devices/{id}/messages/events`
    Events(String),
    /// `/devices/{id}/messages/devicebound`
    DeviceBound(String),
    /// `/devices/{id}/twin`
    Twin(String),
}

/// Reads a link address: `$cbs`, or `/devices/{id}/…` with or without the
/// leading `/` and with an optional `amqps://{host}[:port]` before it. The
/// ID is percent-decoded (`+` stays); the rest matches in any case.
pub fn parse_hub_address(address: &str) -> Option<HubAddress> {
    if address == CBS {
        return Some(HubAddress::Cbs);
    }
    let path = match address.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("amqps") => rest.split_once('/')?.1,
        Some(_) => return None,
        None => address.strip_prefix('/').unwrap_or(address),
    };
    let mut parts = path.split('/');
    if !parts.next()?.eq_ignore_ascii_case("devices") {
        return None;
    }
    let id = percent_encoding::percent_decode_str(parts.next()?)
        .decode_utf8()
        .ok()?
        .into_owned();
    if id.is_empty() {
        return None;
    }
    let rest: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["messages", "events"] => Some(HubAddress::Events(id)),
        ["messages", "devicebound"] => Some(HubAddress::DeviceBound(id)),
        ["twin"] => Some(HubAddress::Twin(id)),
        _ => None,
    }
}

/// What a link is for, from the device's role and the address.
pub(super) enum Purpose {
    CbsRequests,
    CbsAnswers,
    Telemetry(String),
    TwinRequests(String),
    TwinAnswers(String),
    CloudToDevice(String),
}

pub(super) fn purpose(role: &Role, address: Option<&str>) -> Result<Purpose, definitions::Error> {
    let parsed = address.and_then(parse_hub_address);
    match (role, parsed) {
        (Role::Sender, Some(HubAddress::Cbs)) => Ok(Purpose::CbsRequests),
        (Role::Receiver, Some(HubAddress::Cbs)) => Ok(Purpose::CbsAnswers),
        (Role::Sender, Some(HubAddress::Events(id))) => Ok(Purpose::Telemetry(id)),
        (Role::Sender, Some(HubAddress::Twin(id))) => Ok(Purpose::TwinRequests(id)),
        (Role::Receiver, Some(HubAddress::Twin(id))) => Ok(Purpose::TwinAnswers(id)),
        (Role::Receiver, Some(HubAddress::DeviceBound(id))) => Ok(Purpose::CloudToDevice(id)),
        (_, _) => Err(amqp_error(
            AmqpError::NotFound,
            format!(
                "'{}' is not a node of the IoT Hub device API a device can {} (use $cbs, /devices/{{id}}/messages/events, /devices/{{id}}/messages/devicebound or /devices/{{id}}/twin)",
                address.unwrap_or_default(),
                if *role == Role::Sender {
                    "send to"
                } else {
                    "receive from"
                }
            ),
        )),
    }
}
