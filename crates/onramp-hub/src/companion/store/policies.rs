//! The hub's shared access policies, their keys sealed.

use onramp_core::ports::StoreError;
use onramp_model::Secret;
use onramp_store::sqlite::{query_all, sql_error};
use rusqlite::params;

use super::super::auth::{HubPolicy, HubRights};
use super::{HubStore, SealedKeys, corrupt};

impl HubStore {
    pub async fn policies(&self) -> Result<Vec<HubPolicy>, StoreError> {
        let sealer = self.sealer.clone();
        self.db
            .read(move |conn| {
                let rows = query_all(
                    conn,
                    "SELECT name, rights, keys_sealed FROM hub_policies ORDER BY name",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, u8>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    },
                )?;
                rows.into_iter()
                    .map(|(name, rights, sealed)| {
                        let plain = sealer
                            .open(&sealed, &format!("hub-policy:{name}"))
                            .map_err(corrupt)?;
                        let keys: SealedKeys = serde_json::from_slice(&plain).map_err(corrupt)?;
                        Ok(HubPolicy {
                            name,
                            rights: HubRights::from_bits(rights),
                            primary_key: keys.primary.unwrap_or_else(|| Secret::new("")),
                            secondary_key: keys.secondary.unwrap_or_else(|| Secret::new("")),
                        })
                    })
                    .collect()
            })
            .await
    }

    pub async fn put_policy(&self, policy: &HubPolicy) -> Result<(), StoreError> {
        let keys = SealedKeys {
            primary: Some(policy.primary_key.clone()),
            secondary: Some(policy.secondary_key.clone()),
        };
        let sealed = self.sealer.seal(
            &serde_json::to_vec(&keys).map_err(corrupt)?,
            &format!("hub-policy:{}", policy.name),
        );
        let (name, rights) = (policy.name.clone(), policy.rights.bits());
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO hub_policies (name, rights, keys_sealed) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET rights = excluded.rights, keys_sealed = excluded.keys_sealed",
                    params![name, rights, sealed],
                )
                .map(|_| ())
                .map_err(sql_error)
            })
            .await
    }
}
