//! Network plumbing shared by Onramp's provisioning endpoints and its
//! companion hub: TLS configuration, the development PKI, and an HTTPS server
//! loop that hands each request the client's certificate chain.
//!
//! - [`tls`]: rustls server and client configurations (aws-lc-rs only).
//! - [`pki`]: a local CA and server certificate for development, created on
//!   first start and reused after.
//! - [`https`]: serve an axum router over TLS, HTTP/1.1 and HTTP/2, with
//!   graceful shutdown.
#![forbid(unsafe_code)]

pub mod https;
pub mod pki;
pub mod tls;

pub use https::{PeerCertificates, RemoteAddr, serve_https};
