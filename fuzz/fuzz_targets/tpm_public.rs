//! TPM endorsement and storage root keys as devices and operators send them:
//! marshaled TPM2B_PUBLIC bytes, or their base64 text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_core::tpm::{self, RsaPublic};

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = RsaPublic::parse(data) {
        // What is accepted is the input, unchanged, and can be encrypted to.
        assert_eq!(key.as_bytes(), data);
        assert_eq!(RsaPublic::from_base64(&key.to_base64()).as_ref(), Ok(&key));
        assert_eq!(key.registration_id().len(), 52);
        assert_eq!(key.name()[..2], [0x00, 0x0b]);
        let blob = tpm::activation_blob(&key, &key, &[0x42; 32]);
        assert_eq!(blob.map(|b| b.len()).ok(), Some(766));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RsaPublic::from_base64(text);
    }
});
