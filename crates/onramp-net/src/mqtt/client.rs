//! A small MQTT 3.1.1 client over TLS or WebSockets-over-TLS: what Onramp's
//! device simulator, load generator and tests use. One request at a time,
//! like the device SDKs.

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet, QoS, SubscribeReturnCode};
use tokio_util::codec::Framed;

pub use crate::client::{Transport, connect_tls_stream};

/// The fields of a CONNECT: what a client sends, and what the server read
/// (see [`ConnectInfo`](super::ConnectInfo)).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: u16,
    pub clean_session: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(String),
    #[error("the server refused the connection: {}", .0.reason())]
    Refused(ConnectAckReason),
    #[error("the server closed the connection")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<crate::client::ConnectError> for ClientError {
    fn from(e: crate::client::ConnectError) -> Self {
        ClientError::Io(e.0)
    }
}

/// A received application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
}

pub struct MqttClient {
    conn: Framed<Box<dyn crate::client::ClientIo>, Codec>,
    next_id: u16,
    pending: VecDeque<Message>,
    timeout: Duration,
}

impl MqttClient {
    /// Connects, sends CONNECT and waits for a successful CONNACK.
    pub async fn connect(
        address: &str,
        tls: Arc<rustls::ClientConfig>,
        transport: &Transport,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let attempt = async {
            let io = crate::client::open(address, tls, transport).await?;
            Self::handshake(io, options, timeout).await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// CONNECT, then a successful CONNACK.
    async fn handshake(
        io: Box<dyn crate::client::ClientIo>,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut client = Self {
            conn: Framed::new(io, Codec::new(0)),
            next_id: 0,
            pending: VecDeque::new(),
            timeout,
        };
        let connect = Connect {
            clean_session: options.clean_session,
            keep_alive: options.keep_alive,
            client_id: ByteString::from(options.client_id.clone()),
            username: options.username.clone().map(ByteString::from),
            password: options.password.clone().map(Bytes::from),
            ..Default::default()
        };
        client.send(Packet::Connect(Box::new(connect))).await?;
        match client.receive().await? {
            Packet::ConnectAck(ack) if ack.return_code == ConnectAckReason::ConnectionAccepted => {
                Ok(client)
            }
            Packet::ConnectAck(ack) => Err(ClientError::Refused(ack.return_code)),
            other => Err(ClientError::Protocol(format!(
                "expected CONNACK, got packet type {:#04x}",
                other.packet_type()
            ))),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), ClientError> {
        self.conn
            .send(packet)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    async fn receive(&mut self) -> Result<Packet, ClientError> {
        match tokio::time::timeout(self.timeout, self.conn.next()).await {
            Err(_) => Err(ClientError::Timeout(self.timeout)),
            Ok(None) => Err(ClientError::Closed),
            Ok(Some(Err(e))) => Err(ClientError::Protocol(e.to_string())),
            Ok(Some(Ok((packet, _)))) => Ok(packet),
        }
    }

    fn packet_id(&mut self) -> NonZeroU16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        NonZeroU16::new(self.next_id).unwrap_or(NonZeroU16::MIN)
    }

    /// Sends `packet` and waits for the answer `wanted` takes (giving back
    /// any other), handling the others as they come.
    async fn request<T>(
        &mut self,
        packet: Packet,
        wanted: impl Fn(Packet) -> Result<T, Packet>,
    ) -> Result<T, ClientError> {
        self.send(packet).await?;
        loop {
            match wanted(self.receive().await?) {
                Ok(answer) => return Ok(answer),
                Err(other) => self.stash(other).await?,
            }
        }
    }

    /// Handles a packet that is not the one being waited for.
    async fn stash(&mut self, packet: Packet) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(p) => {
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    self.send(Packet::PublishAck { packet_id: id }).await?;
                }
                self.pending.push_back(Message {
                    topic: p.topic.to_string(),
                    payload: p.payload,
                    qos: p.qos,
                });
                Ok(())
            }
            Packet::PingResponse | Packet::PublishAck { .. } => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "unexpected packet type {:#04x}",
                other.packet_type()
            ))),
        }
    }

    pub async fn subscribe(
        &mut self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<SubscribeReturnCode>, ClientError> {
        let packet_id = self.packet_id();
        let topic_filters = filters
            .iter()
            .map(|(f, q)| (ByteString::from(f.to_string()), *q))
            .collect();
        let subscribe = Packet::Subscribe {
            packet_id,
            topic_filters,
        };
        self.request(subscribe, |packet| match packet {
            Packet::SubscribeAck {
                packet_id: id,
                status,
            } if id == packet_id => Ok(status),
            other => Err(other),
        })
        .await
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Result<(), ClientError> {
        let packet_id = self.packet_id();
        let topic_filters = filters
            .iter()
            .map(|f| ByteString::from(f.to_string()))
            .collect();
        let unsubscribe = Packet::Unsubscribe {
            packet_id,
            topic_filters,
        };
        self.request(unsubscribe, |packet| match packet {
            Packet::UnsubscribeAck { packet_id: id } if id == packet_id => Ok(()),
            other => Err(other),
        })
        .await
    }

    /// Publishes; at QoS 1 waits for the PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<(), ClientError> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        let publish = Publish {
            dup: false,
            retain: false,
            qos,
            topic: ByteString::from(topic.to_owned()),
            packet_id,
            payload: payload.into(),
            properties: None,
        };
        let publish = Packet::Publish(Box::new(publish));
        let Some(wanted) = packet_id.filter(|_| qos == QoS::AtLeastOnce) else {
            return self.send(publish).await;
        };
        self.request(publish, |packet| match packet {
            Packet::PublishAck { packet_id: id } if id == wanted => Ok(()),
            other => Err(other),
        })
        .await
    }

    /// The next application message from the server (acknowledged at QoS 1).
    pub async fn next_message(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(m);
            }
            let packet = self.receive().await?;
            self.stash(packet).await?;
        }
    }

    /// The next message whose topic starts with `prefix`; others are kept.
    pub async fn next_message_on(&mut self, prefix: &str) -> Result<Message, ClientError> {
        loop {
            if let Some(pos) = self
                .pending
                .iter()
                .position(|m| m.topic.starts_with(prefix))
                && let Some(m) = self.pending.remove(pos)
            {
                return Ok(m);
            }
            let packet = self.receive().await?;
            self.stash(packet).await?;
        }
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.request(Packet::PingRequest, |packet| match packet {
            Packet::PingResponse => Ok(()),
            other => Err(other),
        })
        .await
    }

    pub async fn disconnect(mut self) {
        let _ = self.send(Packet::Disconnect).await;
        let _ = self.conn.close().await;
    }

    /// Waits until the server closes the connection (for tests of refusals).
    pub async fn closed(mut self) -> Result<(), ClientError> {
        loop {
            match self.receive().await {
                Err(ClientError::Closed)
                | Err(ClientError::Io(_))
                | Err(ClientError::Protocol(_)) => return Ok(()),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
    }
}
