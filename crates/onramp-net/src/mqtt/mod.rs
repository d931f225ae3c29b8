//! MQTT 3.1.1, shared by the provisioning endpoint and the companion hub.
//!
//! Packet encoding and decoding come from `rmqtt-codec`, a `tokio-util`
//! codec that covers the whole 3.1.1 packet set, enforces a maximum packet
//! size while decoding, and was fuzzed (13 M libFuzzer runs, no crash) before
//! we chose it. Onramp does not need a broker (a device's responses must go to
//! that device only, never fan out to other subscribers), so the session
//! logic — CONNECT decided by the application, keep-alive, in-flight and
//! subscription limits — is ours, in [`server`].
//!
//! - [`server`]: the connection loop and the [`server::MqttApp`] /
//!   [`server::MqttSession`] traits an application implements.
//! - [`ws`]: MQTT over WebSockets: the server upgrade and a byte-stream
//!   adapter, so the same loop serves both.
//! - [`client`]: a small client for Onramp's device simulator and tests.
//! - [`topic`]: helpers for the `?$rid=…&k=v` property bags in topics.

pub mod client;
pub mod server;
pub mod topic;
pub mod ws;

pub use rmqtt_codec::v3::{ConnectAckReason, Packet, QoS, SubscribeReturnCode};
pub use server::{
    Admission, ConnectInfo, Incoming, MqttApp, MqttLimits, MqttSession, Outbox, Outgoing, Refusal,
    SessionEnd,
};
