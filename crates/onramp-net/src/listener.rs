//! The front door: one TLS listener per port, serving HTTP/1.1 and HTTP/2
//! (device API, service API, hub REST API, WebSocket upgrades), raw MQTT and
//! AMQP 1.0 on the same socket. After the handshake the ALPN protocol `mqtt`,
//! or else the first byte, tells them apart (an MQTT connection starts with
//! CONNECT, 0x10; AMQP with its protocol header `AMQP…`; HTTP with a method
//! or the HTTP/2 preface).
//!
//! So Onramp can listen on 443 and 8883 with the same handler, and a test
//! (or a deployment behind one port) can use a single port for everything.
//!
//! Every stage before a client has proven anything has a deadline: the TLS
//! handshake; then, counted from its end, the first byte and the first
//! request's headers (HTTP) or a complete CONNECT (MQTT); the whole body of
//! each request; and the idle time between requests. Connections are capped
//! in all (see [`crate::descriptors`] for why the cap sits below the
//! open-file limit) and per client address ([`crate::admission`]); one over
//! a cap is closed right after `accept`, before any TLS work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::admission::{AddressLimits, Admission, Slot};
use crate::amqp::{AmqpApp, AmqpConnection};
use crate::body::GuardedBody;
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
    /// Raw AMQP connections; `None` refuses them. The application keeps
    /// its own deadlines, counted from the end of the TLS handshake.
    pub amqp: Option<Arc<dyn AmqpApp>>,
}

/// Limits of the listener. The MQTT CONNECT deadline is
/// [`MqttLimits::connect_timeout`], counted from the end of the handshake.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// A client must finish its TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// An HTTP client must send a request's headers within this time: the
    /// first request's counted from the end of the handshake, later ones from
    /// the end of the previous request (so it is also the idle timeout).
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this time after its headers.
    pub body_timeout: Duration,
    /// After an early answer (401, 413…), up to this many bytes of the body
    /// are read and thrown away, so HTTP/1.1 clients that send the whole body
    /// before reading see the answer and not a reset connection.
    pub max_discard_bytes: u64,
    /// Connections served at once; more are closed right after `accept`.
    pub max_connections: usize,
    /// Connections and handshakes per client address.
    pub per_address: AddressLimits,
    /// When the server stops, open connections get this long to finish.
    pub close_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_discard_bytes: 32 * 1024 * 1024,
            max_connections: 50_000,
            per_address: AddressLimits::default(),
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `services` on `listener` until `shutdown`; see [`serve_all`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    services: Services,
    limits: ListenerLimits,
    shutdown: Shutdown,
) {
    serve_all(vec![listener], tls, services, limits, shutdown).await;
}

/// What every connection shares.
struct Shared {
    acceptor: TlsAcceptor,
    services: Services,
    http: auto::Builder<TokioExecutor>,
    limits: ListenerLimits,
    shutdown: Shutdown,
    /// One per connection being served, on every listener together.
    permits: Arc<Semaphore>,
    admission: Arc<Admission>,
    connections: TaskTracker,
}

/// Serves the same `services` on every listener (the HTTPS port and a
/// dedicated MQTT port, say) until `shutdown`, with one connection cap for
/// all of them. Then it stops accepting (taking what the kernel had already
/// accepted), lets the requests in progress or on their way finish, closes
/// idle connections after a moment and MQTT connections at once, for up to
/// [`ListenerLimits::close_timeout`].
pub async fn serve_all(
    listeners: Vec<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    services: Services,
    limits: ListenerLimits,
    shutdown: Shutdown,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    http.http2().timer(TokioTimer::new());
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        services,
        http,
        limits,
        shutdown: shutdown.clone(),
        permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        admission: Arc::new(Admission::new(limits.per_address, limits.max_connections)),
        connections: TaskTracker::new(),
    });
    futures_util::future::join_all(listeners.into_iter().map(|l| accept(l, shared.clone()))).await;
    let connections = &shared.connections;
    connections.close();
    let open = connections.len();
    if tokio::time::timeout(limits.close_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} of {open} connections still open after {:?}; cutting them",
            connections.len(),
            limits.close_timeout
        );
    } else if open > 0 {
        tracing::info!("closed {open} connections");
    }
}

/// Accepts connections on `listener` until the shutdown.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let shutdown = shared.shutdown.clone();
    loop {
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
        if let Some(slot) = shared.admission.admit_connection(&shared.permits, remote) {
            let _ = tcp.set_nodelay(true);
            shared
                .connections
                .spawn(connection(shared.clone(), tcp, remote, slot));
        }
    }
    // Connections the kernel has already accepted for us would be reset when
    // the listener closes; take them, so their requests are answered.
    use futures_util::FutureExt;
    while let Some(Ok((tcp, remote))) = listener.accept().now_or_never() {
        let Some(slot) = shared.admission.admit_connection(&shared.permits, remote) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        shared
            .connections
            .spawn(connection(shared.clone(), tcp, remote, slot));
    }
}

/// One connection, from the TLS handshake to its end.
async fn connection(shared: Arc<Shared>, tcp: TcpStream, remote: SocketAddr, _slot: Slot) {
    let limits = shared.limits;
    let tls = tokio::select! {
        tls = tokio::time::timeout(limits.handshake_timeout, shared.acceptor.accept(tcp)) => match tls {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                return;
            }
        },
        () = stop_lingered(&shared.shutdown) => return,
    };
    let handshake_done = Instant::now();
    let (_, session) = tls.get_ref();
    let peer = PeerCertificates(Arc::new(
        session
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default(),
    ));
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let connect_by = handshake_done + shared.services.mqtt_limits.connect_timeout;
    // Room for the one byte that tells MQTT from HTTP, no more: HTTP
    // and MQTT read in large chunks, which pass a drained BufReader
    // by, so a bigger buffer would only cost memory per connection.
    let mut stream = BufReader::with_capacity(1, tls);
    let sniff = shared.services.mqtt.is_some() || shared.services.amqp.is_some();
    let first = match (sniff, alpn.as_deref()) {
        (false, _) => None,
        (true, Some(b"mqtt")) => Some(MQTT_CONNECT),
        (true, negotiated) => {
            // Until the first byte the client may speak any protocol, so
            // the stricter of the deadlines applies, unless it asked for
            // HTTP by ALPN.
            let first_byte_by = match negotiated {
                Some(_) => handshake_done + limits.header_timeout,
                None => connect_by.min(handshake_done + limits.header_timeout),
            };
            let first = tokio::select! {
                first = tokio::time::timeout_at(first_byte_by, stream.fill_buf()) => first,
                () = stop_lingered(&shared.shutdown) => return,
            };
            match first {
                Ok(Ok([])) => return,
                Ok(Ok(bytes)) => Some(bytes[0]),
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(%remote, "nothing sent after the TLS handshake; closing");
                    return;
                }
            }
        }
    };
    match (first, &shared.services.mqtt, &shared.services.amqp) {
        (Some(MQTT_CONNECT), Some(app), _) => {
            crate::mqtt::server::run(
                stream,
                app.clone(),
                peer,
                remote,
                false,
                shared.services.mqtt_limits,
                connect_by,
                shared.shutdown.receiver(),
            )
            .await;
        }
        (Some(crate::amqp::FIRST_BYTE), _, Some(app)) => {
            app.serve(AmqpConnection {
                stream: Box::new(stream),
                peer,
                remote,
                websocket: false,
                accepted_at: handshake_done,
                shutdown: shared.shutdown.receiver(),
            })
            .await;
        }
        _ => http(&shared, stream, peer, remote, handshake_done).await,
    }
}

/// The first byte of an MQTT CONNECT packet.
const MQTT_CONNECT: u8 = 0x10;

/// How long a stopping connection with no request in progress stays: to
/// write out its last answer, or to receive a request already on its way.
const STOP_LINGER: Duration = Duration::from_millis(500);

/// Whether a connection has a request in progress, and since when it has not.
struct Activity {
    busy: AtomicUsize,
    idle_since: Mutex<Instant>,
    changed: Notify,
}

/// A request in progress on its connection; dropped when both its answer
/// is ready and its body is read (or thrown away).
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Arc<Busy> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
        Arc::new(Busy(self.clone()))
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    /// When the connection will have been idle too long; `None` while busy.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        Some(since + timeout)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// Serves HTTP/1.1 or HTTP/2 on a connection until it ends, it is idle
/// (no request in progress) for longer than the header timeout, or the
/// server stops.
async fn http(
    shared: &Arc<Shared>,
    stream: BufReader<tokio_rustls::server::TlsStream<TcpStream>>,
    peer: PeerCertificates,
    remote: SocketAddr,
    handshake_done: Instant,
) {
    let limits = shared.limits;
    let activity = Arc::new(Activity {
        busy: AtomicUsize::new(0),
        idle_since: Mutex::new(handshake_done),
        changed: Notify::new(),
    });
    let router = shared.services.http.clone();
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = requests.begin();
        let (mut parts, body) = req.into_parts();
        let waits_for_continue = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        // HTTP/2 ends an unread body with a stream reset the client expects.
        let discard = parts.version < http::Version::HTTP_2;
        let body = GuardedBody::new(
            body,
            limits.body_timeout,
            limits.max_discard_bytes,
            discard,
            waits_for_continue,
            busy.clone(),
        );
        parts.extensions.insert(peer.clone());
        parts.extensions.insert(RemoteAddr(remote));
        let answer = router.clone().oneshot(hyper::Request::from_parts(
            parts,
            axum::body::Body::new(body),
        ));
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let conn = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stopping_since: Option<Instant> = None;
    let mut told_to_finish = false;
    loop {
        // Once stopping, a connection finishes the request in progress, or
        // one whose headers are arriving; HTTP/1.1 then closes, HTTP/2 sends
        // GOAWAY and finishes its open streams. One with nothing in progress
        // gets a moment (to write out its last answer, or for a request
        // already on its way), then closes.
        if stopping_since.is_some() && !told_to_finish && activity.is_busy() {
            told_to_finish = true;
            conn.as_mut().graceful_shutdown();
        }
        let idle_by = match stopping_since {
            None => activity.idle_deadline(limits.header_timeout),
            Some(at) => activity
                .idle_deadline(STOP_LINGER)
                .map(|by| by.max(at + STOP_LINGER)),
        };
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = sleep_until_some(idle_by) => {
                if stopping_since.is_none() {
                    tracing::debug!(%remote, "no request within {:?}; closing", limits.header_timeout);
                }
                return;
            }
            () = shared.shutdown.wait(), if stopping_since.is_none() => {
                stopping_since = Some(Instant::now());
            }
        }
    }
}

/// Completes [`STOP_LINGER`] after the shutdown: a connection still in its
/// handshake or before its first byte then gets that long to go on (its
/// request is answered, if only with 503) rather than being cut.
async fn stop_lingered(shutdown: &Shutdown) {
    shutdown.wait().await;
    tokio::time::sleep(STOP_LINGER).await;
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
            amqp: None,
        };
        let server = tokio::spawn(serve(
            listener,
            Arc::new(tls),
            services,
            ListenerLimits::default(),
            shutdown,
        ));
        // A client that offers h2 by ALPN is served HTTP/2; one that offers
        // nothing and speaks only HTTP/1.1 is served that.
        for (h2, host, version) in [
            (true, "localhost", reqwest::Version::HTTP_2),
            (false, "127.0.0.1", reqwest::Version::HTTP_11),
        ] {
            let mut tls = crate::tls::client_config(Some(&pki.ca_pem)).unwrap();
            let mut client = reqwest::Client::builder();
            if h2 {
                tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            } else {
                client = client.http1_only();
            }
            let resp = client
                .use_preconfigured_tls(tls)
                .build()
                .unwrap()
                .get(format!("https://{host}:{port}/hello"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.version(), version, "ALPN h2: {h2}");
            assert_eq!(resp.text().await.unwrap(), "hello, 0 certificates");
        }
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .unwrap()
            .unwrap();
    }
}
