//! The provisioning store's schema, one step per version.

use rusqlite::Connection;

use crate::migrations::{Step, run};

const STEPS: [Step; 7] = [
    (1, include_str!("schema.sql")),
    (2, include_str!("schema_v2.sql")),
    (3, include_str!("schema_v3.sql")),
    (4, include_str!("schema_v4.sql")),
    (5, include_str!("schema_v5.sql")),
    (6, include_str!("schema_v6.sql")),
    (7, include_str!("schema_v7.sql")),
];

pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    run(conn, &STEPS)
}
