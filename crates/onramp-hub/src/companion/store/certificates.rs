//! CA certificates the hub trusts for `certificateAuthority` devices.

use onramp_core::ports::StoreError;
use onramp_model::UtcTime;
use onramp_store::sqlite::sql_error;
use rusqlite::params;

use super::HubStore;

impl HubStore {
    /// Trusts a CA certificate for devices with `certificateAuthority` authentication.
    pub async fn put_certificate(
        &self,
        name: &str,
        der: Vec<u8>,
        now: UtcTime,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO hub_certificates (name, der, added) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET der = excluded.der",
                    params![name, der, now.to_string()],
                )
                .map(|_| ())
                .map_err(sql_error)
            })
            .await
    }

    pub async fn certificates(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.db
            .read(|conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT name, der FROM hub_certificates ORDER BY name")
                    .map_err(sql_error)?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(sql_error)
            })
            .await
    }

    pub async fn delete_certificate(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM hub_certificates WHERE name = ?1", [&name])
                    .map(|n| n > 0)
                    .map_err(sql_error)
            })
            .await
    }
}
