//! The server side of an MQTT 3.1.1 connection.
//!
//! One loop per connection, generic over the byte stream (TLS or a WebSocket
//! inside TLS). The application decides on CONNECT and handles each PUBLISH;
//! the loop owns the protocol: CONNACK, SUBACK, PUBACK before any response,
//! PINGRESP, keep-alive, packet and in-flight limits, QoS 1 delivery to the
//! client with packet IDs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Codec, ConnectAck, ConnectAckReason, Packet, QoS, SubscribeReturnCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;

use super::client::ConnectOptions;
use crate::PeerCertificates;

/// Limits of one MQTT connection.
#[derive(Debug, Clone, Copy)]
pub struct MqttLimits {
    /// Largest packet accepted; a bigger one closes the connection.
    pub max_packet_bytes: u32,
    /// A client must send a complete CONNECT within this time after the TLS
    /// handshake (after the upgrade, over WebSockets).
    pub connect_timeout: Duration,
    /// Topic filters one connection may hold.
    pub max_subscriptions: usize,
    /// Unacknowledged QoS 1 messages to one client before it is dropped.
    pub max_inflight: usize,
    /// Idle time allowed when the client asks for no keep-alive.
    pub idle_timeout: Duration,
    /// Upper bound of the keep-alive a client may ask for (IoT Hub: 1767 s).
    pub max_keep_alive: Duration,
}

impl Default for MqttLimits {
    fn default() -> Self {
        Self {
            max_packet_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_subscriptions: 16,
            max_inflight: 64,
            idle_timeout: Duration::from_secs(30 * 60),
            max_keep_alive: Duration::from_secs(1767),
        }
    }
}

/// What a client said in its CONNECT, and how it reached us.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// The CONNECT's fields, as a client sets them; a password that is not
    /// UTF-8 (no SAS token) is none.
    pub connect: ConnectOptions,
    pub peer_certificates: PeerCertificates,
    pub remote: SocketAddr,
    pub websocket: bool,
}

impl ConnectInfo {
    pub fn password_text(&self) -> Option<&str> {
        self.connect.password.as_deref()
    }

    /// Who the user name says the client is, as `split` finds it (with the
    /// user name's query); refused when `split` finds nothing (`form` is
    /// what was expected) or the query names an unknown `api-version`.
    pub fn user_name_identity<'a, T>(
        &'a self,
        split: impl FnOnce(&'a str) -> Option<(T, &'a str)>,
        form: &str,
    ) -> Result<T, Refusal> {
        let username = self.connect.username.as_deref().unwrap_or_default();
        let Some((identity, query)) = split(username) else {
            return Err(Refusal::BadUserNameOrPassword(format!(
                "user name '{username}' is not {form}"
            )));
        };
        Refusal::check_api_version(query)?;
        Ok(identity)
    }

    /// The client ID must be the identity the user name names (`what`).
    pub fn require_client_id(&self, id: &str, what: &str) -> Result<(), Refusal> {
        if self.connect.client_id.eq_ignore_ascii_case(id) {
            return Ok(());
        }
        Err(Refusal::IdentifierRejected(format!(
            "client ID '{}' must be the {what} '{id}'",
            self.connect.client_id
        )))
    }
}

/// Why a CONNECT is refused; becomes the CONNACK return code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 2: the client ID does not fit.
    IdentifierRejected(String),
    /// 4: the user name or password is malformed.
    BadUserNameOrPassword(String),
    /// 5: the credentials are wrong, expired or not allowed.
    NotAuthorized(String),
    /// 3: try again later.
    ServerUnavailable(String),
}

impl Refusal {
    fn code(&self) -> ConnectAckReason {
        match self {
            Refusal::IdentifierRejected(_) => ConnectAckReason::IdentifierRejected,
            Refusal::BadUserNameOrPassword(_) => ConnectAckReason::BadUserNameOrPassword,
            Refusal::NotAuthorized(_) => ConnectAckReason::NotAuthorized,
            Refusal::ServerUnavailable(_) => ConnectAckReason::ServiceUnavailable,
        }
    }

    /// Refuses a user name whose query names an `api-version` that is not
    /// one (devices in the field send old versions: those are fine).
    pub fn check_api_version(query: &str) -> Result<(), Refusal> {
        match crate::mqtt::topic::get(&crate::mqtt::topic::pairs(query), "api-version") {
            Some(version) => onramp_model::ids::check_api_version(version)
                .map_err(|m| Refusal::BadUserNameOrPassword(format!("in the user name: {m}"))),
            None => Ok(()),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::IdentifierRejected(m)
            | Refusal::BadUserNameOrPassword(m)
            | Refusal::NotAuthorized(m)
            | Refusal::ServerUnavailable(m) => m,
        }
    }
}

/// A message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
}

impl Outgoing {
    pub fn at_least_once(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
        }
    }
}

/// A message from the client: its topic (with any `?…` property bag) and
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
}

impl Incoming {
    /// The topic without its property bag.
    pub fn path(&self) -> &str {
        self.topic
            .split_once('?')
            .map_or(&self.topic, |(path, _)| path)
    }

    /// The decoded value of `name` in the property bag.
    pub fn property(&self, name: &str) -> Option<String> {
        let (_, pairs) = super::topic::split(&self.topic);
        super::topic::get(&pairs, name).map(str::to_owned)
    }

    /// The raw `$rid`, to echo back verbatim; empty when there is none.
    pub fn rid(&self) -> &str {
        super::topic::raw_rid(&self.topic).unwrap_or_default()
    }
}

/// Why the application ends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd(pub String);

/// Pushes messages to a client from outside its connection (e.g. a twin
/// change made through the REST API). Bounded: a client that does not keep
/// up is disconnected rather than buffered without limit.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    close: Arc<CloseRequest>,
}

/// Asks a connection's loop to end, from outside it.
#[derive(Default)]
struct CloseRequest {
    requested: AtomicBool,
    wake: tokio::sync::Notify,
}

impl CloseRequest {
    fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

impl Outbox {
    /// Queues a message; false if the connection is gone or too far behind
    /// (it is then closed).
    pub fn push(&self, message: Outgoing) -> bool {
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close.request();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Ends the connection (e.g. the same device connected again elsewhere).
    pub fn close(&self) {
        self.close.request();
    }
}

/// One accepted connection, as the application sees it.
#[async_trait]
pub trait MqttSession: Send {
    /// A topic filter the client subscribes to: the granted QoS, or `None` to
    /// refuse it (SUBACK 0x80).
    fn subscribe(&mut self, filter: &str, requested: QoS) -> Option<QoS>;

    fn unsubscribe(&mut self, _filter: &str) {}

    /// Whether the client may publish `message` at all; asked before the
    /// PUBACK, so a message to a forbidden topic (or one the application
    /// cannot take) is never acknowledged (the client must not believe it
    /// was delivered): `Err` ends the connection.
    fn check_publish(&self, message: &Incoming) -> Result<(), SessionEnd>;

    /// A message from the client that [`MqttSession::check_publish`]
    /// allowed; its PUBACK is already on the wire. Returns the messages to
    /// send back, in order, or ends the connection.
    async fn publish(&mut self, message: Incoming) -> Result<Vec<Outgoing>, SessionEnd>;

    /// The connection ended (any reason).
    async fn closed(&mut self) {}
}

/// What an application answers a CONNECT with: the session, or why not.
pub type Admission = Result<Box<dyn MqttSession>, Refusal>;

/// An MQTT application: decides who may connect.
#[async_trait]
pub trait MqttApp: Send + Sync + 'static {
    async fn connect(&self, info: &ConnectInfo, outbox: Outbox) -> Admission;
}

type Conn<S> = Framed<S, Codec>;

/// Why a packet did not go to the client; it ends the connection.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("write failed: {0}")]
    Write(#[source] rmqtt_codec::error::EncodeError),
    #[error("{0} messages unacknowledged; the client does not keep up")]
    ClientBehind(usize),
}

/// Serves one MQTT connection to its end. The client must have sent a
/// complete CONNECT by `connect_by` (the end of the TLS handshake or of the
/// WebSocket upgrade, plus [`MqttLimits::connect_timeout`]).
#[allow(clippy::too_many_arguments)] // each is a separate fact about the connection
pub async fn run<S>(
    io: S,
    app: Arc<dyn MqttApp>,
    peer_certificates: PeerCertificates,
    remote: SocketAddr,
    websocket: bool,
    limits: MqttLimits,
    connect_by: tokio::time::Instant,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut conn: Conn<S> = Framed::new(io, Codec::new(limits.max_packet_bytes));
    let first = tokio::select! {
        first = tokio::time::timeout_at(connect_by, conn.next()) => first,
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    let connect = match first {
        Err(_) => {
            tracing::debug!(%remote, "no CONNECT within {:?}; closing", limits.connect_timeout);
            return;
        }
        Ok(None) => return,
        Ok(Some(Err(e))) => {
            tracing::debug!(%remote, error = %e, "unreadable first packet; closing");
            return;
        }
        Ok(Some(Ok((Packet::Connect(c), _)))) => c,
        Ok(Some(Ok((other, _)))) => {
            tracing::debug!(%remote, packet = other.packet_type(), "first packet is not CONNECT; closing");
            return;
        }
    };
    if connect.protocol.level() != 4 {
        let _ = send(
            &mut conn,
            connack(ConnectAckReason::UnacceptableProtocolVersion),
        )
        .await;
        return;
    }
    let info = ConnectInfo {
        connect: ConnectOptions {
            client_id: connect.client_id.to_string(),
            username: connect.username.as_ref().map(|u| u.to_string()),
            password: connect
                .password
                .as_deref()
                .and_then(|p| std::str::from_utf8(p).ok())
                .map(str::to_owned),
            keep_alive: connect.keep_alive,
            clean_session: connect.clean_session,
        },
        peer_certificates,
        remote,
        websocket,
    };
    let (tx, mut rx) = mpsc::channel(limits.max_inflight.max(1));
    let close = Arc::new(CloseRequest::default());
    let outbox = Outbox {
        tx,
        close: close.clone(),
    };
    let mut session = match app.connect(&info, outbox).await {
        Ok(s) => s,
        Err(refusal) => {
            tracing::info!(%remote, client_id = %info.connect.client_id, code = ?refusal.code(), reason = refusal.message(), "MQTT CONNECT refused");
            let _ = send(&mut conn, connack(refusal.code())).await;
            return;
        }
    };
    // Sessions are never persisted: SessionPresent is always 0 (C# fails otherwise).
    if send(&mut conn, connack(ConnectAckReason::ConnectionAccepted))
        .await
        .is_err()
    {
        session.closed().await;
        return;
    }
    let idle = if info.connect.keep_alive == 0 {
        limits.idle_timeout
    } else {
        (Duration::from_secs(u64::from(info.connect.keep_alive)) * 3 / 2).min(limits.max_keep_alive)
    };
    let end = serve(
        &mut conn,
        &mut *session,
        &mut rx,
        &close,
        idle,
        limits,
        &mut shutdown,
    )
    .await;
    tracing::debug!(%remote, client_id = %info.connect.client_id, reason = %end, "MQTT connection ended");
    session.closed().await;
}

fn connack(code: ConnectAckReason) -> Packet {
    Packet::ConnectAck(ConnectAck {
        return_code: code,
        session_present: false,
    })
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    packet: Packet,
) -> Result<(), SendError> {
    conn.send(packet).await.map_err(SendError::Write)
}

/// The loop after CONNACK; returns why the connection ended.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    session: &mut dyn MqttSession,
    outbox: &mut mpsc::Receiver<Outgoing>,
    close: &CloseRequest,
    idle: Duration,
    limits: MqttLimits,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    // Each filter the client holds, with the QoS it was granted.
    let mut subscriptions: HashMap<String, QoS> = HashMap::new();
    let mut inflight: HashSet<u16> = HashSet::new();
    let mut next_id: u16 = 0;
    loop {
        if close.requested.load(Ordering::Relaxed) {
            return "closed by the server (the client fell behind or connected again)".into();
        }
        let packet = tokio::select! {
            incoming = tokio::time::timeout(idle, conn.next()) => match incoming {
                Err(_) => return format!("no packet within the keep-alive period ({idle:?})"),
                Ok(None) => return "closed by the client".into(),
                Ok(Some(Err(e))) => return format!("protocol error: {e}"),
                Ok(Some(Ok((packet, _)))) => packet,
            },
            Some(out) = outbox.recv() => {
                if let Err(e) = deliver(conn, out, &subscriptions, &mut inflight, &mut next_id, limits).await {
                    return e.to_string();
                }
                continue;
            }
            () = close.wake.notified() => continue,
            _ = shutdown.changed() => return "the server is shutting down".into(),
        };
        match packet {
            Packet::Publish(p) => {
                let message = Incoming {
                    topic: p.topic.to_string(),
                    payload: p.payload,
                };
                let responses = match p.qos {
                    QoS::ExactlyOnce => return "QoS 2 is not supported".into(),
                    QoS::AtLeastOnce => {
                        let Some(id) = p.packet_id else {
                            return "a QoS 1 PUBLISH without a packet ID".into();
                        };
                        if let Err(SessionEnd(reason)) = session.check_publish(&message) {
                            return reason;
                        }
                        // PUBACK first, then any response (C# expects exactly this order).
                        if let Err(e) = send(conn, Packet::PublishAck { packet_id: id }).await {
                            return e.to_string();
                        }
                        session.publish(message).await
                    }
                    QoS::AtMostOnce => match session.check_publish(&message) {
                        Ok(()) => session.publish(message).await,
                        Err(end) => Err(end),
                    },
                };
                match responses {
                    Err(SessionEnd(reason)) => return reason,
                    Ok(list) => {
                        for out in list {
                            if let Err(e) = deliver(
                                conn,
                                out,
                                &subscriptions,
                                &mut inflight,
                                &mut next_id,
                                limits,
                            )
                            .await
                            {
                                return e.to_string();
                            }
                        }
                    }
                }
            }
            Packet::PublishAck { packet_id } => {
                inflight.remove(&packet_id.get());
            }
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => {
                let mut status = Vec::with_capacity(topic_filters.len());
                for (filter, qos) in topic_filters {
                    let filter = filter.to_string();
                    let granted = if subscriptions.len() >= limits.max_subscriptions
                        && !subscriptions.contains_key(&filter)
                    {
                        None
                    } else {
                        session.subscribe(&filter, qos)
                    };
                    match granted {
                        Some(q) => {
                            subscriptions.insert(filter, q);
                            status.push(SubscribeReturnCode::Success(q));
                        }
                        None => status.push(SubscribeReturnCode::Failure),
                    }
                }
                if let Err(e) = send(conn, Packet::SubscribeAck { packet_id, status }).await {
                    return e.to_string();
                }
            }
            Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => {
                for filter in topic_filters {
                    subscriptions.remove(&filter.to_string());
                    session.unsubscribe(&filter);
                }
                if let Err(e) = send(conn, Packet::UnsubscribeAck { packet_id }).await {
                    return e.to_string();
                }
            }
            Packet::PingRequest => {
                if let Err(e) = send(conn, Packet::PingResponse).await {
                    return e.to_string();
                }
            }
            Packet::Disconnect => return "DISCONNECT".into(),
            other => return format!("unexpected packet type {:#04x}", other.packet_type()),
        }
    }
}

/// Sends a message to the client, with a packet ID when it is QoS 1. As MQTT
/// says, a message goes out only on a topic the client subscribed to (clients
/// drop or choke on anything else), at no more than the QoS it was granted.
async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    mut out: Outgoing,
    subscriptions: &HashMap<String, QoS>,
    inflight: &mut HashSet<u16>,
    next_id: &mut u16,
    limits: MqttLimits,
) -> Result<(), SendError> {
    let granted = subscriptions
        .iter()
        .filter(|(filter, _)| super::topic::matches(filter, &out.topic))
        .map(|(_, qos)| *qos)
        .max_by_key(|qos| u8::from(*qos));
    let Some(granted) = granted else {
        tracing::debug!(topic = %out.topic, "not sent: the client has no subscription for it");
        return Ok(());
    };
    out.qos = out.qos.less_value(granted);
    let packet_id = match out.qos {
        QoS::AtMostOnce => None,
        _ => {
            if inflight.len() >= limits.max_inflight {
                return Err(SendError::ClientBehind(inflight.len()));
            }
            loop {
                *next_id = next_id.wrapping_add(1);
                if let Some(id) = NonZeroU16::new(*next_id)
                    && !inflight.contains(&id.get())
                {
                    inflight.insert(id.get());
                    break Some(id);
                }
            }
        }
    };
    let publish = Publish {
        dup: false,
        retain: false,
        qos: out.qos.less_value(QoS::AtLeastOnce),
        topic: ByteString::from(out.topic),
        packet_id,
        payload: out.payload,
        properties: None,
    };
    send(conn, Packet::Publish(Box::new(publish))).await
}
