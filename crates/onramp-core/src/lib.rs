//! Onramp's provisioning engine: the product's rules, free of I/O.
//!
//! A device request arrives here already decoded by an endpoint as a
//! protocol-neutral [`engine::RegisterRequest`]; the [`engine::Engine`] runs
//! attest → allocate → register in a hub → record, and returns a value the
//! endpoint encodes in its own protocol. Operators' requests go through
//! [`admin::Admin`], which holds the rules of the service API (validation,
//! key generation, ETags, paging).
//!
//! Layout:
//! - [`ports`]: the traits the engine needs from the outside (`Store`,
//!   `HubRegistry`, `AllocationWebhook`, `HubLatency`, `Clock`) and the
//!   records they exchange.
//! - [`throttle`]: Azure-style throttling (429 with Retry-After) from token
//!   buckets per service, per device and per client address's failures;
//! - [`tenant`]: provisioning services (tenants), access policies, linked hubs;
//!   [`linked_hubs`]: the rules of linking and unlinking hubs.
//! - [`sas`], [`keys`], [`connection_string`]: shared access signatures and secrets.
//! - [`attest`]: who is this device, and which enrollment vouches for it.
//! - [`tpm`]: TPM attestation's keys, activation blob and token check.
//! - [`allocate`]: which hub it goes to; [`custom`]: the allocation webhook's
//!   contract; [`reprovision`]: what happens when a device registers again.
//! - [`engine`]: the registration state machine.
//! - [`admin`], [`validate`], [`x509`]: the service API's rules.
//! - [`auth`]: service API authentication against access policies.
//! - [`events`]: what the engine logs and counts, one struct per event.
//! - [`diagnostics`]: an entry per registration attempt, written to the
//!   store off the hot path, for the operator's "why was it refused?".
//! - [`error`]: one error type, carrying the Azure error code and a message
//!   that names the field and the fix.
#![forbid(unsafe_code)]

pub mod admin;
pub mod allocate;
pub mod attest;
pub mod auth;
pub mod connection_string;
pub mod custom;
pub mod diagnostics;
pub mod engine;
pub mod error;
pub mod events;
pub mod keys;
pub mod linked_hubs;
pub mod ports;
pub mod reprovision;
pub mod rights;
pub mod sas;
pub mod tenant;
pub mod throttle;
pub mod tpm;
pub mod validate;
pub mod x509;

pub use error::ProvisioningError;
