//! Onramp's companion IoT hub: the IoT Hub service REST subset a provisioning
//! service needs (device identities and twins), with its own store.
//!
//! Embedded in `onramp serve` it shares the HTTPS listener (its routes,
//! `/devices/…` and `/twins/…`, do not overlap the DPS routes) and Onramp's
//! engine still reaches it over real HTTPS, as it would any linked hub.

mod amqp;
mod auth;
mod connections;
mod device_auth;
mod device_ops;
mod limits;
mod mqtt;
mod rest;
mod store;

use std::path::Path;
use std::sync::{Arc, RwLock};

use onramp_core::keys;
use onramp_core::ports::StoreError;
use onramp_net::Shutdown;
use onramp_net::amqp::{AmqpApp, AmqpLimits};
use onramp_net::mqtt::ws::{self, WsApp};
use onramp_net::mqtt::{MqttApp, MqttLimits};
use onramp_store::Sealer;

pub use amqp::{HubAddress, HubAmqp, parse_hub_address, twin_request_message};
pub use auth::{HubPolicy, HubRights};
pub use connections::Connections;
pub use limits::{HubLimits, MessageRefusal};
pub use mqtt::{HubMqtt, parse_hub_username};
pub use store::{DeviceRecord, HubStore, HubStoreError, StoredMessage, TwinState};

/// The policy every companion hub starts with, holding every right.
pub const OWNER_POLICY: &str = "iothubowner";

pub struct CompanionHub {
    host_name: String,
    store: HubStore,
    policies: RwLock<Vec<HubPolicy>>,
    connections: Connections,
    /// CA certificates (DER) that `certificateAuthority` devices chain to.
    trusted_cas: RwLock<Vec<Vec<u8>>>,
    /// Serializes CA changes, so that a reload cannot overtake a later write.
    ca_changes: tokio::sync::Mutex<()>,
    /// Device-to-cloud message size and rate.
    messages: limits::MessageGate,
}

impl CompanionHub {
    /// Opens the hub's store at `db_path`, creating the `iothubowner` policy
    /// on first use. `host_name` is what devices and services call the hub
    /// (with `:port` when not 443).
    pub async fn open(
        db_path: &Path,
        host_name: &str,
        sealer: Arc<Sealer>,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_with(db_path, host_name, sealer, HubLimits::default()).await
    }

    /// [`Self::open`] with the limits on what devices send.
    pub async fn open_with(
        db_path: &Path,
        host_name: &str,
        sealer: Arc<Sealer>,
        limits: HubLimits,
    ) -> Result<Arc<Self>, StoreError> {
        let store = HubStore::open(db_path, sealer)?;
        let cas = trusted_cas_in(&store).await?;
        let mut policies = store.policies().await?;
        if !policies.iter().any(|p| p.name == OWNER_POLICY) {
            let owner = HubPolicy {
                name: OWNER_POLICY.into(),
                rights: HubRights::ALL,
                primary_key: keys::generate(),
                secondary_key: keys::generate(),
            };
            store.put_policy(&owner).await?;
            policies.push(owner);
        }
        Ok(Arc::new(Self {
            host_name: host_name.to_owned(),
            store,
            policies: RwLock::new(policies),
            connections: Connections::default(),
            trusted_cas: RwLock::new(cas),
            ca_changes: tokio::sync::Mutex::new(()),
            messages: limits::MessageGate::new(limits),
        }))
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    pub fn store(&self) -> &HubStore {
        &self.store
    }

    /// The limits on what devices send.
    pub fn limits(&self) -> HubLimits {
        self.messages.limits()
    }

    pub(crate) fn message_gate(&self) -> &limits::MessageGate {
        &self.messages
    }

    pub fn trusted_cas(&self) -> Vec<Vec<u8>> {
        self.trusted_cas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Trusts a CA for `certificateAuthority` devices (stored and cached).
    /// A name given again replaces the certificate it named.
    pub async fn trust_ca(&self, name: &str, der: Vec<u8>) -> Result<(), StoreError> {
        let _change = self.ca_changes.lock().await;
        self.store
            .put_certificate(name, der, onramp_model::UtcTime::now())
            .await?;
        self.reload_trusted_cas().await
    }

    /// Stops trusting a CA; returns whether it was trusted.
    pub async fn untrust_ca(&self, name: &str) -> Result<bool, StoreError> {
        let _change = self.ca_changes.lock().await;
        let removed = self.store.delete_certificate(name).await?;
        self.reload_trusted_cas().await?;
        Ok(removed)
    }

    /// The cache follows the store, the one record of which names are trusted:
    /// patching it in place kept a replaced certificate trusted.
    async fn reload_trusted_cas(&self) -> Result<(), StoreError> {
        let cas = trusted_cas_in(&self.store).await?;
        *self.trusted_cas.write().unwrap_or_else(|e| e.into_inner()) = cas;
        Ok(())
    }

    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// The device side over AMQP (and AMQP over WebSockets), to serve on
    /// the listener.
    pub fn amqp_app(self: &Arc<Self>, limits: AmqpLimits) -> Arc<HubAmqp> {
        Arc::new(HubAmqp::new(self.clone(), limits))
    }

    /// The device side over MQTT, to serve on the listener.
    pub fn mqtt_app(self: &Arc<Self>) -> Arc<HubMqtt> {
        Arc::new(HubMqtt::new(self.clone()))
    }

    pub fn policies(&self) -> Vec<HubPolicy> {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `HostName=…;SharedAccessKeyName=iothubowner;SharedAccessKey=…`
    pub fn owner_connection_string(&self) -> String {
        self.policies()
            .iter()
            .find(|p| p.name == OWNER_POLICY)
            .map(|p| p.connection_string(&self.host_name))
            .unwrap_or_else(|| {
                format!(
                    "HostName={};SharedAccessKeyName={OWNER_POLICY};SharedAccessKey=",
                    self.host_name
                )
            })
    }

    /// The REST routes, to serve beside the DPS routes.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        rest::router(self.clone())
    }

    /// The REST routes plus MQTT or AMQP over WebSockets on any other path
    /// (AMQP when the upgrade offers `AMQPWSB10` or `amqp`): what a hub
    /// running on its own serves.
    pub fn standalone_router(
        self: &Arc<Self>,
        limits: MqttLimits,
        amqp_limits: AmqpLimits,
        shutdown: Shutdown,
    ) -> axum::Router {
        let app: Arc<dyn MqttApp> = self.mqtt_app();
        let amqp: Arc<dyn AmqpApp> = self.amqp_app(amqp_limits);
        rest::router(self.clone()).fallback(move |req: axum::extract::Request| {
            let (app, amqp, shutdown) = (app.clone(), amqp.clone(), shutdown.clone());
            async move {
                if ws::offers_amqp(req.headers()) {
                    let amqp = WsApp::Amqp(amqp, amqp_limits.max_frame_bytes as usize);
                    ws::accept(req, amqp, shutdown.receiver())
                } else if ws::is_upgrade(req.headers()) {
                    ws::accept(req, WsApp::Mqtt(app, limits), shutdown.receiver())
                } else {
                    let mut resp = axum::response::Response::new(axum::body::Body::from(
                        "not an operation of this hub",
                    ));
                    *resp.status_mut() = axum::http::StatusCode::NOT_FOUND;
                    resp
                }
            }
        })
    }
}

/// The CA certificates (DER) a hub's store trusts.
async fn trusted_cas_in(store: &HubStore) -> Result<Vec<Vec<u8>>, StoreError> {
    Ok(store
        .certificates()
        .await?
        .into_iter()
        .map(|(_, der)| der)
        .collect())
}
