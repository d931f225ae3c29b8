//! The client side of the front door: TLS to a server, then, when the
//! transport asks for it, a WebSocket upgrade whose binary messages carry the
//! protocol's bytes. The device simulator's MQTT and AMQP clients and the
//! tests open their connections here.

use std::fmt::Debug;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::mqtt::ws::WsStream;

/// How to reach the server.
#[derive(Debug, Clone)]
pub enum Transport {
    Tls,
    /// The protocol inside a WebSocket on `path`, offering `subprotocol`.
    WebSocket {
        path: String,
        subprotocol: String,
    },
}

/// A failure to reach the server, naming what failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// A byte stream to a server, over TLS or inside a WebSocket.
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin + Debug + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + Debug + 'static> ClientIo for T {}

/// A TLS connection to `host:port` (the host is also the TLS server name).
pub async fn connect_tls_stream(
    address: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let host = onramp_model::authority::host(address);
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| ConnectError(format!("{address}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ConnectError(format!("server name '{host}': {e}")))?;
    TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError(format!("TLS with {address}: {e}")))
}

/// TLS to `address`, then a WebSocket upgrade when the transport asks for one.
pub async fn open(
    address: &str,
    tls: Arc<rustls::ClientConfig>,
    transport: &Transport,
) -> Result<Box<dyn ClientIo>, ConnectError> {
    let stream = connect_tls_stream(address, tls).await?;
    let io: Box<dyn ClientIo> = match transport {
        Transport::Tls => Box::new(stream),
        Transport::WebSocket { path, subprotocol } => {
            let mut request = format!("wss://{address}{path}")
                .into_client_request()
                .map_err(|e| ConnectError(format!("WebSocket request: {e}")))?;
            let protocol = HeaderValue::from_str(subprotocol)
                .map_err(|e| ConnectError(format!("WebSocket subprotocol: {e}")))?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol);
            let (ws, _) = tokio_tungstenite::client_async(request, stream)
                .await
                .map_err(|e| ConnectError(format!("WebSocket upgrade: {e}")))?;
            Box::new(WsStream::new(ws))
        }
    };
    Ok(io)
}
