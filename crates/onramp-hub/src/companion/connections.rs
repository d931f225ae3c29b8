//! Devices connected to the companion hub right now, so that a twin change
//! made through the REST API reaches the device at once, whichever protocol
//! it connected with.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use onramp_net::mqtt::{Outbox, Outgoing};

/// The way back to one connected device.
pub trait DeviceChannel: Send + Sync {
    /// Pushes a desired-properties patch (with its `$version`); whether it
    /// was queued.
    fn push_desired(&self, version: i64, patch: Bytes) -> bool;
    /// Ends the device's connection (another connection replaced it).
    fn close(&self);
}

impl DeviceChannel for Outbox {
    fn push_desired(&self, version: i64, patch: Bytes) -> bool {
        self.push(Outgoing::at_least_once(
            format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            patch,
        ))
    }

    fn close(&self) {
        Outbox::close(self);
    }
}

struct Attached {
    id: u64,
    channel: Box<dyn DeviceChannel>,
    wants_desired: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct Connections {
    devices: Mutex<HashMap<String, Attached>>,
    next: AtomicU64,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a device's connection. Like IoT Hub, a second connection of
    /// the same device closes the first.
    pub fn attach(
        &self,
        device_id: &str,
        channel: Box<dyn DeviceChannel>,
        wants_desired: Arc<AtomicBool>,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let previous = self.lock().insert(
            device_id.to_ascii_lowercase(),
            Attached {
                id,
                channel,
                wants_desired,
            },
        );
        if let Some(old) = previous {
            old.channel.close();
        }
        let count = self.lock().len();
        crate::events::ConnectedDevices { count }.emit();
        id
    }

    pub fn detach(&self, device_id: &str, id: u64) {
        let key = device_id.to_ascii_lowercase();
        let mut devices = self.lock();
        if devices.get(&key).is_some_and(|a| a.id == id) {
            devices.remove(&key);
        }
        crate::events::ConnectedDevices {
            count: devices.len(),
        }
        .emit();
    }

    pub fn is_connected(&self, device_id: &str) -> bool {
        self.lock().contains_key(&device_id.to_ascii_lowercase())
    }

    /// Sends a desired-properties patch to the device if it listens for one.
    pub fn notify_desired(&self, device_id: &str, version: i64, patch: Bytes) -> bool {
        let devices = self.lock();
        let Some(a) = devices.get(&device_id.to_ascii_lowercase()) else {
            return false;
        };
        if !a.wants_desired.load(Ordering::Relaxed) {
            return false;
        }
        a.channel.push_desired(version, patch)
    }
}
