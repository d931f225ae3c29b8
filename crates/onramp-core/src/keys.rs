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

/// Why a user-supplied key was refused; `field` names where it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{field} is not valid base64; give base64 of 16 to 64 random bytes, or leave it out to \
         have one generated"
    )]
    NotBase64 { field: String },
    #[error(
        "{field} decodes to {bytes} bytes; keys must be {min} to {max} bytes",
        min = MIN_KEY_BYTES,
        max = MAX_KEY_BYTES
    )]
    Length { field: String, bytes: usize },
}

/// Checks a user-supplied key: base64 of 16 to 64 bytes.
pub fn validate(field: &str, key: &str) -> Result<(), KeyError> {
    let bytes = STANDARD
        .decode(key.trim())
        .map_err(|_| KeyError::NotBase64 {
            field: field.to_owned(),
        })?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
        return Err(KeyError::Length {
            field: field.to_owned(),
            bytes: bytes.len(),
        });
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
        assert!(
            validate("k", "c2hvcnQ=")
                .unwrap_err()
                .to_string()
                .contains("5 bytes")
        );
        assert!(
            validate("k", "***")
                .unwrap_err()
                .to_string()
                .contains("not valid base64")
        );
    }
}
