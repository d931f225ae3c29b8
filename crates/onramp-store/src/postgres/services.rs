//! Provisioning services, their access policies (keys sealed as the
//! embedded store seals them) and the hub round trips each node measures.

use deadpool_postgres::{GenericClient, Pool};
use onramp_core::ports::{HubLatencySample, StoreError};
use onramp_core::tenant::{LinkedHub, ProvisioningService, SharedAccessPolicy};
use onramp_model::Secret;
use tokio_postgres::error::SqlState;

use super::db::{connection, pg_error, pg_error_in};
use super::rows::{col, execute, query, query_opt};
use crate::record::missing_service;
use crate::seal::Sealer;
use crate::sqlite::rows::corrupt;
use crate::sqlite::services::{NewService, SealedPolicy, hub_aad, open_policy};

pub(super) fn service_doc(doc: &str) -> Result<ProvisioningService, StoreError> {
    serde_json::from_str(doc).map_err(|e| corrupt("service", e))
}

pub(super) async fn create(pool: &Pool, new: NewService) -> Result<(), StoreError> {
    let mut conn = connection(pool).await?;
    let tx = conn.transaction().await.map_err(pg_error)?;
    let inserted = execute(
        &tx,
        "INSERT INTO services (name, id_scope_key, doc) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&new.name, &new.scope_key.as_str(), &new.doc],
    )
    .await
    .map_err(pg_error)?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists(format!(
            "a provisioning service named '{}' or with ID scope '{}' already exists",
            new.name, new.scope_key
        )));
    }
    for policy in &new.policies {
        execute(
            &tx,
            "INSERT INTO policies (service, name, rights, keys_sealed) VALUES ($1, $2, $3, $4)",
            &[
                &new.name,
                &policy.name,
                &i16::from(policy.rights),
                &policy.keys,
            ],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}

/// The service `sql` selects the document of by `key`.
pub(super) async fn one(
    pool: &Pool,
    sql: &str,
    key: &str,
) -> Result<Option<ProvisioningService>, StoreError> {
    let conn = connection(pool).await?;
    let row = query_opt(&conn, sql, &[&key]).await?;
    row.map(|r| service_doc(&col::<String>(&r, 0)?)).transpose()
}

pub(super) async fn all(pool: &Pool) -> Result<Vec<ProvisioningService>, StoreError> {
    let conn = connection(pool).await?;
    let rows = query(&conn, "SELECT doc FROM services ORDER BY name", &[]).await?;
    rows.iter()
        .map(|r| service_doc(&col::<String>(r, 0)?))
        .collect()
}

pub(super) async fn update(
    pool: &Pool,
    name: &str,
    scope_key: &str,
    doc: &str,
) -> Result<(), StoreError> {
    let conn = connection(pool).await?;
    let n = execute(
        &conn,
        "UPDATE services SET doc = $2, id_scope_key = $3 WHERE name = $1",
        &[&name, &doc, &scope_key],
    )
    .await
    .map_err(|e| {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            StoreError::AlreadyExists(format!(
                "another provisioning service has the ID scope '{scope_key}'"
            ))
        } else {
            pg_error(e)
        }
    })?;
    if n == 0 {
        return Err(missing_service(name));
    }
    Ok(())
}

pub(super) async fn delete(pool: &Pool, name: &str) -> Result<bool, StoreError> {
    let conn = connection(pool).await?;
    let n = execute(&conn, "DELETE FROM services WHERE name = $1", &[&name])
        .await
        .map_err(pg_error)?;
    Ok(n > 0)
}

pub(super) async fn put_policy(
    pool: &Pool,
    service: &str,
    policy: &SealedPolicy,
) -> Result<(), StoreError> {
    let conn = connection(pool).await?;
    execute(
        &conn,
        "INSERT INTO policies (service, name, rights, keys_sealed) VALUES ($1, $2, $3, $4)
         ON CONFLICT (service, name) DO UPDATE SET rights = excluded.rights, keys_sealed = excluded.keys_sealed",
        &[&service, &policy.name, &i16::from(policy.rights), &policy.keys],
    )
    .await
    .map_err(pg_error_in(service))?;
    Ok(())
}

pub(super) async fn delete_policy(
    pool: &Pool,
    service: &str,
    name: &str,
) -> Result<bool, StoreError> {
    let conn = connection(pool).await?;
    let n = execute(
        &conn,
        "DELETE FROM policies WHERE service = $1 AND name = $2",
        &[&service, &name],
    )
    .await
    .map_err(pg_error)?;
    Ok(n > 0)
}

pub(super) async fn policies_of(
    pool: &Pool,
    sealer: &Sealer,
    service: &str,
) -> Result<Vec<SharedAccessPolicy>, StoreError> {
    let found = policies_where(pool, sealer, "service", service).await?;
    Ok(found.into_iter().map(|(_, policy)| policy).collect())
}

pub(super) async fn policies_called(
    pool: &Pool,
    sealer: &Sealer,
    name: &str,
) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
    policies_where(pool, sealer, "name", name).await
}

/// The policies whose `column` (`service` or `name`) is `value`, each with
/// its service, in order of service and name.
async fn policies_where(
    pool: &Pool,
    sealer: &Sealer,
    column: &str,
    value: &str,
) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
    let conn = connection(pool).await?;
    let sql = format!(
        "SELECT service, name, rights, keys_sealed FROM policies WHERE {column} = $1
         ORDER BY service, name"
    );
    let rows = query(&conn, &sql, &[&value]).await?;
    rows.iter()
        .map(|r| {
            let service: String = col(r, 0)?;
            // Rights are stored as a smallint.
            let rights = u8::try_from(col::<i16>(r, 2)?)
                .map_err(|_| StoreError::Corrupt("a policy's rights are out of range".into()))?;
            let sealed: Vec<u8> = col(r, 3)?;
            let policy = open_policy(sealer, &service, col(r, 1)?, rights, &sealed)?;
            Ok((service, policy))
        })
        .collect()
}

/// A linked hub from its row: the document and the sealed connection string.
pub(super) fn open_hub(
    sealer: &Sealer,
    service: &str,
    key: &str,
    doc: &str,
    sealed: &[u8],
) -> Result<LinkedHub, StoreError> {
    let aad = hub_aad(service, key);
    let mut hub: LinkedHub = serde_json::from_str(doc).map_err(|e| corrupt(&aad, e))?;
    let plain = sealer.open(sealed, &aad).map_err(|e| corrupt(&aad, e))?;
    hub.connection_string = Secret::new(String::from_utf8(plain).map_err(|e| corrupt(&aad, e))?);
    Ok(hub)
}

pub(super) async fn record_latency<C: GenericClient>(
    client: &C,
    node: &str,
    hub_key: &str,
    doc: &str,
) -> Result<(), StoreError> {
    execute(
        client,
        "INSERT INTO hub_latencies (node, hub_key, doc) VALUES ($1, $2, $3)
         ON CONFLICT (node, hub_key) DO UPDATE SET doc = excluded.doc",
        &[&node, &hub_key, &doc],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

pub(super) async fn latencies(pool: &Pool) -> Result<Vec<HubLatencySample>, StoreError> {
    let conn = connection(pool).await?;
    let rows = query(
        &conn,
        "SELECT doc FROM hub_latencies ORDER BY node, hub_key",
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| serde_json::from_str(&col::<String>(r, 0)?).map_err(|e| corrupt("hub latency", e)))
        .collect()
}
