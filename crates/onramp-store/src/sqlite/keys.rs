//! The embedded store's sealed values, counted by key and re-sealed
//! ([`crate::reseal`]).

use super::SqliteStore;
use crate::reseal::{STORE_COLUMNS, SealedDb, SqliteSealed};

impl SqliteSealed for SqliteStore {
    fn sealed_db(&self) -> SealedDb<'_> {
        SealedDb::new(
            "the provisioning store",
            &self.db,
            &self.sealer,
            STORE_COLUMNS,
        )
    }
}
