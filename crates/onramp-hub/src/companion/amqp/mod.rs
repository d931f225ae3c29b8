//! The companion hub's device side over AMQP 1.0 (on 5671 over TLS, and over
//! WebSockets on the HTTPS port, path `/$iothub/websocket`, subprotocol
//! `AMQPWSB10`), as the Azure IoT device SDKs speak it (docs/amqp-hub.md):
//!
//! - no SASL: the client sends `AMQP 0 1 0 0` straight after TLS;
//! - symmetric-key devices authenticate with CBS: a `put-token` message on a
//!   link to `$cbs` whose body is a SAS token for `{hub}/devices/{deviceId}`,
//!   checked as the hub's MQTT side checks its password, answered on the
//!   `$cbs` receiving link with `status-code` (int) and `status-description`;
//!   a later put-token renews it. X.509 devices present their certificate in
//!   the TLS handshake, checked when they attach their first link;
//! - telemetry on a link to `/devices/{id}/messages/events`, stored as the
//!   MQTT side stores it; each message settled `accepted` once stored;
//! - the twin on a pair of links to `/devices/{id}/twin`: requests carry the
//!   `operation` (and `resource`) annotations (`GET`, `PATCH`
//!   `/properties/reported`, `PUT`/`DELETE`
//!   `/notifications/twin/properties/desired`), answers the request's
//!   correlation-id, a `status` (int) annotation, a `version` (long) after a
//!   patch, and at most one Data section; after a `PUT`, desired-property
//!   changes come on the same link as messages without a correlation-id;
//! - cloud-to-device: a link from `/devices/{id}/messages/devicebound` is
//!   attached and kept (this hub has no service API that sends any).
//!
//! A link may only name a device authenticated on its connection. Before a
//! device has authenticated, the connection has the same deadline as DPS
//! connections (header and Open, then a put-token or an X.509 link);
//! sessions, links, frames and messages are bounded by [`AmqpLimits`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use fe2o3_amqp::acceptor::{LinkEndpoint, ListenerConnectionHandle};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, Role};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Value};
use onramp_model::UtcTime;
use onramp_net::PeerCertificates;
use onramp_net::amqp::sessions::{
    AttachedLink, ConnectionSessions, LinkGate, SessionStart, amqp_error, next_delivery,
    open_connection, refuse_link, serve_requests, serve_sessions,
};
use onramp_net::amqp::{
    AMQP_HEADER, AmqpApp, AmqpConnection, AmqpLimits, OpenedConnection, Rewind, log_end,
};
use serde_json::{Map, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

mod address;
mod links;

use super::CompanionHub;
use super::connections::DeviceChannel;
use super::device_auth::{self, Denied, Proof};
use super::device_ops::{self, TwinAnswer};
pub use address::{HubAddress, parse_hub_address};
use address::{Purpose, purpose};
pub use links::twin_request_message;
use links::*;

/// The CBS node.
pub const CBS: &str = "$cbs";
/// Links a device needs in one session: two for CBS, telemetry, two for
/// the twin, cloud-to-device, two for direct methods.
const MIN_LINKS: usize = 8;
/// Answers and notifications queued for one device's twin link.
const TWIN_QUEUE: usize = 16;

/// The device side of a companion hub over AMQP.
pub struct HubAmqp {
    hub: Arc<CompanionHub>,
    limits: AmqpLimits,
}

impl HubAmqp {
    /// A session may attach at least [`MIN_LINKS`] links, whatever
    /// `limits.max_links` says (DPS needs two, a hub device up to eight).
    pub fn new(hub: Arc<CompanionHub>, mut limits: AmqpLimits) -> Self {
        limits.max_links = limits.max_links.max(MIN_LINKS);
        Self { hub, limits }
    }
}

#[async_trait]
impl AmqpApp for HubAmqp {
    async fn serve(&self, conn: AmqpConnection) {
        log_end(conn.remote, "hub AMQP", self.run(conn).await);
    }

    /// An X.509 device whose first link is not to a registration: one
    /// talking to this hub (see `AmqpRouter` in `onramp-endpoints`).
    async fn serve_opened(&self, mut opened: OpenedConnection) {
        let first = Some((opened.session, opened.attach));
        let start = SessionStart::new(self.limits, opened.accepted_at, first);
        let connection = &mut opened.connection;
        self.serve_open(connection, opened.peer, &mut opened.shutdown, start)
            .await;
        let _ = connection.close().await;
    }
}

/// One device authenticated on a connection.
struct DeviceState {
    /// Until when its SAS token is good (Unix seconds); `None` for X.509.
    token_expiry: Option<i64>,
    /// Its entry in the hub's [`Connections`](super::Connections).
    connection: u64,
    wants_desired: Arc<AtomicBool>,
    /// Twin answers and desired-property notifications…
    twin_tx: mpsc::Sender<Message<Data>>,
    /// …which the device's twin receiving link takes while attached.
    twin_rx: Option<mpsc::Receiver<Message<Data>>>,
}

/// What every link of one connection shares.
struct ConnState {
    hub: Arc<CompanionHub>,
    peer: PeerCertificates,
    /// Authenticated devices by lower-case ID, with their IDs as stored.
    devices: Mutex<HashMap<String, (String, DeviceState)>>,
    /// Set when another connection of one of its devices replaced this one.
    replaced: watch::Sender<bool>,
}

/// How the hub reaches a device connected over AMQP.
struct AmqpChannel {
    twin_tx: mpsc::Sender<Message<Data>>,
    wants_desired: Arc<AtomicBool>,
    replaced: watch::Sender<bool>,
}

impl DeviceChannel for AmqpChannel {
    /// The patch carries its `$version`; AMQP has no other place for it.
    fn push_desired(&self, _version: i64, patch: Bytes) -> bool {
        if !self.wants_desired.load(Ordering::Relaxed) {
            return false;
        }
        self.twin_tx.try_send(data_message(None, patch)).is_ok()
    }

    fn close(&self) {
        let _ = self.replaced.send(true);
    }
}

impl ConnState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, DeviceState)>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a device that proved itself (or renewed its token).
    fn admit(&self, device_id: &str, token_expiry: Option<i64>) {
        let key = device_id.to_ascii_lowercase();
        let mut devices = self.lock();
        if let Some((_, state)) = devices.get_mut(&key) {
            state.token_expiry = token_expiry;
            return;
        }
        let (twin_tx, twin_rx) = mpsc::channel(TWIN_QUEUE);
        let wants_desired = Arc::new(AtomicBool::new(false));
        let connection = self.hub.connections().attach(
            device_id,
            Box::new(AmqpChannel {
                twin_tx: twin_tx.clone(),
                wants_desired: wants_desired.clone(),
                replaced: self.replaced.clone(),
            }),
            wants_desired.clone(),
        );
        tracing::debug!(device_id, "device connected to the hub over AMQP");
        devices.insert(
            key,
            (
                device_id.to_owned(),
                DeviceState {
                    token_expiry,
                    connection,
                    wants_desired,
                    twin_tx,
                    twin_rx: Some(twin_rx),
                },
            ),
        );
    }

    /// The stored ID of `device_id` if it is authenticated here and its
    /// token has not expired.
    fn authorized(&self, device_id: &str) -> Result<String, definitions::Error> {
        let devices = self.lock();
        let Some((id, state)) = devices.get(&device_id.to_ascii_lowercase()) else {
            return Err(amqp_error(
                AmqpError::UnauthorizedAccess,
                format!(
                    "device '{device_id}' has not authenticated on this connection; put a SAS token for it on $cbs first"
                ),
            ));
        };
        if let Some(expiry) = state.token_expiry
            && expiry.saturating_add(300) < UtcTime::now().unix_seconds()
        {
            return Err(amqp_error(
                AmqpError::UnauthorizedAccess,
                format!(
                    "the SAS token of device '{id}' expired at {expiry} (Unix seconds); put a new one on $cbs"
                ),
            ));
        }
        Ok(id.clone())
    }

    /// Authorizes a link naming `device_id`: a device authenticated here,
    /// or an X.509 device whose TLS certificate is checked now.
    async fn authorize_link(&self, device_id: &str) -> Result<String, definitions::Error> {
        let refused = match self.authorized(device_id) {
            Ok(id) => return Ok(id),
            Err(e) => e,
        };
        if self.peer.0.is_empty() {
            return Err(refused);
        }
        let proof = Proof {
            token: None,
            chain: &self.peer.0,
        };
        match device_auth::authenticate(&self.hub, device_id, proof).await {
            Ok(admitted) if admitted.token_expiry.is_none() => {
                let id = admitted.record.device.device_id;
                self.admit(&id, None);
                Ok(id)
            }
            Ok(_) => Err(refused),
            Err(Denied::NotAuthorized(m)) => Err(amqp_error(AmqpError::UnauthorizedAccess, m)),
            Err(Denied::Unavailable(m)) => Err(amqp_error(AmqpError::InternalError, m)),
        }
    }

    fn twin_tx(&self, device_id: &str) -> Option<(mpsc::Sender<Message<Data>>, Arc<AtomicBool>)> {
        self.lock()
            .get(&device_id.to_ascii_lowercase())
            .map(|(_, s)| (s.twin_tx.clone(), s.wants_desired.clone()))
    }

    fn take_twin_rx(&self, device_id: &str) -> Option<mpsc::Receiver<Message<Data>>> {
        self.lock()
            .get_mut(&device_id.to_ascii_lowercase())
            .and_then(|(_, s)| s.twin_rx.take())
    }

    /// A detached twin link gives its queue back (and stops the
    /// notifications: IoT Hub SDKs unsubscribe by detaching).
    fn return_twin_rx(&self, device_id: &str, rx: mpsc::Receiver<Message<Data>>) {
        if let Some((_, s)) = self.lock().get_mut(&device_id.to_ascii_lowercase()) {
            s.wants_desired.store(false, Ordering::Relaxed);
            s.twin_rx = Some(rx);
        }
    }

    /// The connection ended: its devices are no longer connected.
    fn detach_all(&self) {
        for (_, (id, state)) in self.lock().drain() {
            self.hub.connections().detach(&id, state.connection);
            tracing::debug!(device_id = %id, "device disconnected from the hub (AMQP)");
        }
    }
}

impl HubAmqp {
    async fn run(&self, conn: AmqpConnection) -> Result<(), String> {
        let AmqpConnection {
            mut stream,
            peer,
            accepted_at,
            mut shutdown,
            ..
        } = conn;
        let open_by = accepted_at + self.limits.open_timeout;
        let mut header = [0u8; 8];
        tokio::time::timeout_at(open_by, stream.read_exact(&mut header))
            .await
            .map_err(|_| "no protocol header in time".to_owned())?
            .map_err(|e| format!("reading the protocol header: {e}"))?;
        if header != AMQP_HEADER {
            // The hub takes no SASL (CBS or a client certificate
            // authenticate): answer with the header it speaks and close.
            let _ = stream.write_all(&AMQP_HEADER).await;
            return Err(format!("unsupported protocol header {header:02x?}"));
        }
        let mut connection = open_connection(
            Box::new(Rewind::new(header, stream)),
            &self.limits,
            "onramp-hub",
            open_by,
        )
        .await?;
        let start = SessionStart::new(self.limits, accepted_at, None);
        self.serve_open(&mut connection, peer, &mut shutdown, start)
            .await;
        let _ = connection.close().await;
        Ok(())
    }

    /// Serves an open connection until it ends.
    async fn serve_open(
        &self,
        connection: &mut ListenerConnectionHandle,
        peer: PeerCertificates,
        shutdown: &mut watch::Receiver<bool>,
        start: SessionStart,
    ) {
        let (replaced, _) = watch::channel(false);
        let state = Arc::new(ConnState {
            hub: self.hub.clone(),
            peer,
            devices: Mutex::new(HashMap::new()),
            replaced,
        });
        serve_connection(connection, state.clone(), shutdown, start).await;
        state.detach_all();
    }
}

/// Completes when `flag` becomes `true`.
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Serves a connection's sessions until it ends, the server stops, another
/// connection replaces it, or no device authenticated by
/// `start.authenticate_by`.
async fn serve_connection(
    connection: &mut ListenerConnectionHandle,
    state: Arc<ConnState>,
    shutdown: &mut watch::Receiver<bool>,
    start: SessionStart,
) {
    let mut replaced = state.replaced.subscribe();
    let ended = async {
        tokio::select! {
            () = until_true(shutdown) => None,
            () = until_true(&mut replaced) => Some(amqp_error(
                AmqpError::UnauthorizedAccess,
                "another connection of this device replaced this one",
            )),
        }
    };
    serve_sessions(connection, state, start, ended).await;
}

impl ConnectionSessions for ConnState {
    const LATE: &'static str = "no device authenticated in time (a put-token on $cbs, or a link with a client certificate)";

    async fn authenticated(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Serves one session's links.
    async fn serve_session(self: Arc<Self>, mut links: LinkGate) {
        let (cbs_tx, cbs_rx) = mpsc::channel::<Message<Data>>(8);
        let mut cbs_rx = Some(cbs_rx);
        while let Some(AttachedLink {
            link,
            role,
            address,
        }) = links.next().await
        {
            let checked = match purpose(&role, address.as_deref()) {
                Ok(Purpose::Telemetry(id)) => {
                    self.authorize_link(&id).await.map(Purpose::Telemetry)
                }
                Ok(Purpose::TwinRequests(id)) => {
                    self.authorize_link(&id).await.map(Purpose::TwinRequests)
                }
                Ok(Purpose::TwinAnswers(id)) => {
                    self.authorize_link(&id).await.map(Purpose::TwinAnswers)
                }
                Ok(Purpose::CloudToDevice(id)) => {
                    self.authorize_link(&id).await.map(Purpose::CloudToDevice)
                }
                other => other,
            };
            let refusal = match (checked, link) {
                (Ok(Purpose::CbsRequests), LinkEndpoint::Receiver(r)) => {
                    links.spawn(cbs_requests(r, self.clone(), cbs_tx.clone()));
                    None
                }
                (Ok(Purpose::CbsAnswers), LinkEndpoint::Sender(s)) => match cbs_rx.take() {
                    Some(rx) => {
                        links.spawn(async move {
                            answers(s, rx).await;
                        });
                        None
                    }
                    None => Some((
                        LinkEndpoint::Sender(s),
                        amqp_error(
                            AmqpError::ResourceLimitExceeded,
                            "one $cbs receiving link per session",
                        ),
                    )),
                },
                (Ok(Purpose::Telemetry(id)), LinkEndpoint::Receiver(r)) => {
                    links.spawn(telemetry(r, self.clone(), id));
                    None
                }
                (Ok(Purpose::TwinRequests(id)), LinkEndpoint::Receiver(r)) => {
                    links.spawn(twin_requests(r, self.clone(), id));
                    None
                }
                (Ok(Purpose::TwinAnswers(id)), LinkEndpoint::Sender(s)) => {
                    match self.take_twin_rx(&id) {
                        Some(rx) => {
                            let state = self.clone();
                            links.spawn(async move {
                                let rx = answers(s, rx).await;
                                state.return_twin_rx(&id, rx);
                            });
                            None
                        }
                        None => Some((
                            LinkEndpoint::Sender(s),
                            amqp_error(
                                AmqpError::ResourceLimitExceeded,
                                format!("device '{id}' already has a twin receiving link"),
                            ),
                        )),
                    }
                }
                (Ok(Purpose::CloudToDevice(_)), LinkEndpoint::Sender(mut s)) => {
                    // Nothing sends cloud-to-device messages yet: hold the link
                    // until the device detaches it.
                    links.spawn(async move {
                        let _ = s.on_detach().await;
                        let _ = s.close().await;
                    });
                    None
                }
                (Ok(_), link) => Some((
                    link,
                    amqp_error(AmqpError::InternalError, "a link of an unexpected role"),
                )),
                (Err(error), link) => Some((link, error)),
            };
            if let Some((link, error)) = refusal {
                refuse_link(link, error).await;
            }
        }
        links.end().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_addresses() {
        assert_eq!(parse_hub_address("$cbs"), Some(HubAddress::Cbs));
        assert_eq!(
            parse_hub_address("/devices/dev-1/messages/events"),
            Some(HubAddress::Events("dev-1".into()))
        );
        assert_eq!(
            parse_hub_address("amqps://hub.example:5671/devices/dev%3A1/messages/deviceBound"),
            Some(HubAddress::DeviceBound("dev:1".into()))
        );
        assert_eq!(
            parse_hub_address("devices/a+b/twin"),
            Some(HubAddress::Twin("a+b".into()))
        );
        assert_eq!(parse_hub_address("/devices//twin"), None);
        assert_eq!(parse_hub_address("/devices/d/modules/m/twin"), None);
        assert_eq!(parse_hub_address("/devices/d/twin/extra"), None);
        assert_eq!(parse_hub_address("http://h/devices/d/twin"), None);
        assert_eq!(parse_hub_address("0ne00/registrations/d"), None);
    }
}
