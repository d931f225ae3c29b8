//! The companion hub's sealed values (policy keys, device keys), counted by
//! master key and re-sealed under the active one (`onramp keys rotate`).

use onramp_store::reseal::{SealedColumn, SealedDb, SqliteSealed};

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
    fn sealed_db(&self) -> SealedDb<'_> {
        SealedDb::new(
            "the companion hub's store",
            &self.db,
            &self.sealer,
            &COLUMNS,
        )
    }
}
