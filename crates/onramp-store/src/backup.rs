//! Online copies of a database file. SQLite's backup API copies the pages in
//! steps and lets writers in between; a write that lands during the copy
//! restarts it, so the copy is the database as it was at one moment.

use std::path::Path;
use std::time::Duration;

use onramp_core::ports::StoreError;
use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

/// Pages copied per step; between steps writers get the database.
const PAGES_PER_STEP: i32 = 256;
const PAUSE: Duration = Duration::from_millis(2);

/// Copies the database at `from` (served or not) into `to`, which is created
/// private or overwritten, and checks the copy's integrity.
pub fn copy_database(from: &Path, to: &Path) -> Result<(), StoreError> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Unavailable(format!("{what}: {e}"));
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| failed(&format!("opening {}", from.display()), &e))?;
    source
        .busy_timeout(Duration::from_secs(30))
        .map_err(|e| failed("setting a busy timeout", &e))?;
    onramp_files::touch(to).map_err(|e| failed(&format!("creating {}", to.display()), &e))?;
    let mut target =
        Connection::open(to).map_err(|e| failed(&format!("opening {}", to.display()), &e))?;
    Backup::new(&source, &mut target)
        .and_then(|backup| backup.run_to_completion(PAGES_PER_STEP, PAUSE, None))
        .map_err(|e| failed(&format!("copying {}", from.display()), &e))?;
    let check: String = target
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| failed("checking the copy", &e))?;
    if check != "ok" {
        return Err(StoreError::Corrupt(format!(
            "the copy of {} fails its integrity check: {check}",
            from.display()
        )));
    }
    Ok(())
}
