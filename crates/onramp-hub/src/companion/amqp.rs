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
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Role};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Properties,
    TargetArchetype,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Value};
use onramp_model::UtcTime;
use onramp_net::PeerCertificates;
use onramp_net::amqp::guard::FrameGuard;
use onramp_net::amqp::{AMQP_HEADER, AmqpApp, AmqpConnection, AmqpLimits, Rewind};
use serde_json::{Map, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::CompanionHub;
use super::connections::DeviceChannel;
use super::device_auth::{self, Denied, Proof};
use super::device_ops::{self, TwinAnswer};

/// The CBS node.
pub const CBS: &str = "$cbs";
/// Links a device needs in one session: two for CBS, telemetry, two for
/// the twin, cloud-to-device, two for direct methods.
const MIN_LINKS: usize = 8;
/// Answers and notifications queued for one device's twin link.
const TWIN_QUEUE: usize = 16;

/// What a hub link address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAddress {
    /// `$cbs`
    Cbs,
    /// `/devices/{id}/messages/events`
    Events(String),
    /// `/devices/{id}/messages/devicebound`
    DeviceBound(String),
    /// `/devices/{id}/twin`
    Twin(String),
}

/// Reads a link address: `$cbs`, or `/devices/{id}/…` with or without the
/// leading `/` and with an optional `amqps://{host}[:port]` before it. The
/// ID is percent-decoded (`+` stays); the rest matches in any case.
pub fn parse_hub_address(address: &str) -> Option<HubAddress> {
    if address == CBS {
        return Some(HubAddress::Cbs);
    }
    let path = match address.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("amqps") => rest.split_once('/')?.1,
        Some(_) => return None,
        None => address.strip_prefix('/').unwrap_or(address),
    };
    let mut parts = path.split('/');
    if !parts.next()?.eq_ignore_ascii_case("devices") {
        return None;
    }
    let id = percent_encoding::percent_decode_str(parts.next()?)
        .decode_utf8()
        .ok()?
        .into_owned();
    if id.is_empty() {
        return None;
    }
    let rest: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["messages", "events"] => Some(HubAddress::Events(id)),
        ["messages", "devicebound"] => Some(HubAddress::DeviceBound(id)),
        ["twin"] => Some(HubAddress::Twin(id)),
        _ => None,
    }
}

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
        let remote = conn.remote;
        if let Err(reason) = self.run(conn).await {
            tracing::debug!(%remote, %reason, "hub AMQP connection ended");
        }
    }
}

fn amqp_error(condition: AmqpError, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::AmqpError(condition),
        Some(description.into()),
        None,
    )
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
    limits: AmqpLimits,
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

    fn any_authenticated(&self) -> bool {
        !self.lock().is_empty()
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
        let acceptor = ConnectionAcceptor::builder()
            .container_id("onramp-hub")
            .max_frame_size(self.limits.max_frame_bytes)
            .channel_max(self.limits.max_sessions.saturating_sub(1))
            .idle_time_out(u32::try_from(self.limits.idle_timeout.as_millis()).unwrap_or(u32::MAX))
            .build();
        let stream = FrameGuard::new(
            Rewind::new(header, stream),
            self.limits.max_frame_bytes as usize,
        );
        let mut connection = tokio::time::timeout_at(open_by, acceptor.accept(stream))
            .await
            .map_err(|_| "no Open in time".to_owned())?
            .map_err(|e| format!("opening: {e}"))?;
        let (replaced, _) = watch::channel(false);
        let state = Arc::new(ConnState {
            hub: self.hub.clone(),
            limits: self.limits,
            peer,
            devices: Mutex::new(HashMap::new()),
            replaced,
        });
        serve_connection(&mut connection, state.clone(), &mut shutdown, open_by).await;
        state.detach_all();
        let _ = connection.close().await;
        Ok(())
    }
}

/// Completes when `flag` becomes `true`.
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Serves a connection's sessions until it ends, the server stops, another
/// connection replaces it, or no device authenticated by `authenticate_by`.
async fn serve_connection(
    connection: &mut ListenerConnectionHandle,
    state: Arc<ConnState>,
    shutdown: &mut watch::Receiver<bool>,
    authenticate_by: tokio::time::Instant,
) {
    let mut sessions = JoinSet::new();
    let mut begun = 0u16;
    let mut authenticated = false;
    let mut replaced = state.replaced.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = connection.next_incoming_session() => incoming,
            () = until_true(shutdown) => return,
            () = until_true(&mut replaced) => {
                let _ = connection
                    .close_with_error(amqp_error(
                        AmqpError::UnauthorizedAccess,
                        "another connection of this device replaced this one",
                    ))
                    .await;
                return;
            }
            () = tokio::time::sleep_until(authenticate_by), if !authenticated => {
                authenticated = state.any_authenticated();
                if authenticated {
                    continue;
                }
                let _ = connection
                    .close_with_error(amqp_error(
                        AmqpError::UnauthorizedAccess,
                        "no device authenticated in time (a put-token on $cbs, or a link with a client certificate)",
                    ))
                    .await;
                return;
            }
        };
        let Some(incoming) = incoming else { return };
        begun += 1;
        if begun > state.limits.max_sessions {
            let _ = connection
                .close_with_error(amqp_error(
                    AmqpError::ResourceLimitExceeded,
                    format!(
                        "at most {} sessions per connection",
                        state.limits.max_sessions
                    ),
                ))
                .await;
            return;
        }
        let session = match SessionAcceptor::new()
            .accept_incoming_session(incoming, connection)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "hub AMQP session not begun");
                return;
            }
        };
        sessions.spawn(serve_session(session, state.clone()));
    }
}

/// What a link is for, from the device's role and the address.
enum Purpose {
    CbsRequests,
    CbsAnswers,
    Telemetry(String),
    TwinRequests(String),
    TwinAnswers(String),
    CloudToDevice(String),
}

fn purpose(role: &Role, address: Option<&str>) -> Result<Purpose, definitions::Error> {
    let parsed = address.and_then(parse_hub_address);
    match (role, parsed) {
        (Role::Sender, Some(HubAddress::Cbs)) => Ok(Purpose::CbsRequests),
        (Role::Receiver, Some(HubAddress::Cbs)) => Ok(Purpose::CbsAnswers),
        (Role::Sender, Some(HubAddress::Events(id))) => Ok(Purpose::Telemetry(id)),
        (Role::Sender, Some(HubAddress::Twin(id))) => Ok(Purpose::TwinRequests(id)),
        (Role::Receiver, Some(HubAddress::Twin(id))) => Ok(Purpose::TwinAnswers(id)),
        (Role::Receiver, Some(HubAddress::DeviceBound(id))) => Ok(Purpose::CloudToDevice(id)),
        (_, _) => Err(amqp_error(
            AmqpError::NotFound,
            format!(
                "'{}' is not a node of the IoT Hub device API a device can {} (use $cbs, /devices/{{id}}/messages/events, /devices/{{id}}/messages/devicebound or /devices/{{id}}/twin)",
                address.unwrap_or_default(),
                if *role == Role::Sender {
                    "send to"
                } else {
                    "receive from"
                }
            ),
        )),
    }
}

/// Serves one session's links.
async fn serve_session(mut session: ListenerSessionHandle, state: Arc<ConnState>) {
    let (cbs_tx, cbs_rx) = mpsc::channel::<Message<Data>>(8);
    let mut cbs_rx = Some(cbs_rx);
    let mut links = JoinSet::new();
    let mut attached = 0usize;
    let acceptor = LinkAcceptor::builder()
        .max_message_size(state.limits.max_message_bytes)
        .build();
    while let Some(attach) = session.next_incoming_attach().await {
        attached += 1;
        let role = attach.role.clone();
        let address = match role {
            Role::Sender => attach.target.as_ref().and_then(|t| match t.as_ref() {
                TargetArchetype::Target(t) => t.address.clone(),
            }),
            Role::Receiver => attach.source.as_ref().and_then(|s| s.address.clone()),
        };
        let link = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "hub AMQP link not attached");
                continue;
            }
        };
        let checked = if attached > state.limits.max_links {
            Err(amqp_error(
                AmqpError::ResourceLimitExceeded,
                format!("at most {} links per session", state.limits.max_links),
            ))
        } else {
            match purpose(&role, address.as_deref()) {
                Ok(Purpose::Telemetry(id)) => {
                    state.authorize_link(&id).await.map(Purpose::Telemetry)
                }
                Ok(Purpose::TwinRequests(id)) => {
                    state.authorize_link(&id).await.map(Purpose::TwinRequests)
                }
                Ok(Purpose::TwinAnswers(id)) => {
                    state.authorize_link(&id).await.map(Purpose::TwinAnswers)
                }
                Ok(Purpose::CloudToDevice(id)) => {
                    state.authorize_link(&id).await.map(Purpose::CloudToDevice)
                }
                other => other,
            }
        };
        let refusal = match (checked, link) {
            (Ok(Purpose::CbsRequests), LinkEndpoint::Receiver(r)) => {
                links.spawn(cbs_requests(r, state.clone(), cbs_tx.clone()));
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
                links.spawn(telemetry(r, state.clone(), id));
                None
            }
            (Ok(Purpose::TwinRequests(id)), LinkEndpoint::Receiver(r)) => {
                links.spawn(twin_requests(r, state.clone(), id));
                None
            }
            (Ok(Purpose::TwinAnswers(id)), LinkEndpoint::Sender(s)) => {
                match state.take_twin_rx(&id) {
                    Some(rx) => {
                        let state = state.clone();
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
            match link {
                LinkEndpoint::Receiver(r) => {
                    let _ = r.close_with_error(error).await;
                }
                LinkEndpoint::Sender(s) => {
                    let _ = s.close_with_error(error).await;
                }
            }
        }
    }
    let _ = session.end().await;
}

/// Sends the queued messages on a link the device receives from, each
/// after it gave credit, until it detaches; gives the queue back.
async fn answers(
    mut sender: Sender,
    mut rx: mpsc::Receiver<Message<Data>>,
) -> mpsc::Receiver<Message<Data>> {
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                if let Err(e) = sender.send(message).await {
                    tracing::debug!(error = %e, "a hub AMQP message was not delivered");
                    break;
                }
            }
            _ = sender.on_detach() => break,
        }
    }
    let _ = sender.close().await;
    rx
}

/// A message with one Data section (empty when there is nothing to say).
fn data_message(correlation: Option<MessageId>, body: Bytes) -> Message<Data> {
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Default::default()
        })
        .data(Binary::from(body.to_vec()))
        .build()
}

fn annotation<'a>(message: &'a Message<Body<Value>>, key: &str) -> Option<&'a str> {
    match message
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))?
    {
        Value::String(s) => Some(s.as_str()),
        Value::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The body's bytes: Data sections, or an AmqpValue string or binary.
fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, String> {
    match body {
        Body::Data(batch) => Ok(batch.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(v) => match &v.0 {
            Value::String(s) => Ok(s.clone().into_bytes()),
            Value::Binary(b) => Ok(b.to_vec()),
            Value::Null => Ok(Vec::new()),
            _ => Err("the body must be Data sections or a string or binary value".into()),
        },
        Body::Empty => Ok(Vec::new()),
        Body::Sequence(_) => Err("the body must be Data sections, not AMQP sequences".into()),
    }
}

/// A CBS answer: the request's message-id as correlation-id (same type),
/// `status-code` (int) and `status-description`.
fn cbs_answer(correlation: Option<MessageId>, status: i32, description: &str) -> Message<Data> {
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("status-code", SimpleValue::Int(status))
                .insert(
                    "status-description",
                    SimpleValue::String(description.to_owned()),
                )
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build()
}

/// Checks a put-token request; (status, description).
async fn put_token(state: &ConnState, message: &Message<Body<Value>>) -> (i32, String) {
    let app = message.application_properties.as_ref();
    let prop = |k: &str| match app.and_then(|p| p.0.get(k)) {
        Some(SimpleValue::String(s)) => Some(s.as_str()),
        Some(SimpleValue::Symbol(s)) => Some(s.as_str()),
        _ => None,
    };
    match prop("operation") {
        Some("put-token") => {}
        other => {
            return (
                400,
                format!(
                    "operation '{}' is not served on $cbs; use put-token",
                    other.unwrap_or_default()
                ),
            );
        }
    }
    let token = match &message.body {
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.clone(),
            _ => String::new(),
        },
        Body::Data(_) => body_bytes(&message.body)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default(),
        _ => String::new(),
    };
    if token.is_empty() {
        return (
            400,
            "the put-token body must be the SAS token as a string".into(),
        );
    }
    let device_id = match device_auth::token_device(&token, state.hub.host_name()) {
        Ok(id) => id,
        Err(Denied::NotAuthorized(m) | Denied::Unavailable(m)) => return (401, m),
    };
    let proof = Proof {
        token: Some(&token),
        chain: &state.peer.0,
    };
    match device_auth::authenticate(&state.hub, &device_id, proof).await {
        Ok(admitted) => {
            state.admit(&admitted.record.device.device_id, admitted.token_expiry);
            (200, "OK".into())
        }
        Err(Denied::NotAuthorized(m)) => (401, m),
        Err(Denied::Unavailable(m)) => (503, m),
    }
}

/// Serves put-token requests; each is accepted, then answered on the
/// session's `$cbs` receiving link.
async fn cbs_requests(
    mut receiver: Receiver,
    state: Arc<ConnState>,
    answers: mpsc::Sender<Message<Data>>,
) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "hub $cbs link ended");
                break;
            }
        };
        let message = delivery.message();
        let correlation = message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let (status, description) = put_token(&state, message).await;
        if status != 200 {
            tracing::debug!(status, %description, "put-token refused");
        }
        if receiver.accept(&delivery).await.is_err()
            || answers
                .send(cbs_answer(correlation, status, &description))
                .await
                .is_err()
        {
            break;
        }
    }
    let _ = receiver.close().await;
}

/// A simple value of an application property as JSON text for the store.
fn property_text(value: &SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        _ => return None,
    })
}

fn message_id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// A telemetry message's properties as the store keeps them (the names of
/// the MQTT property bag: `$.mid`, `$.cid`, `$.ct`, `$.ce`, and the
/// application properties).
fn telemetry_properties(message: &Message<Body<Value>>) -> Map<String, Json> {
    let mut out = Map::new();
    if let Some(p) = &message.properties {
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.insert(k.to_owned(), Json::String(v));
            }
        };
        put("$.mid", p.message_id.as_ref().map(message_id_text));
        put("$.cid", p.correlation_id.as_ref().map(message_id_text));
        put(
            "$.ct",
            p.content_type.as_ref().map(|s| s.as_str().to_owned()),
        );
        put(
            "$.ce",
            p.content_encoding.as_ref().map(|s| s.as_str().to_owned()),
        );
    }
    if let Some(app) = &message.application_properties {
        for (k, v) in app.0.iter() {
            if let Some(text) = property_text(v) {
                out.insert(k.clone(), Json::String(text));
            }
        }
    }
    out
}

/// Stores each telemetry message, then settles it `accepted` (or
/// `rejected` with the reason).
async fn telemetry(mut receiver: Receiver, state: Arc<ConnState>, device_id: String) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "hub telemetry link ended");
                break;
            }
        };
        let message = delivery.message();
        let stored = match state.authorized(&device_id) {
            Err(e) => Err(e),
            Ok(_) => match body_bytes(&message.body) {
                Err(m) => Err(amqp_error(AmqpError::DecodeError, m)),
                Ok(body) => device_ops::telemetry(
                    &state.hub,
                    &device_id,
                    telemetry_properties(message),
                    Bytes::from(body),
                )
                .await
                .map_err(|m| amqp_error(AmqpError::InternalError, m)),
            },
        };
        let settled = match stored {
            Ok(()) => receiver.accept(&delivery).await,
            Err(e) => receiver.reject(&delivery, e).await,
        };
        if settled.is_err() {
            break;
        }
    }
    let _ = receiver.close().await;
}

/// The twin resource desired-property notifications are subscribed on.
const DESIRED_NOTIFICATIONS: &str = "/notifications/twin/properties/desired";

/// A twin answer: correlation-id, `status` (int), `version` (long) when
/// known, and one Data section (empty for a success without a body).
fn twin_message(correlation: Option<MessageId>, answer: TwinAnswer) -> Message<Data> {
    let mut annotations = OrderedMap::new();
    annotations.insert(
        OwnedKey::Symbol(Symbol::from("status")),
        Value::Int(i32::from(answer.status)),
    );
    if let Some(v) = answer.version {
        annotations.insert(OwnedKey::Symbol(Symbol::from("version")), Value::Long(v));
    }
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Default::default()
        })
        .message_annotations(MessageAnnotations(annotations))
        .data(Binary::from(answer.body.to_vec()))
        .build()
}

/// What a twin request asks for.
async fn twin_request(
    state: &ConnState,
    device_id: &str,
    message: &Message<Body<Value>>,
    wants_desired: &AtomicBool,
) -> TwinAnswer {
    let operation = annotation(message, "operation").unwrap_or_default();
    let resource = annotation(message, "resource");
    let ok = || TwinAnswer {
        status: 200,
        body: Bytes::new(),
        version: None,
    };
    match (operation, resource) {
        ("GET", _) => device_ops::twin_get(&state.hub, device_id).await,
        ("PATCH", Some("/properties/reported")) => match body_bytes(&message.body) {
            Ok(body) => device_ops::reported_patch(&state.hub, device_id, &body).await,
            Err(m) => TwinAnswer::error(400, &m),
        },
        ("PUT", Some(DESIRED_NOTIFICATIONS)) => {
            wants_desired.store(true, Ordering::Relaxed);
            ok()
        }
        ("DELETE", Some(DESIRED_NOTIFICATIONS)) => {
            wants_desired.store(false, Ordering::Relaxed);
            ok()
        }
        (op, resource) => TwinAnswer::error(
            400,
            &format!(
                "operation '{op}' on '{}' is not a twin operation; use GET, PATCH /properties/reported, or PUT/DELETE {DESIRED_NOTIFICATIONS}",
                resource.unwrap_or_default()
            ),
        ),
    }
}

/// Serves twin requests; answers go on the device's twin receiving link.
async fn twin_requests(mut receiver: Receiver, state: Arc<ConnState>, device_id: String) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "hub twin link ended");
                break;
            }
        };
        if let Err(e) = state.authorized(&device_id) {
            let _ = receiver.reject(&delivery, e.clone()).await;
            let _ = receiver.close_with_error(e).await;
            return;
        }
        let Some((twin_tx, wants_desired)) = state.twin_tx(&device_id) else {
            break;
        };
        let message = delivery.message();
        let correlation = message
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let answer = twin_request(&state, &device_id, message, &wants_desired).await;
        if receiver.accept(&delivery).await.is_err() {
            break;
        }
        if twin_tx.try_send(twin_message(correlation, answer)).is_err() {
            tracing::debug!(%device_id, "a twin answer was dropped: the device reads none");
        }
    }
    let _ = receiver.close().await;
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
