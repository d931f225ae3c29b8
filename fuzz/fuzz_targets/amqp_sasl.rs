//! What an AMQP client sends before it is authenticated and Onramp reads
//! itself: SASL frames (the bytes after the frame size), the `PLAIN`
//! response inside `sasl-init` with the user name it carries, and link
//! addresses. The first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_endpoints::amqp::{decode_sasl_frame, parse_address, parse_plain};
use onramp_endpoints::mqtt::parse_dps_username;
use onramp_model::RegistrationId;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let _ = decode_sasl_frame(rest);
        }
        1 => {
            if let Some((user, _password)) = parse_plain(rest) {
                let _ = parse_dps_username(user);
            }
        }
        _ => {
            if let Ok(address) = std::str::from_utf8(rest)
                && let Some(address) = parse_address(address)
            {
                let _ = RegistrationId::parse(&address.registration_id);
            }
        }
    }
});
