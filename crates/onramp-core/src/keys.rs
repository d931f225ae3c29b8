//! Symmetric keys: generation and validation.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_model::Secret;

/// Length of keys Onramp generates (Azure's portal generates 64-byte keys).
pub const GENERATED_KEY_BYTES: usize = 64;
pub const MIN_KEY_BYTES: usize = 16;
pub const MAX_KEY_BYTES: usize = 64;

/// A fresh random key, base64.
pub fn generate() -> Secret {
    Secret::new(STANDARD.encode(random_bytes(GENERATED_KEY_BYTES)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    // The system RNG failing is not recoverable; there is nothing safe to fall back to.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    bytes
}

/// Checks a user-supplied key: base64 of 16 to 64 bytes.
pub fn validate(field: &str, key: &str) -> Result<(), String> {
    let bytes = STANDARD.decode(key.trim()).map_err(|_| {
        format!("{field} is not valid base64; give base64 of 16 to 64 random bytes, or leave it out to have one generated")
    })?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
        return Err(format!(
            "{field} decodes to {} bytes; keys must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes",
            bytes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_validate_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(validate("k", a.expose()).is_ok());
        assert!(validate("k", "c2hvcnQ=").unwrap_err().contains("5 bytes"));
        assert!(
            validate("k", "***")
                .unwrap_err()
                .contains("not valid base64")
        );
    }
}
