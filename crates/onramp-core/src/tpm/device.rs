//! A TPM's side of the exchange, in software: what a device's TPM does with
//! an activation blob (ActivateCredential with the EK, then Import under the
//! SRK), checking every integrity value as a TPM does. It serves Onramp's
//! device simulator and load generator, and the blob's own tests; the server
//! never uses it. The judge of the real thing is a real TPM (`tests/tpm.rs`).

use aws_lc_rs::cipher::{AES_128, DecryptingKey, DecryptionContext, UnboundCipherKey};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::KeyPair as _;

use super::TpmError;
use super::blob::{INNER_KEY_LEN, hmac_sha256};
use super::kdf::kdfa;
use super::public::{RsaPublic, TPM_ALG_KEYEDHASH, name_of};

/// Why a blob did not open: the check a TPM would fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the activation blob does not open: {0}")]
pub struct OpenError(pub &'static str);

/// An endorsement key and a storage root key, RSA-2048 with the SDKs'
/// templates, whose private halves never leave this value.
pub struct SoftTpm {
    ek: PrivateDecryptingKey,
    srk: PrivateDecryptingKey,
    ek_public: RsaPublic,
    srk_public: RsaPublic,
}

impl std::fmt::Debug for SoftTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private keys never reach a log.
        f.debug_struct("SoftTpm")
            .field("registration_id", &self.ek_public.registration_id())
            .finish_non_exhaustive()
    }
}

impl SoftTpm {
    /// A TPM with fresh keys (two RSA-2048 key generations: tens of
    /// milliseconds).
    pub fn generate() -> Result<Self, TpmError> {
        let failed = |_| TpmError::Crypto("RSA-2048 key generation");
        let ek = PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(failed)?;
        let srk = PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(failed)?;
        Self::from_keys(ek, srk)
    }

    /// The TPM whose private keys are these (PKCS#8 DER), as
    /// [`SoftTpm::to_pkcs8`] wrote them.
    pub fn from_pkcs8(ek: &[u8], srk: &[u8]) -> Result<Self, TpmError> {
        let failed = |_| TpmError::Crypto("an RSA private key (PKCS#8)");
        Self::from_keys(
            PrivateDecryptingKey::from_pkcs8(ek).map_err(failed)?,
            PrivateDecryptingKey::from_pkcs8(srk).map_err(failed)?,
        )
    }

    /// The private keys (PKCS#8 DER), EK then SRK: for a simulated device
    /// that keeps its TPM in a file.
    pub fn to_pkcs8(&self) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let der = |key: &PrivateDecryptingKey| {
            key.as_der()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| TpmError::Crypto("an RSA private key (PKCS#8)"))
        };
        Ok((der(&self.ek)?, der(&self.srk)?))
    }

    fn from_keys(ek: PrivateDecryptingKey, srk: PrivateDecryptingKey) -> Result<Self, TpmError> {
        let ek_public = RsaPublic::endorsement_key(&modulus_of(&ek)?)?;
        let srk_public = RsaPublic::storage_root_key(&modulus_of(&srk)?)?;
        Ok(Self {
            ek,
            srk,
            ek_public,
            srk_public,
        })
    }

    pub fn endorsement_key(&self) -> &RsaPublic {
        &self.ek_public
    }

    pub fn storage_root_key(&self) -> &RsaPublic {
        &self.srk_public
    }

    /// ActivateCredential, then Import: the HMAC key the blob delivers.
    pub fn open(&self, blob: &[u8]) -> Result<Vec<u8>, OpenError> {
        let items = items(blob)?;
        let [id_object, secret, duplicate, sym_seed, public, _data] = items[..] else {
            return Err(OpenError("an activation blob has six items"));
        };
        // ActivateCredential(activateHandle = SRK, keyHandle = EK).
        let seed = oaep_decrypt(&self.ek, secret, b"IDENTITY\0")?;
        let srk_name = self.srk_public.name();
        let identity = outer_unwrap(&seed, &srk_name, id_object, "credential integrity")?;
        let (inner_key, rest) = split_sized(&identity)?;
        if !rest.is_empty() || inner_key.len() != INNER_KEY_LEN {
            return Err(OpenError("credential size"));
        }
        // Import(parent = SRK, encryptionKey = the credential).
        let dup_seed = oaep_decrypt(&self.srk, sym_seed, b"DUPLICATE\0")?;
        let id_name = name_of(public);
        let wrapped = outer_unwrap(&dup_seed, &id_name, duplicate, "outer integrity")?;
        let plain = cfb_decrypt(inner_key, &wrapped)?;
        let (inner_integrity, encoded_sensitive) = split_sized(&plain)?;
        let digest = digest::digest(&digest::SHA256, &[encoded_sensitive, &id_name[..]].concat());
        if inner_integrity != digest.as_ref() {
            return Err(OpenError("inner integrity"));
        }
        let (sensitive, _) = split_sized(encoded_sensitive)?;
        if sensitive.get(..2) != Some(&TPM_ALG_KEYEDHASH.to_be_bytes()[..]) {
            return Err(OpenError("the sensitive area is not a keyed hash"));
        }
        let (auth, rest) = split_sized(&sensitive[2..])?;
        if !auth.is_empty() {
            return Err(OpenError("devices sign with an empty auth value"));
        }
        let (obfuscation, rest) = split_sized(rest)?;
        let (key, _) = split_sized(rest)?;
        // A TPM refuses a public area that does not bind the key.
        let unique = digest::digest(&digest::SHA256, &[obfuscation, key].concat());
        if public.get(public.len().saturating_sub(32)..) != Some(unique.as_ref()) {
            return Err(OpenError("the public area does not bind the key"));
        }
        Ok(key.to_vec())
    }
}

fn modulus_of(key: &PrivateDecryptingKey) -> Result<Vec<u8>, TpmError> {
    let failed = TpmError::Crypto("an RSA-2048 key's modulus");
    let pkcs8 = key.as_der().map_err(|_| failed.clone())?;
    let pair = KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| failed)?;
    Ok(pair
        .public_key()
        .modulus()
        .big_endian_without_leading_zero()
        .to_vec())
}

/// The blob's TPM "2B" items, without their size fields.
pub(super) fn items(blob: &[u8]) -> Result<Vec<&[u8]>, OpenError> {
    let mut rest = blob;
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (item, after) = split_sized(rest)?;
        items.push(item);
        rest = after;
    }
    Ok(items)
}

/// Opens an outer wrapper (a credential's or a duplicate's): checks the
/// HMAC with the seed's integrity key over the ciphertext and `name`
/// (`what` names a mismatch), then decrypts with its storage key.
fn outer_unwrap(
    seed: &[u8],
    name: &[u8],
    wrapped: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, OpenError> {
    let (integrity, encrypted) = split_sized(wrapped)?;
    let expected = hmac_sha256(&kdfa(seed, "INTEGRITY", &[], &[], 256), &[encrypted, name]);
    if integrity != expected {
        return Err(OpenError(what));
    }
    cfb_decrypt(&kdfa(seed, "STORAGE", name, &[], 128), encrypted)
}

fn split_sized(bytes: &[u8]) -> Result<(&[u8], &[u8]), OpenError> {
    let short = OpenError("a sized item runs past its container");
    let size = bytes.get(..2).ok_or(short.clone())?;
    let len = usize::from(u16::from_be_bytes([size[0], size[1]]));
    let body = bytes.get(2..2 + len).ok_or(short)?;
    Ok((body, &bytes[2 + len..]))
}

fn oaep_decrypt(
    key: &PrivateDecryptingKey,
    ciphertext: &[u8],
    label: &[u8],
) -> Result<Vec<u8>, OpenError> {
    let failed = OpenError("OAEP decryption failed");
    let key = OaepPrivateDecryptingKey::new(key.clone()).map_err(|_| failed.clone())?;
    let mut out = vec![0u8; key.min_output_size()];
    let plain = key
        .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, Some(label))
        .map_err(|_| failed)?;
    Ok(plain.to_vec())
}

fn cfb_decrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>, OpenError> {
    let failed = |_| OpenError("AES-128-CFB decryption");
    let mut data = data.to_vec();
    DecryptingKey::cfb128(UnboundCipherKey::new(&AES_128, key).map_err(failed)?)
        .map_err(failed)?
        .decrypt(
            &mut data,
            DecryptionContext::Iv128(FixedLength::from([0u8; 16])),
        )
        .map_err(failed)?;
    Ok(data)
}
