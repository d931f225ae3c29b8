//! The IoT Hub side of Onramp.
//!
//! - [`client`]: [`client::HubClient`], the engine's `HubRegistry`: it
//!   creates device identities and sets initial twins in linked hubs through
//!   the IoT Hub service REST API, authenticated by each hub's connection string.
//! - [`companion`]: Onramp's own IoT hub, which implements that REST subset
//!   with its own store, so the whole provisioning flow works on one machine.
//!   `onramp serve` embeds it; `onramp hub serve` runs it alone.
//! - [`events`]: the hub side's metrics, one struct per observable event.
//! - [`latency`]: this node's measured round trip to each linked hub, for
//!   lowest-latency allocation.
//! - [`twin`]: twin documents and their merge rules, shared by both.
#![forbid(unsafe_code)]

pub mod client;
pub mod companion;
pub mod events;
pub mod latency;
pub mod twin;

pub use client::HubClient;
pub use companion::CompanionHub;
