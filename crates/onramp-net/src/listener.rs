//! The front door: one TLS listener per port, serving HTTP/1.1 and HTTP/2
//! (device API, service API, hub REST API, WebSocket upgrades) and raw MQTT
//! on the same socket. After the handshake the first byte tells them apart
//! (an MQTT connection starts with CONNECT, 0x10; HTTP starts with a method
//! or the HTTP/2 preface), or the ALPN protocol `mqtt` does.
//!
//! So Onramp can listen on 443 and 8883 with the same handler, and a test
//! (or a deployment behind one port) can use a single port for everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::mqtt::{MqttApp, MqttLimits};

/// The certificate chain the client presented (leaf first); empty if none.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// The client's socket address.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// Tells every connection that the server is stopping.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }

    /// Completes when the shutdown is triggered (or its trigger dropped).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

/// What one listener serves.
#[derive(Clone)]
pub struct Services {
    pub http: Router,
    /// Raw MQTT connections; `None` serves HTTP only.
    pub mqtt: Option<Arc<dyn MqttApp>>,
    pub mqtt_limits: MqttLimits,
}

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// A client must finish its TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// A client must send its first bytes (and request headers) within this time.
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            max_connections: 50_000,
        }
    }
}

/// Serves the same `services` on every listener (the HTTPS port and a
/// dedicated MQTT port, say) until `shutdown`.
pub async fn serve_all(
    listeners: Vec<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    services: Services,
    limits: ListenerLimits,
    shutdown: Shutdown,
) {
    futures_util::future::join_all(
        listeners
            .into_iter()
            .map(|l| serve(l, tls.clone(), services.clone(), limits, shutdown.clone())),
    )
    .await;
}

/// Serves `services` on `listener` until `shutdown`, then lets open HTTP
/// requests finish (up to 10 s) and closes MQTT connections.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    services: Services,
    limits: ListenerLimits,
    shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.wait() => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let services = services.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let (_, session) = tls.get_ref();
            let peer = PeerCertificates(Arc::new(
                session
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
            ));
            let alpn_mqtt = session.alpn_protocol() == Some(b"mqtt");
            // Room for the one byte that tells MQTT from HTTP, no more: HTTP
            // and MQTT read in large chunks, which pass a drained BufReader
            // by, so a bigger buffer would only cost memory per connection.
            let mut stream = BufReader::with_capacity(1, tls);
            let is_mqtt = match &services.mqtt {
                None => false,
                Some(_) if alpn_mqtt => true,
                Some(_) => {
                    match tokio::time::timeout(limits.header_timeout, stream.fill_buf()).await {
                        Ok(Ok([])) => return,
                        Ok(Ok(bytes)) => bytes[0] == 0x10,
                        Ok(Err(_)) | Err(_) => return,
                    }
                }
            };
            if is_mqtt {
                if let Some(app) = services.mqtt {
                    crate::mqtt::server::run(
                        stream,
                        app,
                        peer,
                        remote,
                        false,
                        services.mqtt_limits,
                        shutdown.receiver(),
                    )
                    .await;
                }
                return;
            }
            let router = services.http;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req.extensions_mut().insert(RemoteAddr(remote));
                router.clone().oneshot(req)
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test]
    async fn serves_http1_and_http2_over_tls_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            crate::pki::load_or_create(dir.path(), &crate::pki::default_host_names()).unwrap();
        let tls = crate::tls::server_config(
            &pki.server_chain_pem,
            &pki.server_key_pem,
            &[b"h2", b"http/1.1"],
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = Router::new().route(
            "/hello",
            get(
                |axum::Extension(peer): axum::Extension<PeerCertificates>| async move {
                    format!("hello, {} certificates", peer.0.len())
                },
            ),
        );
        let (stop, shutdown) = Shutdown::new();
        let services = Services {
            http: router,
            mqtt: None,
            mqtt_limits: MqttLimits::default(),
        };
        let server = tokio::spawn(serve(
            listener,
            Arc::new(tls),
            services,
            ListenerLimits::default(),
            shutdown,
        ));
        let mut client_tls = crate::tls::client_config(Some(&pki.ca_pem)).unwrap();
        client_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls)
            .build()
            .unwrap();
        let resp = client
            .get(format!("https://localhost:{port}/hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN h2");
        assert_eq!(resp.text().await.unwrap(), "hello, 0 certificates");
        let h1 = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::client_config(Some(&pki.ca_pem)).unwrap())
            .http1_only()
            .build()
            .unwrap();
        let resp = h1
            .get(format!("https://127.0.0.1:{port}/hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .unwrap()
            .unwrap();
    }
}
