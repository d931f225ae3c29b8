//! Numbered schema migrations, shared by every SQLite file Onramp keeps
//! (the provisioning store and the companion hub's store).

use rusqlite::Connection;

/// One schema step: the version it brings a database to, and its SQL.
pub type Step = (i64, &'static str);

/// Applies, in order, every step newer than the database's
/// `PRAGMA user_version`, each in a transaction of its own that also
/// records its version: a crash leaves the database at a whole step.
pub fn run(conn: &Connection, steps: &[Step]) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for &(to, sql) in steps {
        if version < to {
            conn.execute_batch(&format!("BEGIN; {sql} PRAGMA user_version = {to}; COMMIT;"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CREATE: Step = (1, "CREATE TABLE a (x INTEGER);");

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn applies_only_the_steps_a_database_lacks() {
        let conn = Connection::open_in_memory().unwrap();
        let steps = [CREATE, (2, "INSERT INTO a VALUES (2);")];
        run(&conn, &steps[..1]).unwrap();
        assert_eq!(version(&conn), 1);
        run(&conn, &steps).unwrap();
        run(&conn, &steps).unwrap();
        assert_eq!(version(&conn), 2);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "step 2 ran once");
    }

    #[test]
    fn a_failing_step_leaves_the_version_of_the_last_whole_step() {
        let conn = Connection::open_in_memory().unwrap();
        let steps = [CREATE, (2, "INSERT INTO missing VALUES (1);")];
        assert!(run(&conn, &steps).is_err());
        assert_eq!(version(&conn), 1);
    }
}
