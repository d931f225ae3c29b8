//! Secrets at rest: AES-256-GCM with a random 96-bit nonce, the record's
//! identity as associated data (a ciphertext cannot be moved to another row),
//! and the ID of the master key beside the ciphertext so keys can rotate.
//!
//! Sealed form: `OR1` ‖ key-ID length (1 byte) ‖ key ID ‖ nonce (12) ‖ ciphertext ‖ tag (16).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine as _, engine::general_purpose::STANDARD};

const MAGIC: &[u8] = b"OR1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is damaged or not a sealed value")]
    Malformed,
    #[error("sealed with master key '{0}', which is not in the key ring; restore that key file")]
    UnknownKey(String),
    #[error("the sealed value failed authentication (wrong key, or moved from another record)")]
    Tampered,
    #[error("master key: {0}")]
    Key(String),
}

/// The master key ring.
pub struct Sealer {
    active: String,
    keys: HashMap<String, LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("active", &self.active)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The ID of a key: the first 8 bytes of its SHA-256, hex.
pub fn key_id(key: &[u8]) -> String {
    digest::digest(&digest::SHA256, key).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Sealer {
    /// A ring of 32-byte keys; `active` (a key ID) seals, all of them open.
    pub fn new(active_key: &[u8], others: &[Vec<u8>]) -> Result<Self, SealError> {
        let mut keys = HashMap::new();
        for key in std::iter::once(active_key).chain(others.iter().map(Vec::as_slice)) {
            let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| {
                SealError::Key(format!(
                    "a master key must be 32 bytes, this one is {}",
                    key.len()
                ))
            })?;
            keys.insert(key_id(key), LessSafeKey::new(unbound));
        }
        Ok(Self {
            active: key_id(active_key),
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Loads the ring from `dir` (files `<id>.key` holding base64 keys, and
    /// `active` naming the sealing key), creating a first key if there is none.
    pub fn load_or_create(dir: &Path) -> io::Result<Self> {
        onramp_files::own_dir(dir)?;
        let active_file = dir.join("active");
        if !active_file.exists() {
            let mut key = vec![0u8; 32];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| io::Error::other("the system random number generator failed"))?;
            let id = key_id(&key);
            onramp_files::write(
                &dir.join(format!("{id}.key")),
                STANDARD.encode(&key).as_bytes(),
            )?;
            onramp_files::write(&active_file, id.as_bytes())?;
        }
        onramp_files::restrict(&active_file)?;
        let active = fs::read_to_string(&active_file)?.trim().to_owned();
        let mut active_key = None;
        let mut others = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("key") {
                continue;
            }
            onramp_files::restrict(&path)?;
            let text = fs::read_to_string(&path)?;
            let key = STANDARD.decode(text.trim()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a base64 master key", path.display()),
                )
            })?;
            if key_id(&key) == active {
                active_key = Some(key);
            } else {
                others.push(key);
            }
        }
        let active_key = active_key.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the active master key '{active}' named in {} has no key file in that folder",
                    active_file.display()
                ),
            )
        })?;
        Self::new(&active_key, &others)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// A key given as base64 (e.g. from an environment variable), alone in its ring.
    pub fn from_base64(key: &str) -> Result<Self, SealError> {
        let key = STANDARD
            .decode(key.trim())
            .map_err(|_| SealError::Key("the master key is not base64".into()))?;
        Self::new(&key, &[])
    }

    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Vec<u8> {
        let key = &self.keys[&self.active];
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG failing is not recoverable; sealing with a fixed nonce would be worse.
        self.rng
            .fill(&mut nonce)
            .expect("the system random number generator failed");
        let mut out = Vec::with_capacity(
            MAGIC.len() + 1 + self.active.len() + NONCE_LEN + plaintext.len() + 16,
        );
        out.extend_from_slice(MAGIC);
        out.push(self.active.len() as u8);
        out.extend_from_slice(self.active.as_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut body,
        )
        .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        out.extend_from_slice(&body);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(SealError::Malformed)?;
        let (&id_len, rest) = rest.split_first().ok_or(SealError::Malformed)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + 16 {
            return Err(SealError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let id = std::str::from_utf8(id).map_err(|_| SealError::Malformed)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| SealError::Tampered)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_binds_to_the_record() {
        let s = Sealer::new(&[7u8; 32], &[]).unwrap();
        let sealed = s.seal(b"secret key", "enrollment:a/b");
        assert!(!sealed.windows(10).any(|w| w == b"secret key"));
        assert_eq!(s.open(&sealed, "enrollment:a/b").unwrap(), b"secret key");
        assert!(matches!(
            s.open(&sealed, "enrollment:a/c"),
            Err(SealError::Tampered)
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            s.open(&flipped, "enrollment:a/b"),
            Err(SealError::Tampered)
        ));
        assert!(matches!(
            s.open(b"nonsense", "x"),
            Err(SealError::Malformed)
        ));
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = Sealer::new(&[1u8; 32], &[]).unwrap();
        let sealed = old.seal(b"v", "r");
        let rotated = Sealer::new(&[2u8; 32], &[vec![1u8; 32]]).unwrap();
        assert_eq!(rotated.open(&sealed, "r").unwrap(), b"v");
        let fresh = rotated.seal(b"v", "r");
        assert!(matches!(
            old.open(&fresh, "r"),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn key_ring_on_disk_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::load_or_create(dir.path()).unwrap();
        let sealed = a.seal(b"x", "r");
        let b = Sealer::load_or_create(dir.path()).unwrap();
        assert_eq!(a.active_key_id(), b.active_key_id());
        assert_eq!(b.open(&sealed, "r").unwrap(), b"x");
    }
}
