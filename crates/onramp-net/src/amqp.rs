//! The front door's hand-off to an AMQP 1.0 application. The listener only
//! recognises AMQP (its protocol header starts with `AMQP`) and passes the
//! byte stream on, whether it arrived over TLS or inside a WebSocket; the
//! protocol itself lives with the application (in `onramp-endpoints`).

use std::fmt::Debug;
use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::PeerCertificates;

/// A byte stream an AMQP connection can be served on.
pub trait AmqpIo: AsyncRead + AsyncWrite + Send + Unpin + Debug + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + Debug + 'static> AmqpIo for T {}

/// One AMQP connection, as the listener hands it over.
#[derive(Debug)]
pub struct AmqpConnection {
    /// Starts with the client's protocol header.
    pub stream: Box<dyn AmqpIo>,
    /// The TLS client certificate chain (leaf first); empty if none.
    pub peer: PeerCertificates,
    pub remote: SocketAddr,
    /// Whether the connection came as a WebSocket upgrade on the HTTPS port.
    pub websocket: bool,
    /// When the TLS handshake (or the WebSocket upgrade) ended: the start of
    /// the application's deadlines.
    pub accepted_at: Instant,
    /// Becomes `true` when the server stops.
    pub shutdown: watch::Receiver<bool>,
}

/// An application that serves AMQP connections.
#[async_trait]
pub trait AmqpApp: Send + Sync {
    /// Serves `conn` until it ends.
    async fn serve(&self, conn: AmqpConnection);
}

/// The first byte of every AMQP protocol header (`AMQP…`); no HTTP method,
/// the HTTP/2 preface or an MQTT CONNECT starts with it.
pub const FIRST_BYTE: u8 = b'A';
