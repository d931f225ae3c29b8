//! Operation IDs as devices send them back in polls (`GET
//! …/operations/{operationId}` and the MQTT poll topic's `operationId`):
//! reading the start time never panics, and an ID made the way the engine
//! makes them gives back the time it was made with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_core::engine::operation_started;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(started) = operation_started(text) {
            assert!((0..=i128::from(u64::MAX)).contains(&started), "{text:?}");
        }
    }
    // `1.<start time, hex ns>.<rest>`, as `Engine::new_operation_id` writes it.
    if let Some((time, rest)) = data.split_first_chunk::<8>() {
        let nanos = u64::from_be_bytes(*time);
        let rest = String::from_utf8_lossy(rest);
        let id = format!("1.{nanos:016x}.{rest}");
        let expected = (!rest.is_empty() && !rest.contains('.')).then(|| i128::from(nanos));
        assert_eq!(operation_started(&id), expected, "{id:?}");
    }
});
