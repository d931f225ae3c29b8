//! Network plumbing shared by Onramp's provisioning endpoints and its
//! companion hub: TLS configuration, the development PKI, and an HTTPS server
//! loop that hands each request the client's certificate chain.
//!
//! - [`tls`]: rustls server and client configurations (aws-lc-rs only).
//! - [`pki`]: a local CA and server certificate for development, created on
//!   first start and reused after.
//! - [`listener`]: the front door: TLS, then HTTP/1.1, HTTP/2 or MQTT on the
//!   same port, with graceful shutdown.
//! - [`mqtt`]: MQTT 3.1.1 sessions (and MQTT over WebSockets), a client for
//!   the simulator and tests.
#![forbid(unsafe_code)]

pub mod listener;
pub mod mqtt;
pub mod pki;
pub mod tls;

pub use listener::{
    ListenerLimits, PeerCertificates, RemoteAddr, Services, Shutdown, ShutdownTrigger, serve,
    serve_all,
};
