//! [`RecordingHubs`] and [`FixedLatency`]: the hubs a registration lands on.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use onramp_core::ports::{
    DeviceIdentity, HubError, HubLatency, HubRegistry, TwinSetup, TwinSnapshot,
};
use onramp_core::tenant::LinkedHub;

/// A hub registry that remembers what it was asked and can be told to fail.
/// Twins behave as in a hub: set on registration, kept, or carried over.
#[derive(Default)]
pub struct RecordingHubs {
    pub devices: Mutex<BTreeMap<(String, String), DeviceIdentity>>,
    pub twins: Mutex<BTreeMap<(String, String), TwinSnapshot>>,
    pub calls: AtomicU64,
    pub fail_with: Mutex<Option<HubError>>,
}

impl RecordingHubs {
    pub fn device(&self, hub: &str, device_id: &str) -> Option<DeviceIdentity> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(hub.to_owned(), device_id.to_owned()))
            .cloned()
    }

    pub fn count(&self) -> usize {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn fail(&self, error: Option<HubError>) {
        *self.fail_with.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// The twin a hub holds for a device.
    pub fn twin_of(&self, hub: &str, device_id: &str) -> Option<TwinSnapshot> {
        self.twins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(hub.to_owned(), device_id.to_owned()))
            .cloned()
    }

    /// What a device reports through its hub.
    pub fn report(&self, hub: &str, device_id: &str, reported: serde_json::Value) {
        if let (Some(t), serde_json::Value::Object(m)) = (
            self.twins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&(hub.to_owned(), device_id.to_owned())),
            reported,
        ) {
            t.reported.extend(m);
        }
    }

    fn failure(&self) -> Option<HubError> {
        self.fail_with
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        let key = (hub.name.clone(), device.device_id.clone());
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), device.clone());
        let mut twins = self.twins.lock().unwrap_or_else(|e| e.into_inner());
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
        let key = (hub.name.clone(), device_id.to_owned());
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.twins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        Ok(())
    }
}

/// Latencies tests set by hand (host name → milliseconds).
#[derive(Default)]
pub struct FixedLatency(pub Mutex<BTreeMap<String, f64>>);

impl FixedLatency {
    pub fn set(&self, hub: &str, ms: Option<f64>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match ms {
            Some(ms) => m.insert(hub.to_ascii_lowercase(), ms),
            None => m.remove(&hub.to_ascii_lowercase()),
        };
    }
}

impl HubLatency for FixedLatency {
    fn latency_ms(&self, hub: &str) -> Option<f64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hub.to_ascii_lowercase())
            .copied()
    }
}
