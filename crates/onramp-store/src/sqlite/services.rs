//! Provisioning services and what hangs off them: access policies (keys
//! sealed), linked hubs (connection strings sealed), and the hub round trips
//! each node measures.

use onramp_core::ports::{HubLatencySample, StoreError};
use onramp_core::tenant::{AccessRights, LinkedHub, ProvisioningService, SharedAccessPolicy};
use onramp_model::{IdKey, Secret};
use rusqlite::{Connection, Params, params};
use serde::{Deserialize, Serialize};

use super::db::sql_error;
use super::rows::{Keyed, corrupt, deleted, ensure_service, query_all, query_optional};
use crate::record::missing_service;
use crate::seal::Sealer;

/// The two keys of a policy, sealed together.
#[derive(Serialize, Deserialize)]
struct PolicyKeys {
    primary: Secret,
    secondary: Secret,
}

fn policy_aad(service: &str, name: &str) -> String {
    format!("policy:{service}/{name}")
}
pub(crate) fn hub_aad(service: &str, key: &str) -> String {
    format!("linked-hub:{service}/{key}")
}

fn service_doc(doc: &str) -> Result<ProvisioningService, StoreError> {
    serde_json::from_str(doc).map_err(|e| corrupt("service", e))
}

/// A policy as its row holds it: name, rights and sealed keys.
pub(crate) struct SealedPolicy {
    pub(crate) name: String,
    pub(crate) rights: u8,
    pub(crate) keys: Vec<u8>,
}

impl SealedPolicy {
    pub(crate) fn seal(
        sealer: &Sealer,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<Self, StoreError> {
        let keys = serde_json::to_vec(&PolicyKeys {
            primary: policy.primary_key.clone(),
            secondary: policy.secondary_key.clone(),
        })
        .map_err(|e| corrupt("policy", e))?;
        Ok(Self {
            name: policy.name.clone(),
            rights: policy.rights.bits(),
            keys: sealer.seal(&keys, &policy_aad(service, &policy.name)),
        })
    }

    /// Creates or replaces the policy in `service`, which must exist.
    pub(super) fn upsert(&self, conn: &Connection, service: &str) -> Result<(), StoreError> {
        let row = params![service, self.name, self.rights, self.keys];
        upsert_under(conn, service, UPSERT_POLICY, row)
    }
}

/// A service ready to insert, its policies sealed.
pub(crate) struct NewService {
    pub(crate) name: String,
    pub(crate) scope_key: IdKey,
    pub(crate) doc: String,
    pub(crate) policies: Vec<SealedPolicy>,
}

impl NewService {
    pub(crate) fn seal(
        sealer: &Sealer,
        service: &ProvisioningService,
        policies: &[SharedAccessPolicy],
    ) -> Result<Self, StoreError> {
        let doc = serde_json::to_string(service).map_err(|e| corrupt("service", e))?;
        let policies = policies
            .iter()
            .map(|p| SealedPolicy::seal(sealer, &service.name, p))
            .collect::<Result<_, StoreError>>()?;
        Ok(Self {
            name: service.name.clone(),
            scope_key: service.id_scope.key(),
            doc,
            policies,
        })
    }

    pub(super) fn insert(self, conn: &Connection) -> Result<(), StoreError> {
        let Self {
            name,
            scope_key,
            doc,
            policies,
        } = self;
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM services WHERE name = ?1 OR id_scope_key = ?2)",
                params![name, scope_key.as_str()],
                |r| r.get(0),
            )
            .map_err(sql_error)?;
        if exists {
            return Err(StoreError::AlreadyExists(format!(
                "a provisioning service named '{name}' or with ID scope '{scope_key}' already exists"
            )));
        }
        conn.execute(
            "INSERT INTO services (name, id_scope_key, doc) VALUES (?1, ?2, ?3)",
            params![name, scope_key.as_str(), doc],
        )
        .map_err(sql_error)?;
        for policy in policies {
            conn.execute(
                "INSERT INTO policies (service, name, rights, keys_sealed) VALUES (?1, ?2, ?3, ?4)",
                params![name, policy.name, policy.rights, policy.keys],
            )
            .map_err(sql_error)?;
        }
        Ok(())
    }
}

/// A service, if there is one, or why it cannot be read.
type MaybeService = Result<Option<ProvisioningService>, StoreError>;

/// The service `sql` selects the document of by `key`.
fn service_where(conn: &Connection, sql: &str, key: &str) -> MaybeService {
    let doc: Option<String> = query_optional(conn, sql, [key], |r| r.get(0))?;
    doc.as_deref().map(service_doc).transpose()
}

pub(super) fn by_name(conn: &Connection, name: &str) -> MaybeService {
    service_where(conn, "SELECT doc FROM services WHERE name = ?1", name)
}

pub(super) fn by_scope(conn: &Connection, scope_key: &str) -> MaybeService {
    service_where(
        conn,
        "SELECT doc FROM services WHERE id_scope_key = ?1",
        scope_key,
    )
}

pub(super) fn all(conn: &Connection) -> Result<Vec<ProvisioningService>, StoreError> {
    let docs = query_all(conn, "SELECT doc FROM services ORDER BY name", [], |r| {
        r.get::<_, String>(0)
    })?;
    docs.iter().map(|d| service_doc(d)).collect()
}

/// Rewrites a service's document and ID scope.
pub(super) fn update(
    conn: &Connection,
    name: &str,
    scope_key: &str,
    doc: &str,
) -> Result<(), StoreError> {
    let n = conn
        .execute(
            "UPDATE services SET doc = ?2, id_scope_key = ?3 WHERE name = ?1",
            params![name, doc, scope_key],
        )
        .map_err(sql_error)?;
    if n == 0 {
        return Err(missing_service(name));
    }
    Ok(())
}

pub(super) fn delete(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    deleted(conn, "DELETE FROM services WHERE name = ?1", [name])
}

const UPSERT_POLICY: &str = "INSERT INTO policies (service, name, rights, keys_sealed) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (service, name) DO UPDATE SET rights = excluded.rights, keys_sealed = excluded.keys_sealed";
/// Linked hubs are kept under their lower-case name.
const LINKED_HUBS: Keyed<'static> = Keyed {
    table: "linked_hubs",
    key: "name_key",
};
const UPSERT_HUB: &str = "INSERT INTO linked_hubs (service, name_key, doc, connection_sealed) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (service, name_key) DO UPDATE SET doc = excluded.doc, connection_sealed = excluded.connection_sealed";

/// Runs the upsert `sql` of a row that belongs to `service`, which must exist.
fn upsert_under(
    conn: &Connection,
    service: &str,
    sql: &str,
    params: impl Params,
) -> Result<(), StoreError> {
    ensure_service(conn, service)?;
    conn.execute(sql, params).map(|_| ()).map_err(sql_error)
}

/// A policy row: its service or name (whichever the query did not fix),
/// rights and sealed keys.
type PolicyRow = (String, u8, Vec<u8>);

fn policy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyRow> {
    Ok((
        r.get::<_, String>(0)?,
        r.get::<_, u8>(1)?,
        r.get::<_, Vec<u8>>(2)?,
    ))
}

pub(crate) fn open_policy(
    sealer: &Sealer,
    service: &str,
    name: String,
    rights: u8,
    sealed: &[u8],
) -> Result<SharedAccessPolicy, StoreError> {
    let aad = policy_aad(service, &name);
    let plain = sealer.open(sealed, &aad).map_err(|e| corrupt(&aad, e))?;
    let keys: PolicyKeys = serde_json::from_slice(&plain).map_err(|e| corrupt(&aad, e))?;
    Ok(SharedAccessPolicy {
        name,
        primary_key: keys.primary,
        secondary_key: keys.secondary,
        rights: AccessRights::from_bits(rights),
    })
}

/// The policies of one service, by name.
pub(super) fn delete_policy(
    conn: &Connection,
    service: &str,
    name: &str,
) -> Result<bool, StoreError> {
    let policies = Keyed {
        table: "policies",
        key: "name",
    };
    policies.delete(conn, service, name)
}

pub(super) fn policies_of(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
) -> Result<Vec<SharedAccessPolicy>, StoreError> {
    query_all(
        conn,
        "SELECT name, rights, keys_sealed FROM policies WHERE service = ?1 ORDER BY name",
        [service],
        policy_row,
    )?
    .into_iter()
    .map(|(name, rights, sealed)| open_policy(sealer, service, name, rights, &sealed))
    .collect()
}

/// The policies called `name`, with their services, by service.
pub(super) fn policies_called(
    conn: &Connection,
    sealer: &Sealer,
    name: &str,
) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
    query_all(
        conn,
        "SELECT service, rights, keys_sealed FROM policies WHERE name = ?1 ORDER BY service",
        [name],
        policy_row,
    )?
    .into_iter()
    .map(|(service, rights, sealed)| {
        let p = open_policy(sealer, &service, name.to_owned(), rights, &sealed)?;
        Ok((service, p))
    })
    .collect()
}

/// The linked hubs of `service` in name order, or only the one called `key`.
pub(super) fn linked_hubs_of(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    key: Option<&str>,
) -> Result<Vec<LinkedHub>, StoreError> {
    let rows: Vec<(String, String, Vec<u8>)> = query_all(
        conn,
        "SELECT name_key, doc, connection_sealed FROM linked_hubs
         WHERE service = ?1 AND (?2 IS NULL OR name_key = ?2) ORDER BY name_key",
        params![service, key],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    rows.into_iter()
        .map(|(key, doc, sealed)| {
            let aad = hub_aad(service, &key);
            let mut hub: LinkedHub = serde_json::from_str(&doc).map_err(|e| corrupt(&aad, e))?;
            let plain = sealer.open(&sealed, &aad).map_err(|e| corrupt(&aad, e))?;
            hub.connection_string =
                Secret::new(String::from_utf8(plain).map_err(|e| corrupt(&aad, e))?);
            Ok(hub)
        })
        .collect()
}

/// A linked hub as its row holds it: the document without the connection
/// string, which is sealed beside it.
pub(crate) struct SealedHub {
    pub(crate) key: String,
    pub(crate) doc: String,
    pub(crate) connection: Vec<u8>,
}

impl SealedHub {
    pub(crate) fn seal(
        sealer: &Sealer,
        service: &str,
        hub: &LinkedHub,
    ) -> Result<Self, StoreError> {
        let key = hub.name.to_ascii_lowercase();
        let connection = sealer.seal(
            hub.connection_string.expose().as_bytes(),
            &hub_aad(service, &key),
        );
        let mut doc_hub = hub.clone();
        doc_hub.connection_string = Secret::new("");
        let doc = serde_json::to_string(&doc_hub).map_err(|e| corrupt("linked hub", e))?;
        Ok(Self {
            key,
            doc,
            connection,
        })
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// Creates or replaces the hub in `service`, which must exist.
    pub(super) fn upsert(&self, conn: &Connection, service: &str) -> Result<(), StoreError> {
        let row = params![service, self.key, self.doc, self.connection];
        upsert_under(conn, service, UPSERT_HUB, row)
    }
}

pub(super) fn has_linked_hub(
    conn: &Connection,
    service: &str,
    key: &str,
) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM linked_hubs WHERE service = ?1 AND name_key = ?2)",
    )
    .and_then(|mut s| s.query_row(params![service, key], |r| r.get(0)))
    .map_err(sql_error)
}

pub(super) fn delete_linked_hub(
    conn: &Connection,
    service: &str,
    key: &str,
) -> Result<bool, StoreError> {
    LINKED_HUBS.delete(conn, service, key)
}

pub(super) fn record_latency(
    conn: &Connection,
    node: &str,
    hub_key: &str,
    doc: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO hub_latencies (node, hub_key, doc) VALUES (?1, ?2, ?3)
         ON CONFLICT (node, hub_key) DO UPDATE SET doc = excluded.doc",
    )
    .and_then(|mut s| s.execute(params![node, hub_key, doc]))
    .map(|_| ())
    .map_err(sql_error)
}

pub(super) fn latencies(conn: &Connection) -> Result<Vec<HubLatencySample>, StoreError> {
    let docs = query_all(
        conn,
        "SELECT doc FROM hub_latencies ORDER BY node, hub_key",
        [],
        |r| r.get::<_, String>(0),
    )?;
    docs.iter()
        .map(|d| serde_json::from_str(d).map_err(|e| corrupt("hub latency", e)))
        .collect()
}
