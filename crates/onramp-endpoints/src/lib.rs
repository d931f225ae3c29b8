//! Onramp's protocol endpoints. Each decodes its protocol into the engine's
//! protocol-neutral requests and encodes the answers back; none holds a
//! product rule.
//!
//! - [`https`]: the HTTPS listener's application: the DPS device API, the DPS
//!   service API, `/metrics` and `/health`, with Azure-compatible routing,
//!   error bodies and headers.
#![forbid(unsafe_code)]

pub mod https;

pub use https::{AppState, EndpointConfig, app};
