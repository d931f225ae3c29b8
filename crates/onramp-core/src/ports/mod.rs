//! The engine's ports: what it needs from storage, from IoT hubs, from a
//! custom-allocation webhook and from the clock. Implementations live in
//! other crates (`onramp-store`, `onramp-hub`, `onramp-webhook`); in-memory
//! fakes for tests live in the `onramp-testkit` crate.
//!
//! - `store`: the [`Store`] trait, its records and preconditions;
//! - `hubs`: the IoT Hub registry and hub latencies;
//! - `webhook`: the custom-allocation webhook;
//! - `diagnostics`: an entry per registration attempt, which every store
//!   keeps ([`DiagnosticsLog`]).

mod diagnostics;
mod hubs;
mod store;
mod webhook;

pub use diagnostics::*;
pub use hubs::*;
pub use store::*;
pub use webhook::*;

use onramp_model::UtcTime;

/// The time, injected so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UtcTime;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UtcTime {
        UtcTime::now()
    }
}
