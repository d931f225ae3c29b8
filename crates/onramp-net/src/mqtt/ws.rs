//! MQTT and AMQP over WebSockets. The SDKs upgrade on different paths (`/`,
//! `/mqtt`, `/$iothub/websocket`) and spell the subprotocol `mqtt` or `MQTT`;
//! any path is accepted and the client's spelling is echoed. After the
//! upgrade, [`WsStream`] turns binary frames back into a byte stream so the
//! ordinary MQTT loop serves the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::server::{self, MqttApp, MqttLimits};
use crate::amqp::{AmqpApp, AmqpConnection};
use crate::{PeerCertificates, RemoteAddr};

/// A WebSocket as a byte stream: reads yield the payload of binary frames,
/// each write becomes one binary frame.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
        }
    }
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // Pings are answered by tungstenite itself; text frames carry
                // neither MQTT nor AMQP.
                Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame on an MQTT or AMQP WebSocket",
                    )));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(to_io)
    }
}

/// The first subprotocol the client offered among `names`, in its spelling.
fn subprotocol(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| names.iter().any(|n| p.eq_ignore_ascii_case(n)))
        .map(str::to_owned)
}

/// The subprotocols a WebSocket endpoint speaks, and what it answers a
/// client that offers none of them.
struct Subprotocols {
    names: &'static [&'static str],
    refusal: &'static str,
}

impl Subprotocols {
    /// The first of these the client offered, in its spelling.
    fn offered(&self, headers: &HeaderMap) -> Option<String> {
        subprotocol(headers, self.names)
    }
}

const MQTT: Subprotocols = Subprotocols {
    names: &["mqtt"],
    refusal: "this endpoint speaks MQTT over WebSockets: offer the subprotocol mqtt",
};

/// AMQP over WebSockets: `AMQPWSB10` (the Azure SDKs) or `amqp` (OASIS).
const AMQP: Subprotocols = Subprotocols {
    names: &["AMQPWSB10", "amqp"],
    refusal: "this endpoint speaks AMQP over WebSockets: offer the subprotocol AMQPWSB10",
};

/// Whether a WebSocket upgrade offers an AMQP subprotocol.
pub fn offers_amqp(headers: &HeaderMap) -> bool {
    AMQP.offered(headers).is_some()
}

/// Whether a request asks for a WebSocket upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Whether a WebSocket upgrade offers the MQTT subprotocol.
pub fn offers_mqtt(headers: &HeaderMap) -> bool {
    MQTT.offered(headers).is_some()
}

fn refuse(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(message));
    *resp.status_mut() = status;
    resp
}

/// What a WebSocket upgrade is handed to.
#[derive(Clone)]
pub enum WsApp {
    /// MQTT (subprotocol `mqtt`), under these limits.
    Mqtt(Arc<dyn MqttApp>, MqttLimits),
    /// AMQP (subprotocol `AMQPWSB10` or `amqp`); messages larger than the
    /// `usize` end the connection.
    Amqp(Arc<dyn AmqpApp>, usize),
}

/// Answers a WebSocket upgrade for `app`'s protocol and serves the
/// connection with it once the upgrade completes.
pub fn accept(req: Request<Body>, app: WsApp, shutdown: watch::Receiver<bool>) -> Response<Body> {
    let (protocols, max_message_bytes) = match &app {
        WsApp::Mqtt(_, limits) => (&MQTT, limits.max_packet_bytes as usize),
        WsApp::Amqp(_, max_message_bytes) => (&AMQP, *max_message_bytes),
    };
    upgrade(
        req,
        protocols,
        max_message_bytes,
        move |ws, peer, remote| async move {
            match app {
                WsApp::Mqtt(app, limits) => {
                    let connect_by = tokio::time::Instant::now() + limits.connect_timeout;
                    server::run(ws, app, peer, remote, true, limits, connect_by, shutdown).await;
                }
                WsApp::Amqp(app, _) => {
                    app.serve(AmqpConnection {
                        stream: Box::new(ws),
                        peer,
                        remote,
                        websocket: true,
                        accepted_at: tokio::time::Instant::now(),
                        shutdown,
                    })
                    .await;
                }
            }
        },
    )
}

/// Answers a WebSocket upgrade with the first of `protocols` the client
/// offered and runs `serve` on the connection once the upgrade completes.
fn upgrade<F, Fut>(
    mut req: Request<Body>,
    protocols: &Subprotocols,
    max_message_bytes: usize,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(
            WsStream<TokioIo<hyper::upgrade::Upgraded>>,
            PeerCertificates,
            std::net::SocketAddr,
        ) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let headers = req.headers();
    let Some(protocol) = protocols.offered(headers) else {
        return refuse(StatusCode::BAD_REQUEST, protocols.refusal);
    };
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Key",
        );
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut resp = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is required",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let peer = req
        .extensions()
        .get::<PeerCertificates>()
        .cloned()
        .unwrap_or_default();
    let Some(RemoteAddr(remote)) = req.extensions().get::<RemoteAddr>().copied() else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the connection's address is unknown",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(max_message_bytes + 64);
        config.max_frame_size = Some(max_message_bytes + 64);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(WsStream::new(ws), peer, remote).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}
