//! Secrets at rest: AES-256-GCM with a random 96-bit nonce, the record's
//! identity as associated data (a ciphertext cannot be moved to another row),
//! and the ID of the master key beside the ciphertext so keys can rotate.
//!
//! Sealed form: `OR1` ‖ key-ID length (1 byte) ‖ key ID ‖ nonce (12) ‖ ciphertext ‖ tag (16).
//!
//! A ring read from a folder (`keyring`) follows that folder while it
//! serves: a new active key is taken up within [`RELOAD_INTERVAL`] of the
//! change, and a value sealed under a key the ring does not hold yet makes
//! it read the folder again, so `onramp keys rotate` works while servers run.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::keyring;

const MAGIC: &[u8] = b"OR1";

/// How long a ring read from a folder goes before it looks for a new active key.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

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

/// The keys of a ring and the one that seals.
struct Ring {
    active: String,
    keys: HashMap<String, LessSafeKey>,
}

impl Ring {
    fn new(active_key: &[u8], others: &[Vec<u8>]) -> Result<Self, SealError> {
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
        })
    }
}

/// The master key ring.
pub struct Sealer {
    ring: RwLock<Ring>,
    /// The folder the ring was read from, followed while it serves.
    dir: Option<PathBuf>,
    checked: Mutex<Instant>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("active", &self.active_key_id())
            .field("keys", &self.key_ids().len())
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

/// The ID of the key a value was sealed under, read from its envelope
/// (which may be cut short after the ID); `None` if it is no sealed value.
pub fn sealed_key_id(sealed: &[u8]) -> Option<&str> {
    let rest = sealed.strip_prefix(MAGIC)?;
    let (&id_len, rest) = rest.split_first()?;
    let id = rest.get(..usize::from(id_len))?;
    std::str::from_utf8(id).ok()
}

/// Bytes of a sealed value that hold its key ID, for stores that read only
/// that much of each value when counting (key IDs are 16 characters).
pub const KEY_ID_PREFIX: usize = MAGIC.len() + 1 + 16;

impl Sealer {
    /// A ring of 32-byte keys; `active` (a key ID) seals, all of them open.
    pub fn new(active_key: &[u8], others: &[Vec<u8>]) -> Result<Self, SealError> {
        Ok(Self::with_ring(Ring::new(active_key, others)?, None))
    }

    fn with_ring(ring: Ring, dir: Option<PathBuf>) -> Self {
        Self {
            ring: RwLock::new(ring),
            dir,
            checked: Mutex::new(Instant::now()),
            rng: SystemRandom::new(),
        }
    }

    /// Loads the ring from `dir` (files `<id>.key` holding base64 keys, and
    /// `active` naming the sealing key), creating a first key if there is
    /// none; the ring follows the folder from then on.
    pub fn load_or_create(dir: &Path) -> io::Result<Self> {
        keyring::create_if_missing(dir)?;
        let ring = read_ring(dir)?;
        Ok(Self::with_ring(ring, Some(dir.to_owned())))
    }

    /// Keys given as base64 (e.g. from an environment variable), separated
    /// by commas: the first seals, all of them open.
    pub fn from_base64(keys: &str) -> Result<Self, SealError> {
        let mut decoded = Vec::new();
        for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            decoded.push(
                STANDARD
                    .decode(key)
                    .map_err(|_| SealError::Key("a master key is not base64".into()))?,
            );
        }
        let Some((active, others)) = decoded.split_first() else {
            return Err(SealError::Key("no master key given".into()));
        };
        Self::new(active, others)
    }

    /// The folder the ring follows, when it was read from one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn active_key_id(&self) -> String {
        self.read_ring(|ring| ring.active.clone())
    }

    /// The IDs of every key in the ring, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids = self.read_ring(|ring| ring.keys.keys().cloned().collect::<Vec<_>>());
        ids.sort();
        ids
    }

    /// Reads the ring's folder again now (when it has one).
    pub fn reload(&self) -> io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let fresh = read_ring(dir)?;
        if let Ok(mut checked) = self.checked.lock() {
            *checked = Instant::now();
        }
        match self.ring.write() {
            Ok(mut ring) => *ring = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn read_ring<R>(&self, f: impl FnOnce(&Ring) -> R) -> R {
        match self.ring.read() {
            Ok(ring) => f(&ring),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Takes up a new active key named in the folder, at most once per
    /// [`RELOAD_INTERVAL`]. A folder that cannot be read keeps the ring as
    /// it is (its keys still open and seal what they did).
    fn follow_folder(&self) {
        let Some(dir) = &self.dir else { return };
        {
            // Whoever holds the lock is looking already.
            let Ok(mut checked) = self.checked.try_lock() else {
                return;
            };
            if checked.elapsed() < RELOAD_INTERVAL {
                return;
            }
            *checked = Instant::now();
        }
        match keyring::active_id(dir) {
            Ok(id) if id != self.active_key_id() => {
                if let Err(e) = self.reload() {
                    tracing::warn!(
                        "the master key ring in {} changed and could not be read again: {e}",
                        dir.display()
                    );
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "cannot read the active master key in {}: {e}",
                dir.display()
            ),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Vec<u8> {
        self.follow_folder();
        let ring = match self.ring.read() {
            Ok(ring) => ring,
            Err(poisoned) => poisoned.into_inner(),
        };
        let active = ring.active.as_str();
        let key = &ring.keys[active];
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG failing is not recoverable; sealing with a fixed nonce would be worse.
        self.rng
            .fill(&mut nonce)
            .expect("the system random number generator failed");
        let mut out =
            Vec::with_capacity(MAGIC.len() + 1 + active.len() + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(active.len() as u8);
        out.extend_from_slice(active.as_bytes());
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
        match self.open_with_ring(sealed, aad) {
            // A key added to the folder since the ring was read (a rotation
            // under way in another process).
            Err(SealError::UnknownKey(_)) if self.dir.is_some() && self.reload().is_ok() => {
                self.open_with_ring(sealed, aad)
            }
            result => result,
        }
    }

    fn open_with_ring(&self, sealed: &[u8], aad: &str) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(SealError::Malformed)?;
        let (&id_len, rest) = rest.split_first().ok_or(SealError::Malformed)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + 16 {
            return Err(SealError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let id = std::str::from_utf8(id).map_err(|_| SealError::Malformed)?;
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut body = body.to_vec();
        self.read_ring(|ring| {
            let key = ring
                .keys
                .get(id)
                .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
            let plain = key
                .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
                .map_err(|_| SealError::Tampered)?;
            Ok(plain.to_vec())
        })
    }
}

/// The ring in `dir`: every key file, the one `active` names sealing.
fn read_ring(dir: &Path) -> io::Result<Ring> {
    let active = keyring::active_id(dir)?;
    let mut active_key = None;
    let mut others = Vec::new();
    for (id, key) in keyring::read_keys(dir)? {
        if id == active {
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
                dir.join(keyring::ACTIVE).display()
            ),
        )
    })?;
    Ring::new(&active_key, &others)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
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
