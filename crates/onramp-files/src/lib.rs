//! Files and folders that only their owner can read: a data directory holds
//! master keys, sealed secrets and registration records, so nothing in it is
//! created readable by others, whatever the process's umask (a umask can
//! only take permissions away from the modes asked for here).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Creates `dir` (and missing parents) as 0700. A directory that exists is
/// left as it is: it may be one the operator made for Onramp.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates `dir` as 0700, or takes away what others may do in it when it
/// exists: for the folders Onramp owns (`keys`, `tls`).
pub fn own_dir(dir: &Path) -> io::Result<()> {
    create_dir(dir)?;
    restrict(dir)
}

/// Writes `bytes` to `path`, created (or truncated) as 0600.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // A file that existed keeps its mode through open(2): take it back.
    restrict_file(&file)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `path` empty as 0600 when it does not exist, so that whatever is
/// written there later (SQLite gives its `-wal` and `-shm` files the mode of
/// the database file) is private too; restricts it when it does.
pub fn touch(path: &Path) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    restrict_file(&options.open(path)?)
}

/// Takes away every permission of group and others from an existing path
/// (a file or folder left by an earlier version); a missing path is fine.
pub fn restrict(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = match fs::metadata(path) {
            Ok(meta) => meta.permissions().mode(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn restrict_file(file: &fs::File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_private_and_loose_ones_restricted() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&temp.path().join("a")), 0o700);

        let file = dir.join("f");
        fs::write(&file, b"old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        write(&file, b"new").unwrap();
        assert_eq!(
            (mode(&file), fs::read(&file).unwrap()),
            (0o600, b"new".to_vec())
        );

        let db = dir.join("x.db");
        touch(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        fs::set_permissions(&db, fs::Permissions::from_mode(0o664)).unwrap();
        touch(&db).unwrap();
        assert_eq!(mode(&db), 0o600);

        let loose = temp.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&loose).unwrap();
        assert_eq!(
            mode(&loose),
            0o755,
            "create_dir leaves an existing folder alone"
        );
        own_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
        restrict(&temp.path().join("missing")).unwrap();
    }
}
