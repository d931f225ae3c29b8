//! Onramp's protocol endpoints. Each decodes its protocol into the engine's
//! protocol-neutral requests and encodes the answers back; none holds a
//! product rule.
//!
//! - [`amqp`]: the DPS device API over AMQP 1.0 (and AMQP over WebSockets).
//! - [`console`]: the web console's files, served to browsers on the HTTPS
//!   listener.
//! - [`https`]: the HTTPS listener's application: the DPS device API, the DPS
//!   service API and `/health`, with Azure-compatible routing, error bodies
//!   and headers, and WebSocket upgrades for MQTT.
//! - [`metrics`]: Prometheus metrics on a listener of their own (loopback by
//!   default), never on the public port.
//! - [`mqtt`]: the DPS device API over MQTT, and the router that sends each
//!   MQTT connection to DPS or to the embedded hub.
//! - [`wire`]: the device API's messages whatever the transport: register
//!   bodies decoded, answers and errors encoded as the SDKs expect them.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod console;
pub mod https;
pub mod metrics;
pub mod mqtt;
pub mod wire;

pub use https::{AppState, EndpointConfig, app};
