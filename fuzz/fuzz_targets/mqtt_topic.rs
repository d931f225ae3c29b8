//! MQTT topics with property bags, as devices publish them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_net::mqtt::topic;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (_, pairs) = topic::split(text);
        let _ = topic::get(&pairs, "$rid");
        let _ = topic::raw_rid(text);
    }
});
