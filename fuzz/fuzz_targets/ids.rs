//! Identifiers from outside: registration and enrollment group IDs, ID
//! scopes, device IDs, `api-version` values, `If-Match` ETags and
//! `host[:port]` authorities. Each check answers, never panics, and what
//! it accepts keeps its promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_model::{ETag, IdScope, RegistrationId, authority, ids};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = RegistrationId::parse(text) {
        assert!(id.as_str().chars().count() <= ids::MAX_ID_LEN);
        assert!(RegistrationId::parse(&id.key()).is_ok(), "a key is an ID too");
    }
    let _ = ids::check_group_id(text);
    if IdScope::parse(text).is_ok() {
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    if ids::check_device_id(text).is_ok() {
        assert!(!text.contains(['/', '#', '+']), "{text:?} would break MQTT topics");
    }
    if ids::check_api_version(text).is_ok() {
        assert!(text.is_ascii());
    }
    let tag = ETag::from_opaque("1a2b3c4d5e6f7a8b");
    let _ = tag.matches(text);
    let _ = ETag::from_raw(text).opaque();
    let _ = ids::is_wildcard(text);
    if let Ok((host, port)) = authority::split(text) {
        if let Some(port) = port {
            assert_eq!(authority::split(&authority::join(host, port)), Ok((host, Some(port))));
        }
    }
    let _ = authority::with_default_port(text, 443);
    let _ = authority::same_host(text, "localhost:443");
});
