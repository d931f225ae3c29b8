//! The activation blob: an HMAC key that only one TPM can import.
//!
//! What `TPM2_Duplicate` and `TPM2_MakeCredential` would produce on the
//! server's TPM in Microsoft's reference service, computed in software
//! (device protocol notes §5.5, TPM 2.0 Part 1 §23–24):
//!
//! - the identity key: a keyedHash HMAC-SHA256 object with an empty auth
//!   value, its `unique` bound to the key by SHA-256(seedValue ‖ key);
//! - the inner wrapper: its sensitive area encrypted with a fresh 16-byte
//!   AES-128-CFB key behind an integrity digest;
//! - the outer wrapper to the SRK: a seed sent with RSA-OAEP ("DUPLICATE"),
//!   from which KDFa derives the AES key and the HMAC key;
//! - the credential to the EK: the inner key, bound to the SRK's Name, under
//!   a second seed sent with RSA-OAEP ("IDENTITY").
//!
//! Six TPM "2B" items in the order every SDK reads them: `TPM2B_ID_OBJECT`,
//! `TPM2B_ENCRYPTED_SECRET`, `TPM2B_PRIVATE`, `TPM2B_ENCRYPTED_SECRET`,
//! `TPM2B_PUBLIC`, and an empty `TPM2B_DATA` that C# reads unconditionally.

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::{digest, hmac, rand};

use super::TpmError;
use super::kdf::kdfa;
use super::public::{
    RsaPublic, TPM_ALG_HMAC, TPM_ALG_KEYEDHASH, TPM_ALG_SHA256, attributes, name_of, put_sized,
};
use crate::keys;

/// The size of the key of a TPM challenge (the SDKs' HMAC keys are 32 bytes).
pub const CHALLENGE_KEY_LEN: usize = 32;

/// The C and C# SDKs import with AES-128-CFB: the inner key is 16 bytes.
pub(super) const INNER_KEY_LEN: usize = 16;
/// Seeds and obfuscation values are the size of a SHA-256 digest.
const SEED_LEN: usize = 32;
/// sign|noDA|userWithAuth; not fixedTPM/fixedParent, as it is imported.
const IDENTITY_ATTRIBUTES: u32 = attributes::SIGN | attributes::NO_DA | attributes::USER_WITH_AUTH;

/// A fresh random key for a TPM challenge.
pub fn challenge_key() -> Result<[u8; CHALLENGE_KEY_LEN], TpmError> {
    random()
}

/// A blob for a TPM the server will not vouch for (its EK is not enrolled):
/// a real blob around a key nobody keeps. Over AMQP the SDKs only report a
/// refusal once they have a whole challenge to answer; with this one they
/// sign a token the server then refuses at once, instead of waiting on a
/// challenge that never comes.
pub fn decoy_blob(ek: &RsaPublic, srk: &RsaPublic) -> Result<Vec<u8>, TpmError> {
    activation_blob(ek, srk, &challenge_key()?)
}

/// Builds the activation blob that delivers `identity_key` into the TPM whose
/// endorsement key is `ek`, under its storage root key `srk`.
pub fn activation_blob(
    ek: &RsaPublic,
    srk: &RsaPublic,
    identity_key: &[u8],
) -> Result<Vec<u8>, TpmError> {
    // The sizes of hub device keys, all of which a TPM takes as an HMAC key.
    if !(keys::MIN_KEY_BYTES..=keys::MAX_KEY_BYTES).contains(&identity_key.len()) {
        return Err(TpmError::IdentityKeyLength(identity_key.len()));
    }

    // A. The identity key's public and sensitive areas.
    let obfuscation: [u8; SEED_LEN] = random()?;
    let mut binding = digest::Context::new(&digest::SHA256);
    binding.update(&obfuscation);
    binding.update(identity_key);
    let mut id_public = Vec::with_capacity(48);
    id_public.extend_from_slice(&TPM_ALG_KEYEDHASH.to_be_bytes());
    id_public.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    id_public.extend_from_slice(&IDENTITY_ATTRIBUTES.to_be_bytes());
    put_sized(&mut id_public, &[])?; // authPolicy
    id_public.extend_from_slice(&TPM_ALG_HMAC.to_be_bytes());
    id_public.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    put_sized(&mut id_public, binding.finish().as_ref())?; // unique
    let id_name = name_of(&id_public);

    let mut sensitive = Vec::with_capacity(8 + SEED_LEN + identity_key.len());
    sensitive.extend_from_slice(&TPM_ALG_KEYEDHASH.to_be_bytes());
    put_sized(&mut sensitive, &[])?; // authValue: devices use an empty password
    put_sized(&mut sensitive, &obfuscation)?; // seedValue
    put_sized(&mut sensitive, identity_key)?;
    let mut encoded_sensitive = Vec::with_capacity(sensitive.len() + 2);
    put_sized(&mut encoded_sensitive, &sensitive)?;

    // B. The inner wrapper.
    let inner_key: [u8; INNER_KEY_LEN] = random()?;
    let mut integrity = digest::Context::new(&digest::SHA256);
    integrity.update(&encoded_sensitive);
    integrity.update(&id_name);
    let mut wrapped = Vec::with_capacity(34 + encoded_sensitive.len());
    put_sized(&mut wrapped, integrity.finish().as_ref())?;
    wrapped.extend_from_slice(&encoded_sensitive);
    aes_cfb(&inner_key, &mut wrapped)?;

    // C. The outer wrapper, to the SRK.
    let duplication_seed: [u8; SEED_LEN] = random()?;
    let encrypted_duplication_seed = srk.encrypt(&duplication_seed, b"DUPLICATE\0")?;
    let duplicate = outer_wrap(&duplication_seed, &id_name, wrapped)?;

    // D. The credential (the inner key) to the EK, bound to the SRK's Name:
    // the device activates it with activateHandle = SRK.
    let seed: [u8; SEED_LEN] = random()?;
    let encrypted_seed = ek.encrypt(&seed, b"IDENTITY\0")?;
    let srk_name = srk.name();
    let mut identity = Vec::with_capacity(2 + INNER_KEY_LEN);
    put_sized(&mut identity, &inner_key)?;
    let id_object = outer_wrap(&seed, &srk_name, identity)?;

    // E. The six items.
    let mut blob = Vec::with_capacity(
        12 + id_object.len()
            + encrypted_seed.len()
            + duplicate.len()
            + encrypted_duplication_seed.len()
            + id_public.len(),
    );
    for item in [
        &id_object[..],
        &encrypted_seed,
        &duplicate,
        &encrypted_duplication_seed,
        &id_public,
        &[],
    ] {
        put_sized(&mut blob, item)?;
    }
    Ok(blob)
}

/// The outer wrapper of a credential and of a duplicate alike: `plain`
/// encrypted with the seed's storage key, after the HMAC (integrity key) of
/// the ciphertext and `name`, as a sized buffer.
fn outer_wrap(seed: &[u8], name: &[u8], mut plain: Vec<u8>) -> Result<Vec<u8>, TpmError> {
    aes_cfb(&kdfa(seed, "STORAGE", name, &[], 128), &mut plain)?;
    let integrity = hmac_sha256(&kdfa(seed, "INTEGRITY", &[], &[], 256), &[&plain, name]);
    let mut wrapped = Vec::with_capacity(34 + plain.len());
    put_sized(&mut wrapped, &integrity)?;
    wrapped.extend_from_slice(&plain);
    Ok(wrapped)
}

fn random<const N: usize>() -> Result<[u8; N], TpmError> {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes).map_err(|_| TpmError::Crypto("the random number generator"))?;
    Ok(bytes)
}

/// AES-128 in CFB mode with an all-zero IV, in place: each key here encrypts
/// one message only, which is what makes the fixed IV safe (and what the TPM does).
fn aes_cfb(key: &[u8], data: &mut [u8]) -> Result<(), TpmError> {
    let key = UnboundCipherKey::new(&AES_128, key)
        .and_then(EncryptingKey::cfb128)
        .map_err(|_| TpmError::Crypto("AES-128-CFB key"))?;
    key.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from([0u8; 16])))
        .map_err(|_| TpmError::Crypto("AES-128-CFB encryption"))?;
    Ok(())
}

pub(super) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    //! The blob opened by the software TPM of [`super::super::device`]; the
    //! test against a real software TPM is `tests/tpm.rs`.

    use std::sync::OnceLock;

    use super::super::device::{OpenError, SoftTpm, items};
    use super::*;

    fn tpm() -> &'static SoftTpm {
        static TPM: OnceLock<SoftTpm> = OnceLock::new();
        TPM.get_or_init(|| SoftTpm::generate().expect("a software TPM"))
    }

    #[test]
    fn the_tpm_recovers_the_key_and_the_items_have_the_sdk_sizes() {
        let tpm = tpm();
        for (len, total) in [(32, 766), (64, 798), (16, 750)] {
            let key: Vec<u8> = (0..len as u8).collect();
            let blob =
                activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &key).unwrap();
            assert_eq!(blob.len(), total, "{len}-byte key");
            let sizes: Vec<usize> = items(&blob).unwrap().iter().map(|i| i.len() + 2).collect();
            assert_eq!(sizes, [54, 258, 112 + len, 258, 50, 2], "{len}-byte key");
            assert_eq!(tpm.open(&blob).unwrap(), key);
        }
        let challenge = challenge_key().unwrap();
        let blob =
            activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &challenge).unwrap();
        assert_eq!(tpm.open(&blob).unwrap(), challenge);
    }

    #[test]
    fn the_identity_key_has_the_public_area_the_sdks_import() {
        let tpm = tpm();
        let blob =
            activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &[7; 32]).unwrap();
        let public = items(&blob).unwrap()[4];
        // KEYEDHASH, SHA-256, sign|noDA|userWithAuth, no policy, HMAC-SHA256, 32-byte unique.
        assert_eq!(
            public[..16],
            [
                0x00, 0x08, 0x00, 0x0b, 0x00, 0x04, 0x04, 0x40, 0x00, 0x00, 0x00, 0x05, 0x00, 0x0b,
                0x00, 0x20
            ]
        );
    }

    #[test]
    fn a_tpm_kept_in_a_file_opens_what_was_made_for_it() {
        let tpm = tpm();
        let (ek, srk) = tpm.to_pkcs8().unwrap();
        let again = SoftTpm::from_pkcs8(&ek, &srk).unwrap();
        assert_eq!(again.endorsement_key(), tpm.endorsement_key());
        let blob =
            activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &[9; 32]).unwrap();
        assert_eq!(again.open(&blob).unwrap(), [9; 32]);
    }

    #[test]
    fn every_blob_is_fresh() {
        let tpm = tpm();
        let a = activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &[1; 32]).unwrap();
        let b = activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &[1; 32]).unwrap();
        assert_ne!(a, b);
        assert_ne!(challenge_key().unwrap(), challenge_key().unwrap());
    }

    #[test]
    fn another_tpm_cannot_open_it() {
        let tpm = tpm();
        // Keys swapped: the credential is for the SRK's key, the duplicate for the EK's.
        let swapped =
            activation_blob(tpm.storage_root_key(), tpm.endorsement_key(), &[2; 32]).unwrap();
        assert_eq!(tpm.open(&swapped), Err(OpenError("OAEP decryption failed")));
        // A flipped bit anywhere in the wrapped key is caught by an integrity check.
        let blob =
            activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &[3; 32]).unwrap();
        for (at, check) in [(40, "credential integrity"), (400, "outer integrity")] {
            let mut bad = blob.clone();
            bad[at] ^= 1;
            assert_eq!(tpm.open(&bad), Err(OpenError(check)), "byte {at}");
        }
    }

    #[test]
    fn key_sizes_outside_hub_keys_are_refused() {
        let tpm = tpm();
        for len in [0, 15, 65, 300] {
            assert_eq!(
                activation_blob(tpm.endorsement_key(), tpm.storage_root_key(), &vec![0; len]),
                Err(TpmError::IdentityKeyLength(len))
            );
        }
    }
}
