//! Test support for Onramp's crates: in-memory fakes of the engine's ports
//! and the store conformance suite. Nothing here ships as a backend.
//!
//! - [`MemoryStore`]: a `Store` with the same semantics as the real
//!   backends (it passes the conformance suite), so engine tests run on a
//!   faithful fake.
//! - [`RecordingHubs`] and [`FixedLatency`]: a hub registry that remembers
//!   what it was asked, and hub latencies set by hand.
//! - [`ScriptedWebhook`]: an allocation webhook that answers what it is told.
//! - [`ManualClock`]: a clock tests set.
//! - [`given`]: a record stored as a test's setup; [`stored`]: a record
//!   as the store holds it; [`default_service`]: a
//!   store with one service; [`engine_over`]: an engine over a store with
//!   recording hubs and a clock set by hand.
//! - [`swtpm`]: a software TPM with the SDKs' keys, and a shim for SDKs
//!   that speak the TPM simulator protocol.
//! - [`ek_cert`]: a TPM manufacturer's CA that issues EK certificates;
//!   [`tpm_device`]: an engine with a TPM device enrolled.
//! - [`postgres`]: a PostgreSQL database of a test's own, dropped after it.
//! - [`conformance`]: the checks every `Store` must pass, one test per case
//!   through [`store_conformance!`].
//!
//! onramp-core's own unit tests cannot use this crate (it depends on
//! onramp-core, so its types would be a second copy); tests that need fakes
//! live in onramp-core's `tests/`.

mod clock;
pub mod conformance;
pub mod ek_cert;
mod hubs;
pub mod postgres;
mod store;
pub mod swtpm;
pub mod tpm_device;
mod webhook;

pub use clock::ManualClock;
pub use hubs::{FixedLatency, RecordingHubs};
pub use store::MemoryStore;
pub use webhook::ScriptedWebhook;

use std::sync::Arc;

use onramp_core::engine::{Engine, EngineConfig};
use onramp_core::ports::{Precondition, Store, StoreExt, StoredRecord};
use onramp_core::tenant::ProvisioningService;
use onramp_model::{IdKey, UtcTime};

/// Locks `m`; a test that panicked while holding it leaves the data as it was.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stores `record` in `service` whatever is there, as a test's setup, and
/// returns it as stored.
pub async fn given<T: StoredRecord>(store: &dyn Store, service: &str, record: T) -> T {
    store
        .put(service, record, Precondition::None, UtcTime::now())
        .await
        .expect("storing a test's setup")
}

/// The record `id` of `service`, if the store has one; a failed read fails
/// the test.
pub async fn stored<T: StoredRecord>(store: &dyn Store, service: &str, id: &str) -> Option<T> {
    store
        .get::<T>(service, &IdKey::of(id))
        .await
        .expect("reading a test's record")
}

/// A store holding service `default` (ID scope `scope`, with its owner
/// policy) as a test's setup: the store and the service.
pub async fn default_service(scope: u32) -> (Arc<MemoryStore>, ProvisioningService) {
    let store = Arc::new(MemoryStore::new());
    let service = conformance::service("default", scope);
    store
        .create_service(&service, &[conformance::owner("b3duZXI=")])
        .await
        .expect("storing a test's service");
    (store, service)
}

/// An engine with the default configuration over `store`, with hubs that
/// record what they are asked and a clock set by hand (starting at `now`).
pub fn engine_over(
    store: Arc<MemoryStore>,
    now: UtcTime,
) -> (Arc<Engine>, Arc<RecordingHubs>, Arc<ManualClock>) {
    let hubs = Arc::new(RecordingHubs::default());
    let clock = Arc::new(ManualClock::new(now));
    let engine = Arc::new(Engine::new(
        store,
        hubs.clone(),
        clock.clone(),
        EngineConfig::default(),
    ));
    (engine, hubs, clock)
}
