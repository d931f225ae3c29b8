//! The DPS device API over AMQP 1.0 (on 5671 over TLS, and over WebSockets
//! on the HTTPS port).
//!
//! A connection starts with one of two protocol headers: `AMQP 3 1 0 0`
//! (symmetric-key devices: SASL `PLAIN`, user name
//! `{idScope}/registrations/{registrationId}`, password the SAS token) or
//! `AMQP 0 1 0 0` (X.509 devices: no SASL, the certificate came in the TLS
//! handshake). Onramp runs the SASL exchange itself ([`sasl`]) because the
//! credential check needs the store, then hands the stream to fe2o3-amqp's
//! acceptor for the Open, the sessions and the links.
//!
//! The device attaches a sending and a receiving link, both addressed to its
//! registration (`{idScope}/registrations/{id}`, with a leading `/` or as
//! `amqps://{host}/…`). Each request carries `iotdps-operation-type`
//! (`iotdps-register` or `iotdps-get-operationstatus`, with
//! `iotdps-operation-id`); it is accepted, then answered on the receiving
//! link with one Data section of JSON, the request's correlation-id, and
//! `iotdps-status`, `retry-after` and `Retry-After` application properties.
//! A request the engine refuses is settled `rejected`, with the JSON error
//! body as the error's description.

pub mod guard;
mod sasl;
mod session;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::acceptor::ConnectionAcceptor;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::Engine;
use onramp_core::events::Protocol;
use onramp_net::amqp::{AmqpApp, AmqpConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::EndpointConfig;

pub use sasl::{Mechanism, decode_frame as decode_sasl_frame, parse_plain};
pub use session::{Address, parse_address};

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

/// Who a connection proved to be, before any link.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub scope: String,
    pub registration_id: String,
}

/// What every link of one connection shares.
pub(crate) struct ConnectionContext {
    pub engine: Arc<Engine>,
    pub config: EndpointConfig,
    pub limits: AmqpLimits,
    pub protocol: Protocol,
    pub credential: DeviceCredential,
    pub client_addr: std::net::IpAddr,
    /// Set by SASL `PLAIN`; for X.509 devices by their first link, once
    /// the certificate was checked against the registration it addresses.
    pub identity: tokio::sync::Mutex<Option<Identity>>,
}

/// The DPS device API over AMQP.
pub struct DpsAmqp {
    engine: Arc<Engine>,
    config: EndpointConfig,
    limits: AmqpLimits,
}

impl DpsAmqp {
    pub fn new(engine: Arc<Engine>, config: EndpointConfig, limits: AmqpLimits) -> Self {
        Self {
            engine,
            config,
            limits,
        }
    }
}

/// `AMQP 3 1 0 0`: a SASL layer comes first.
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// `AMQP 0 1 0 0`: AMQP itself, no SASL.
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

#[async_trait]
impl AmqpApp for DpsAmqp {
    async fn serve(&self, conn: AmqpConnection) {
        let remote = conn.remote;
        if let Err(reason) = self.run(conn).await {
            tracing::debug!(%remote, %reason, "AMQP connection ended");
        }
    }
}

impl DpsAmqp {
    async fn run(&self, conn: AmqpConnection) -> Result<(), String> {
        let AmqpConnection {
            mut stream,
            peer,
            remote,
            websocket,
            accepted_at,
            mut shutdown,
        } = conn;
        let open_by = accepted_at + self.limits.open_timeout;
        let protocol = if websocket {
            Protocol::AmqpWs
        } else {
            Protocol::Amqp
        };
        let mut header = [0u8; 8];
        tokio::time::timeout_at(open_by, stream.read_exact(&mut header))
            .await
            .map_err(|_| "no protocol header in time".to_owned())?
            .map_err(|e| format!("reading the protocol header: {e}"))?;
        let (identity, credential, stream): (_, _, Box<dyn onramp_net::amqp::AmqpIo>) = match header
        {
            SASL_HEADER => {
                let outcome = tokio::time::timeout_at(
                    open_by,
                    sasl::negotiate(&mut stream, &self.engine, protocol, remote.ip()),
                )
                .await
                .map_err(|_| "SASL not finished in time".to_owned())??;
                (Some(outcome.identity), outcome.credential, stream)
            }
            AMQP_HEADER if !peer.0.is_empty() => {
                let chain = peer.0.iter().map(|c| c.as_ref().to_vec()).collect();
                (
                    None,
                    DeviceCredential::X509Chain(chain),
                    Box::new(Rewind::new(header, stream)),
                )
            }
            AMQP_HEADER => {
                // Without SASL only a TLS client certificate can say who
                // the device is; ask for SASL.
                let _ = stream.write_all(&SASL_HEADER).await;
                return Err("no SASL and no client certificate".into());
            }
            _ => {
                // The header this server speaks, then close (AMQP 1.0 §2.2).
                let _ = stream.write_all(&SASL_HEADER).await;
                return Err(format!("unsupported protocol header {header:02x?}"));
            }
        };
        let acceptor = ConnectionAcceptor::builder()
            .container_id("onramp-dps")
            .max_frame_size(self.limits.max_frame_bytes)
            .channel_max(self.limits.max_sessions.saturating_sub(1))
            .idle_time_out(u32::try_from(self.limits.idle_timeout.as_millis()).unwrap_or(u32::MAX))
            .build();
        let stream = guard::FrameGuard::new(stream, self.limits.max_frame_bytes as usize);
        let mut connection = tokio::time::timeout_at(open_by, acceptor.accept(stream))
            .await
            .map_err(|_| "no Open in time".to_owned())?
            .map_err(|e| format!("opening: {e}"))?;
        let context = Arc::new(ConnectionContext {
            engine: self.engine.clone(),
            config: self.config.clone(),
            limits: self.limits,
            protocol,
            credential,
            client_addr: remote.ip(),
            identity: tokio::sync::Mutex::new(identity),
        });
        session::serve_connection(&mut connection, context, &mut shutdown, open_by).await;
        let _ = connection.close().await;
        Ok(())
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
