//! [`RecordingHubs`] and [`FixedLatency`]: the hubs a registration lands on.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use onramp_core::ports::{
    DeviceIdentity, HubError, HubLatency, HubRegistry, TwinSetup, TwinSnapshot,
};
use onramp_core::tenant::LinkedHub;

use crate::lock;

/// What the fakes hold per device: keyed by hub name and device ID.
type PerDevice<T> = Mutex<BTreeMap<(String, String), T>>;

/// A hub registry that remembers what it was asked and can be told to fail.
/// Twins behave as in a hub: set on registration, kept, or carried over.
#[derive(Default)]
pub struct RecordingHubs {
    pub devices: PerDevice<DeviceIdentity>,
    pub twins: PerDevice<TwinSnapshot>,
    pub calls: AtomicU64,
    pub fail_with: Mutex<Option<HubError>>,
}

fn device_key(hub: &str, device_id: &str) -> (String, String) {
    (hub.to_owned(), device_id.to_owned())
}

/// What `map` holds for `device_id` on `hub`.
fn held<T: Clone>(map: &PerDevice<T>, hub: &str, device_id: &str) -> Option<T> {
    lock(map).get(&device_key(hub, device_id)).cloned()
}

impl RecordingHubs {
    pub fn device(&self, hub: &str, device_id: &str) -> Option<DeviceIdentity> {
        held(&self.devices, hub, device_id)
    }

    pub fn count(&self) -> usize {
        lock(&self.devices).len()
    }

    pub fn fail(&self, error: Option<HubError>) {
        *lock(&self.fail_with) = error;
    }

    /// The twin a hub holds for a device.
    pub fn twin_of(&self, hub: &str, device_id: &str) -> Option<TwinSnapshot> {
        held(&self.twins, hub, device_id)
    }

    /// What a device reports through its hub.
    pub fn report(&self, hub: &str, device_id: &str, reported: serde_json::Value) {
        let mut twins = lock(&self.twins);
        let twin = twins.get_mut(&device_key(hub, device_id));
        if let (Some(t), serde_json::Value::Object(m)) = (twin, reported) {
            t.reported.extend(m);
        }
    }

    fn failure(&self) -> Option<HubError> {
        lock(&self.fail_with).clone()
    }
}

#[async_trait]
impl HubRegistry for RecordingHubs {
    async fn register_device(
        &self,
        hub: &LinkedHub,
        device: &DeviceIdentity,
    ) -> Result<(), HubError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let key = device_key(&hub.name, &device.device_id);
        lock(&self.devices).insert(key.clone(), device.clone());
        let mut twins = lock(&self.twins);
        match &device.twin {
            TwinSetup::Initial(t) => {
                twins.insert(
                    key,
                    TwinSnapshot {
                        tags: t.tags.clone().unwrap_or_default(),
                        desired: t.desired().cloned().unwrap_or_default(),
                        reported: Default::default(),
                    },
                );
            }
            TwinSetup::Keep => {
                twins.entry(key).or_default();
            }
            TwinSetup::Migrate(t) => {
                twins.insert(key, t.clone());
            }
        }
        Ok(())
    }

    async fn twin(
        &self,
        hub: &LinkedHub,
        device_id: &str,
    ) -> Result<Option<TwinSnapshot>, HubError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        Ok(self.twin_of(&hub.name, device_id))
    }

    async fn remove_device(&self, hub: &LinkedHub, device_id: &str) -> Result<(), HubError> {
        let key = device_key(&hub.name, device_id);
        lock(&self.devices).remove(&key);
        lock(&self.twins).remove(&key);
        Ok(())
    }
}

/// Latencies tests set by hand (host name → milliseconds).
#[derive(Default)]
pub struct FixedLatency(pub Mutex<BTreeMap<String, f64>>);

impl FixedLatency {
    pub fn set(&self, hub: &str, ms: Option<f64>) {
        let mut m = lock(&self.0);
        match ms {
            Some(ms) => m.insert(hub.to_ascii_lowercase(), ms),
            None => m.remove(&hub.to_ascii_lowercase()),
        };
    }
}

impl HubLatency for FixedLatency {
    fn latency_ms(&self, hub: &str) -> Option<f64> {
        lock(&self.0).get(&hub.to_ascii_lowercase()).copied()
    }
}
