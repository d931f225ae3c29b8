//! The master key ring on disk: a folder of `<id>.key` files (each a base64
//! 32-byte key) and `active`, naming the key that seals. Keys are added,
//! made active and removed here; [`crate::seal::Sealer`] reads the folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::seal::key_id;

/// The file naming the active key.
pub const ACTIVE: &str = "active";

fn key_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.key"))
}

/// Makes the folder private and, when it names no active key yet, gives it
/// a first key.
pub fn create_if_missing(dir: &Path) -> io::Result<()> {
    onramp_files::own_dir(dir)?;
    if !dir.join(ACTIVE).exists() {
        let id = add(dir)?;
        activate(dir, &id)?;
    }
    onramp_files::restrict(&dir.join(ACTIVE))
}

/// A new random key written to the folder (not yet active); its ID.
pub fn add(dir: &Path) -> io::Result<String> {
    let mut key = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| io::Error::other("the system random number generator failed"))?;
    let id = key_id(&key);
    onramp_files::write(&key_file(dir, &id), STANDARD.encode(&key).as_bytes())?;
    Ok(id)
}

/// Makes key `id` (whose file must be there) the one that seals. The
/// switch is one rename, so a reader sees the old name or the new, never
/// a half-written one.
pub fn activate(dir: &Path, id: &str) -> io::Result<()> {
    if !key_file(dir, id).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no key file {} to make active", key_file(dir, id).display()),
        ));
    }
    let next = dir.join("active.next");
    onramp_files::write(&next, id.as_bytes())?;
    fs::rename(&next, dir.join(ACTIVE))?;
    fs::File::open(dir)?.sync_all()
}

/// Removes key `id` from the folder; the active key cannot be removed.
pub fn remove(dir: &Path, id: &str) -> io::Result<()> {
    if active_id(dir)? == id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{id}' is the active master key: rotate to a new key before retiring it"),
        ));
    }
    fs::remove_file(key_file(dir, id)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("removing {}: {e}", key_file(dir, id).display()),
        )
    })?;
    fs::File::open(dir)?.sync_all()
}

/// The ID the folder's `active` file names.
pub fn active_id(dir: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(dir.join(ACTIVE))?.trim().to_owned())
}

/// Every key in the folder, with its ID.
pub fn read_keys(dir: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut keys = Vec::new();
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
        keys.push((key_id(&key), key));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::seal::Sealer;

    #[test]
    fn a_ring_follows_its_folder_through_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let serving = Sealer::load_or_create(dir.path()).unwrap();
        let old = serving.active_key_id();
        let before = serving.seal(b"v", "r");

        // Another process adds a key and makes it active.
        let new = add(dir.path()).unwrap();
        activate(dir.path(), &new).unwrap();
        let rotating = Sealer::load_or_create(dir.path()).unwrap();
        let after = rotating.seal(b"v", "r");

        // The serving ring opens what the rotation sealed, and seals under
        // the new key once it looked again.
        assert_eq!(serving.open(&after, "r").unwrap(), b"v");
        assert_eq!(serving.active_key_id(), new);
        assert_eq!(rotating.open(&before, "r").unwrap(), b"v");

        // The active key cannot go; the old one can, and then opens nothing.
        assert!(remove(dir.path(), &new).is_err());
        remove(dir.path(), &old).unwrap();
        let fresh = Sealer::load_or_create(dir.path()).unwrap();
        assert_eq!(fresh.key_ids(), vec![new]);
        assert!(fresh.open(&before, "r").is_err());
    }
}
