//! TPM 2.0 attestation, the server's half: protocol-neutral and free of I/O.
//!
//! A TPM device sends its endorsement key (EK) and storage root key (SRK) as
//! marshaled `TPM2B_PUBLIC` structures. The server answers with an
//! activation blob that only that TPM can open: a fresh HMAC key wrapped for
//! the SRK (as `TPM2_Duplicate` would) and the inner wrapping key sent as a
//! credential to the EK (as `TPM2_MakeCredential` would). The device imports
//! the key into its TPM and signs a SharedAccessSignature with it; the
//! server checks that token with the key it sent. The device protocol
//! notes, §5, describe every byte; a test replays the device's side on a
//! software TPM (`swtpm`).
//!
//! - [`public`]: the `TPM2B_PUBLIC` of an RSA-2048 storage key: parsing with
//!   validation, encoding, `Name()`, the default registration ID.
//! - [`kdf`]: the TPM's key derivation function, KDFa.
//! - [`blob`]: the activation blob.
//! - [`token`]: verification of a token signed with the imported key.
//! - [`ek_cert`]: endorsement key certificates, checked against the
//!   manufacturer CAs of a TPM enrollment group (Onramp's extension).
//! - [`device`]: the device's half in software (opening a blob), for the
//!   simulator, the load generator and tests; the server never calls it.
//!
//! All cryptography comes from aws-lc-rs: RSA-OAEP with SHA-256 and the TPM's
//! labels, AES-128-CFB, HMAC-SHA256, SHA-256 and randomness.

pub mod blob;
pub mod device;
pub mod ek_cert;
pub mod kdf;
pub mod public;
pub mod token;

pub use blob::{CHALLENGE_KEY_LEN, activation_blob, challenge_key, decoy_blob};
pub use public::RsaPublic;
pub use token::verify_token;

use crate::sas::SasError;

/// Why a TPM key, a blob or a token was refused. Messages describe the
/// fault without naming the field: the caller prefixes it
/// (`attestation.tpm.endorsementKey: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmError {
    #[error(
        "is not valid base64; give base64 of the key's marshaled TPM2B_PUBLIC \
         (tpm2_readpublic -f tss, or the SDK's getEndorsementKey)"
    )]
    Base64,
    #[error(
        "ends after {len} bytes, inside {what}; give the whole marshaled TPM2B_PUBLIC \
         (tpm2_readpublic -f tss)"
    )]
    Truncated { what: &'static str, len: usize },
    #[error(
        "has a TPM2B_PUBLIC size field of {declared} bytes, but {actual} bytes follow it; \
         give the key exactly as tpm2_readpublic -f tss exports it"
    )]
    SizeField { declared: usize, actual: usize },
    #[error("has {count} bytes after the end of {after}; give the marshaled TPM2B_PUBLIC alone")]
    TrailingBytes { count: usize, after: &'static str },
    #[error("has type 0x{0:04x} ({name}); an RSA key (type 0x0001) is required", name = alg_name(*.0))]
    Type(u16),
    #[error(
        "has nameAlg 0x{0:04x} ({name}); SHA-256 (0x000b) is required",
        name = alg_name(*.0)
    )]
    NameAlg(u16),
    #[error(
        "has objectAttributes 0x{0:08x}; a storage key (restricted and decrypt, not sign) \
         is required, as the endorsement key and storage root key templates make"
    )]
    Attributes(u32),
    #[error("has an authPolicy of {0} bytes; it must be empty or a 32-byte SHA-256 digest")]
    AuthPolicy(usize),
    #[error(
        "has symmetric algorithm 0x{alg:04x} ({name}){detail}; AES-128 in CFB mode \
         (0x0006, 128, 0x0043) is required",
        name = alg_name(*alg)
    )]
    Symmetric { alg: u16, detail: String },
    #[error(
        "has scheme 0x{0:04x} ({name}); a storage key's scheme must be TPM_ALG_NULL (0x0010)",
        name = alg_name(*.0)
    )]
    Scheme(u16),
    #[error("has keyBits {0}; an RSA-2048 key is required")]
    KeyBits(u16),
    #[error("has exponent {0}, which is not a valid RSA public exponent; TPM keys use 0 (65537)")]
    Exponent(u32),
    #[error("has a modulus of {0} bytes; an RSA-2048 key has a 256-byte modulus")]
    ModulusLength(usize),
    #[error("has a modulus that is not a 2048-bit RSA modulus ({0})")]
    Modulus(&'static str),
    #[error(
        "the key to wrap is {0} bytes; a TPM HMAC key of {min} to {max} bytes is required",
        min = crate::keys::MIN_KEY_BYTES,
        max = crate::keys::MAX_KEY_BYTES
    )]
    IdentityKeyLength(usize),
    #[error("{0}")]
    Token(#[from] SasError),
    #[error("the token's signature does not match the key this server sent to the TPM")]
    WrongKey,
    #[error("a cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

/// The TPM algorithm identifiers that appear in keys, for messages.
fn alg_name(alg: u16) -> &'static str {
    match alg {
        0x0001 => "RSA",
        0x0004 => "SHA-1",
        0x0006 => "AES",
        0x0008 => "KEYEDHASH",
        0x000b => "SHA-256",
        0x000c => "SHA-384",
        0x000d => "SHA-512",
        0x0010 => "NULL",
        0x0012 => "SM3-256",
        0x0014 => "RSASSA",
        0x0015 => "RSAES",
        0x0016 => "RSAPSS",
        0x0017 => "OAEP",
        0x0018 => "ECDSA",
        0x0023 => "ECC",
        0x0025 => "SYMCIPHER",
        0x0026 => "CAMELLIA",
        0x0040 => "CTR",
        0x0041 => "OFB",
        0x0042 => "CBC",
        0x0043 => "CFB",
        0x0044 => "ECB",
        _ => "unknown",
    }
}
