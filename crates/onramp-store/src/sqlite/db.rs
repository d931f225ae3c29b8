//! SQLite connections on their own threads: one writer that commits jobs in
//! groups (one fsync for many registrations under load, none lost: a caller
//! hears back only after the commit), and a few readers.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use onramp_core::ports::StoreError;

use crate::record::missing_service;
use rusqlite::Connection;
use tokio::sync::oneshot;

/// Most jobs committed in one transaction.
const MAX_GROUP: usize = 256;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs a job inside the open transaction, or reports why there is none.
type WriteJob = Box<dyn FnOnce(Result<&Connection, StoreError>) -> Completion + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: survives power loss (the default).
    Full,
    /// fsync at checkpoints only: survives a crash of Onramp, not of the machine.
    Normal,
}

pub struct Db {
    writer: mpsc::Sender<WriteJob>,
    readers: mpsc::Sender<ReadJob>,
}

pub fn sql_error(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("SQLite: {e}"))
}

/// [`sql_error`] for a write under `service`, where a broken foreign key
/// means the service is missing.
pub(super) fn sql_error_in(service: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            missing_service(service)
        }
        other => sql_error(other),
    }
}

fn configure(conn: &Connection, durability: Durability, read_only: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that do not depend on bound values: otherwise SQLite prepares
    // cached statements again after their values are bound (a bound
    // `LIMIT ?`, as in the enrollment-group pages, is one trigger), which
    // showed as a tenth of the instructions of a registration.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

impl Db {
    /// Opens (or creates) the database at `path`, runs `migrate` on the
    /// writer connection, then starts the threads.
    pub fn open(
        path: &Path,
        readers: usize,
        durability: Durability,
        migrate: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<Self, StoreError> {
        make_private(path)?;
        let writer_conn = Connection::open(path).map_err(sql_error)?;
        configure(&writer_conn, durability, false).map_err(sql_error)?;
        migrate(&writer_conn).map_err(sql_error)?;

        let (write_tx, write_rx) = mpsc::channel::<WriteJob>();
        thread::Builder::new()
            .name("onramp-store-writer".into())
            .spawn(move || writer_loop(writer_conn, write_rx))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store writer thread: {e}"))
            })?;

        let (read_tx, read_rx) = mpsc::channel::<ReadJob>();
        let read_rx = Arc::new(Mutex::new(read_rx));
        for i in 0..readers.max(1) {
            let conn = Connection::open(path).map_err(sql_error)?;
            configure(&conn, durability, true).map_err(sql_error)?;
            let rx = read_rx.clone();
            thread::Builder::new()
                .name(format!("onramp-store-reader-{i}"))
                .spawn(move || reader_loop(conn, rx))
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start a store reader thread: {e}"))
                })?;
        }
        Ok(Self {
            writer: write_tx,
            readers: read_tx,
        })
    }

    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        hand_off(&self.readers, move |reply| -> ReadJob {
            Box::new(move |conn| {
                let _ = reply.send(f(conn));
            })
        })
        .await
    }

    /// Runs `f` inside the next group commit; returns after the commit.
    /// A job that fails is rolled back alone; the rest of its group commits.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        hand_off(&self.writer, move |reply| -> WriteJob {
            Box::new(move |conn: Result<&Connection, StoreError>| {
                let result = conn.and_then(|conn| in_savepoint(conn, f));
                Box::new(move |commit: Result<(), StoreError>| {
                    let _ = reply.send(commit.and(result));
                })
            })
        })
        .await
    }
}

/// Queues the job `job` makes around a reply channel and waits for the reply.
async fn hand_off<J, R>(
    queue: &mpsc::Sender<J>,
    job: impl FnOnce(oneshot::Sender<Result<R, StoreError>>) -> J,
) -> Result<R, StoreError> {
    let (tx, rx) = oneshot::channel();
    queue.send(job(tx)).map_err(|_| closed())?;
    rx.await.map_err(|_| closed())?
}

/// Creates the database file private before SQLite opens it: SQLite gives
/// the `-wal` and `-shm` files the mode of the database file, and creates a
/// missing one under the umask. Files left readable by an earlier version
/// are restricted.
fn make_private(path: &Path) -> Result<(), StoreError> {
    let failed =
        |p: &Path, e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", p.display()));
    onramp_files::touch(path).map_err(|e| failed(path, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let side = Path::new(&name);
        onramp_files::restrict(side).map_err(|e| failed(side, e))?;
    }
    Ok(())
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is shutting down".into())
}

fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    // Cached statements: parsing these twice per job showed in profiles.
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(sql_error)
    };
    run("SAVEPOINT job")?;
    match f(conn) {
        Ok(r) => {
            run("RELEASE job")?;
            Ok(r)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

fn writer_loop(conn: Connection, jobs: mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let error = sql_error(e);
            first(Err(error.clone()))(Err(error));
            continue;
        }
        let mut completions = vec![first(Ok(&conn))];
        while completions.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => completions.push(job(Ok(&conn))),
                Err(_) => break,
            }
        }
        let commit = conn.execute_batch("COMMIT").map_err(sql_error);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for completion in completions {
            completion(commit.clone());
        }
    }
}

fn reader_loop(conn: Connection, jobs: Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        job(&conn);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A cached statement used again with new bindings runs the plan it has:
    /// no second preparation (see `configure`).
    #[test]
    fn cached_statements_are_not_prepared_again_on_new_bindings() {
        let conn = Connection::open_in_memory().unwrap();
        configure(&conn, Durability::Normal, false).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (service TEXT NOT NULL, id_key TEXT NOT NULL, doc TEXT NOT NULL,
                PRIMARY KEY (service, id_key));
             INSERT INTO t VALUES ('a', '1', 'x'), ('a', '2', 'y'), ('b', '1', 'z');",
        )
        .unwrap();
        let sql = "SELECT id_key, doc FROM t WHERE service = ?1 ORDER BY id_key LIMIT ?2";
        for (service, rows) in [("a", 2), ("b", 1), ("a", 2), ("b", 1)] {
            let mut stmt = conn.prepare_cached(sql).unwrap();
            let got = stmt
                .query_map(rusqlite::params![service, 10], |r| r.get::<_, String>(0))
                .unwrap()
                .count();
            assert_eq!(got, rows);
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "prepared again for service {service}"
            );
        }
    }
}
