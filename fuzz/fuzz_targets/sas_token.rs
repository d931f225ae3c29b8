//! SharedAccessSignature tokens from devices and operators, and the request
//! paths and api-version values that come with them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_core::sas;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = sas::parse(text) {
            let _ = token.resource_is("0ne00000000/registrations/device");
            let _ = token.check_expiry(1_800_000_000, 300);
            let _ = token.is_signed_by("c2VjcmV0LWtleS1mb3ItZnV6emluZy0zMmI=");
            let _ = token.covers_path("/enrollments/dev-1");
            let _ = token.covers_path(text);
        }
        let _ = onramp_model::ids::check_api_version(text);
        let _ = onramp_model::ids::check_device_id(text);
        let _ = onramp_core::connection_string::ConnectionString::parse(text);
    }
});
