//! The front door's hand-off to an AMQP 1.0 application. The listener only
//! recognises AMQP (its protocol header starts with `AMQP`) and passes the
//! byte stream on, whether it arrived over TLS or inside a WebSocket; the
//! protocol itself lives with the applications (DPS in `onramp-endpoints`,
//! the companion hub in `onramp-hub`). What both need is here: the protocol
//! headers, [`AmqpLimits`], [`Rewind`] (a header read, given back) and the
//! [`guard`] every frame passes before the AMQP crate decodes it.

pub mod cbs;
pub mod guard;
pub mod sessions;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::acceptor::{ListenerConnectionHandle, ListenerSessionHandle};
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::performatives::Attach;
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

/// An X.509 connection opened before it was known which application it is
/// for: its Open answered, its first session begun and that session's first
/// Attach read (but not answered). Only the address of a device's first link
/// tells a registering device from one that talks to its hub, since both
/// present the same certificate and neither sends SASL.
#[derive(Debug)]
pub struct OpenedConnection {
    pub connection: ListenerConnectionHandle,
    pub session: ListenerSessionHandle,
    pub attach: Attach,
    pub peer: PeerCertificates,
    pub remote: SocketAddr,
    pub websocket: bool,
    pub accepted_at: Instant,
    pub shutdown: watch::Receiver<bool>,
}

/// An application that serves AMQP connections.
#[async_trait]
pub trait AmqpApp: Send + Sync {
    /// Serves `conn` until it ends.
    async fn serve(&self, conn: AmqpConnection);

    /// Serves a connection another application opened (see
    /// [`OpenedConnection`]) until it ends. An application that cannot take
    /// one over closes it.
    async fn serve_opened(&self, mut opened: OpenedConnection) {
        let _ = opened
            .connection
            .close_with_error(sessions::amqp_error(
                AmqpError::NotImplemented,
                "this server does not serve links of this kind",
            ))
            .await;
    }
}

/// Logs (at debug) why an application's connection from `remote` ended
/// early; `what` names the application ("AMQP", "hub AMQP").
pub fn log_end(remote: SocketAddr, what: &str, ended: Result<(), String>) {
    if let Err(reason) = ended {
        tracing::debug!(%remote, %reason, "{what} connection ended");
    }
}

/// The first byte of every AMQP protocol header (`AMQP…`); no HTTP method,
/// the HTTP/2 preface or an MQTT CONNECT starts with it.
pub const FIRST_BYTE: u8 = b'A';

/// `AMQP 3 1 0 0`: a SASL layer comes first.
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// `AMQP 0 1 0 0`: AMQP itself, no SASL.
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// What one AMQP connection may make the server hold, and how long it may
/// take before it has proven who it is.
#[derive(Debug, Clone, Copy)]
pub struct AmqpLimits {
    /// The protocol header, the SASL exchange and the Open must all be done
    /// within this time after the TLS handshake (or the WebSocket upgrade);
    /// an X.509 device (no SASL) must also have attached a link to its
    /// registration by then.
    pub open_timeout: Duration,
    /// The largest frame the server accepts (its Open `max-frame-size`).
    pub max_frame_bytes: u32,
    /// Sessions one connection may begin.
    pub max_sessions: u16,
    /// Links one session may attach (a device needs two).
    pub max_links: usize,
    /// The largest request message (the links' `max-message-size`).
    pub max_message_bytes: u64,
    /// A connection that sends nothing (not even an empty frame) for this
    /// long is closed; the SDKs keep their connections alive well within it.
    pub idle_timeout: Duration,
}

impl Default for AmqpLimits {
    fn default() -> Self {
        Self {
            open_timeout: Duration::from_secs(10),
            max_frame_bytes: 64 * 1024,
            max_sessions: 4,
            max_links: 4,
            max_message_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(240),
        }
    }
}

/// A stream whose first bytes (a protocol header already read) are given
/// back before the rest.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: [u8; 8],
    read: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: [u8; 8], inner: S) -> Self {
        Self {
            prefix,
            read: 0,
            inner,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.read < self.prefix.len() {
            let n = (self.prefix.len() - self.read).min(buf.remaining());
            let start = self.read;
            buf.put_slice(&self.prefix[start..start + n]);
            self.read += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
