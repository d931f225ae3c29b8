//! The embedded store's sealed values, counted by key and re-sealed
//! ([`crate::reseal`]).

use std::sync::Arc;

use super::SqliteStore;
use crate::reseal::{STORE_COLUMNS, SealedColumn, SqliteSealed};
use crate::seal::Sealer;
use crate::sqlite::Db;

impl SqliteSealed for SqliteStore {
    fn describe(&self) -> String {
        "the provisioning store".into()
    }
    fn db(&self) -> &Db {
        &self.db
    }
    fn sealer(&self) -> Arc<Sealer> {
        self.sealer.clone()
    }
    fn columns(&self) -> &'static [SealedColumn] {
        STORE_COLUMNS
    }
}
