//! The companion hub's sealed values (policy keys, device keys), counted by
//! master key and re-sealed under the active one (`onramp keys rotate`).

use std::sync::Arc;

use onramp_store::Sealer;
use onramp_store::reseal::{SealedColumn, SqliteSealed};
use onramp_store::sqlite::Db;

use super::HubStore;

static COLUMNS: [SealedColumn; 2] = [
    SealedColumn {
        table: "hub_policies",
        column: "keys_sealed",
        keys: &["name"],
        aad: |k| format!("hub-policy:{}", k[0]),
    },
    SealedColumn {
        table: "devices",
        column: "keys_sealed",
        keys: &["id_key"],
        aad: |k| HubStore::aad(&k[0]),
    },
];

impl SqliteSealed for HubStore {
    fn describe(&self) -> String {
        "the companion hub's store".into()
    }
    fn db(&self) -> &Db {
        &self.db
    }
    fn sealer(&self) -> Arc<Sealer> {
        self.sealer.clone()
    }
    fn columns(&self) -> &'static [SealedColumn] {
        &COLUMNS
    }
}
