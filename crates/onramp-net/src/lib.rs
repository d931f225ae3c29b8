//! Network plumbing shared by Onramp's provisioning endpoints and its
//! companion hub: TLS configuration, the development PKI, and an HTTPS server
//! loop that hands each request the client's certificate chain.
//!
//! - [`tls`]: rustls server and client configurations (aws-lc-rs only).
//! - [`pki`]: a local CA and server certificate for development, created on
//!   first start and reused after.
//! - [`listener`]: the front door: TLS, then HTTP/1.1, HTTP/2, MQTT or AMQP on the
//!   same port, deadlines for every stage before a request, a connection
//!   cap, and graceful shutdown.
//! - [`admission`]: the caps a connection passes right after `accept`
//!   (in all, per client address, handshakes per second per address).
//! - [`body`]: request bodies with a deadline, and the unread rest of a body
//!   thrown away after an early answer.
//! - [`descriptors`]: the open-file limit raised at start, and the
//!   connection cap that keeps descriptors in reserve.
//! - [`amqp`]: the hand-off of AMQP 1.0 connections (over TLS or
//!   WebSockets) to their application.
//! - [`client`]: the client side (TLS, then a WebSocket when asked), for
//!   the simulator's MQTT and AMQP clients and the tests.
//! - [`mqtt`]: MQTT 3.1.1 sessions (and MQTT over WebSockets), a client for
//!   the simulator and tests.
#![forbid(unsafe_code)]

pub mod admission;
pub mod amqp;
pub mod body;
pub mod client;
pub mod descriptors;
pub mod listener;
pub mod mqtt;
pub mod pki;
pub mod tls;

pub use body::BodyTimedOut;
pub use listener::{
    ListenerLimits, PeerCertificates, RemoteAddr, Services, Shutdown, ShutdownTrigger, serve,
    serve_all,
};
