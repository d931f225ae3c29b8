//! What an AMQP client sends before it is authenticated and Onramp reads
//! itself: SASL frames (the bytes after the frame size), the `PLAIN`
//! response inside `sasl-init` with the user name it carries, link
//! addresses, and the `TPM` mechanism's payloads: its `sasl-init` (ID scope,
//! registration ID, endorsement key) and responses (storage root key or
//! token), the keys through the engine's TPM2B_PUBLIC parser. The first
//! byte picks which; a blob's two segments are checked to put it back
//! together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_core::tpm::RsaPublic;
use onramp_endpoints::amqp::{
    decode_sasl_frame, parse_address, parse_plain, parse_tpm_init, parse_tpm_response,
    tpm_blob_segments,
};
use onramp_endpoints::mqtt::parse_dps_username;
use onramp_model::RegistrationId;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            let _ = decode_sasl_frame(rest);
        }
        1 => {
            if let Some((user, _password)) = parse_plain(rest) {
                let _ = parse_dps_username(user);
            }
        }
        2 => {
            if let Ok(address) = std::str::from_utf8(rest)
                && let Some(address) = parse_address(address)
            {
                let _ = RegistrationId::parse(&address.registration_id);
            }
        }
        3 => {
            if let Ok(init) = parse_tpm_init(rest) {
                assert!(!init.scope.is_empty() && !init.registration_id.is_empty());
                let _ = RegistrationId::parse(init.registration_id);
                if let Ok(ek) = RsaPublic::parse(init.endorsement_key) {
                    assert_eq!(ek.as_bytes(), init.endorsement_key);
                }
            }
        }
        4 => {
            if let Ok(content) = parse_tpm_response(rest) {
                let _ = RsaPublic::parse(content);
                let _ = std::str::from_utf8(content);
            }
        }
        _ => {
            if let Ok([first, last]) = tpm_blob_segments(rest) {
                assert_eq!((first[0], last[0]), (0x80, 0xC1));
                assert_eq!([&first[1..], &last[1..]].concat(), rest);
            }
        }
    }
});
