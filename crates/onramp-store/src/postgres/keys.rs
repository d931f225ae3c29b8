//! The PostgreSQL store's sealed values, counted by key and re-sealed
//! ([`crate::reseal`]): the embedded store's tables, and the master key
//! check, so a database keeps nothing under a retired key.

use async_trait::async_trait;
use onramp_core::ports::StoreError;
use tokio_postgres::types::ToSql;

use super::PgStore;
use super::db::{connection, pg_error};
use crate::reseal::{
    Batch, KeyCounts, Page, Resealable, STORE_COLUMNS, SealedColumn, count_prefix, count_sql,
    page_sql, resealed, update_sql,
};

/// The one sealed value nodes compare their key rings with.
static KEY_CHECK: SealedColumn = SealedColumn {
    table: "master_key_check",
    column: "sealed",
    keys: &["id::text"],
    aad: |_| super::KEY_CHECK_AAD.to_owned(),
};

fn mark(i: usize) -> String {
    format!("${i}")
}

#[async_trait]
impl Resealable for PgStore {
    fn describe(&self) -> String {
        "the PostgreSQL store".into()
    }

    fn sealed_columns(&self) -> Vec<&'static SealedColumn> {
        STORE_COLUMNS
            .iter()
            .chain(std::iter::once(&KEY_CHECK))
            .collect()
    }

    async fn key_counts(&self) -> Result<KeyCounts, StoreError> {
        let conn = connection(&self.pool).await?;
        let mut counts = KeyCounts::new();
        for c in self.sealed_columns() {
            for row in conn
                .query(&count_sql(c, "substr"), &[])
                .await
                .map_err(pg_error)?
            {
                let prefix: Vec<u8> = row.try_get(0).map_err(pg_error)?;
                let n: i64 = row.try_get(1).map_err(pg_error)?;
                count_prefix(&mut counts, &prefix, u64::try_from(n).unwrap_or(0));
            }
        }
        Ok(counts)
    }

    async fn reseal_batch(&self, page: Page) -> Result<Batch, StoreError> {
        let Page {
            column,
            after,
            limit,
        } = page;
        let mut conn = connection(&self.pool).await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        let limit_param = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(after) = &after {
            params.extend(after.iter().map(|k| k as &(dyn ToSql + Sync)));
        }
        params.push(&limit_param);
        let rows = tx
            .query(&page_sql(column, after.is_some(), mark), &params)
            .await
            .map_err(pg_error)?;
        let n = column.keys.len();
        let mut read = Vec::with_capacity(rows.len());
        for row in &rows {
            let keys = (0..n)
                .map(|i| row.try_get::<_, String>(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(pg_error)?;
            let sealed: Vec<u8> = row.try_get(n).map_err(pg_error)?;
            read.push((keys, sealed));
        }
        let active = self.sealer.active_key_id();
        let update = tx
            .prepare(&update_sql(column, mark))
            .await
            .map_err(pg_error)?;
        let mut batch = Batch {
            scanned: read.len(),
            ..Batch::default()
        };
        for (keys, sealed) in &read {
            let Some(fresh) = resealed(&self.sealer, column, keys, sealed, &active)? else {
                continue;
            };
            let mut values: Vec<&(dyn ToSql + Sync)> = vec![&fresh];
            values.extend(keys.iter().map(|k| k as &(dyn ToSql + Sync)));
            values.push(sealed);
            let changed = tx.execute(&update, &values).await.map_err(pg_error)?;
            batch.resealed += usize::try_from(changed).unwrap_or(0);
        }
        tx.commit().await.map_err(pg_error)?;
        if read.len() == limit {
            batch.next = read.last().map(|(keys, _)| keys.clone());
        }
        Ok(batch)
    }
}
