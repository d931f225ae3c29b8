//! Operations whose work has not finished: what a poll answers `assigning`
//! from, and the newest registration of each device, which overtakes an
//! older one still running.

use std::collections::HashMap;
use std::sync::Arc;

use onramp_model::IdKey;

use super::Engine;

#[derive(Default)]
pub(super) struct InFlightOps {
    pub(super) by_operation: HashMap<String, InFlight>,
    /// Per device (`service/key`) with operations running: the newest of
    /// them, and how many there are. An older one still running (a webhook
    /// being retried, say) must not overwrite what a newer one recorded.
    latest: HashMap<String, (String, usize)>,
}

#[derive(Debug, Clone)]
pub(super) struct InFlight {
    pub(super) service: String,
    pub(super) registration_key: IdKey,
    pub(super) registration_id: String,
    pub(super) overtaken: Arc<Overtaken>,
}

/// Set when a newer registration of the same device starts: an older one
/// stops waiting on its webhook and records nothing.
#[derive(Debug, Default)]
pub(super) struct Overtaken {
    happened: std::sync::atomic::AtomicBool,
    pub(super) wake: tokio::sync::Notify,
}

impl Overtaken {
    pub(super) fn signal(&self) {
        self.happened
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    pub(super) fn happened(&self) -> bool {
        self.happened.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// An operation in the in-flight map; removed when dropped.
pub(super) struct Running<'a> {
    engine: &'a Engine,
    operation_id: String,
    /// `service/key`: the device the operation registers.
    device: String,
    pub(super) overtaken: Arc<Overtaken>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut ops = self.engine.lock_in_flight();
        ops.by_operation.remove(&self.operation_id);
        if let Some((_, running)) = ops.latest.get_mut(&self.device) {
            *running -= 1;
            if *running == 0 {
                ops.latest.remove(&self.device);
            }
        }
    }
}

impl Engine {
    /// Marks an operation as running until the guard drops, however the
    /// registration ends, and tells the device's previous newest operation,
    /// if one still runs, that it is overtaken.
    pub(super) fn running(&self, operation_id: &str, op: InFlight) -> Running<'_> {
        let device = format!("{}/{}", op.service, op.registration_key);
        let overtaken = op.overtaken.clone();
        let mut ops = self.lock_in_flight();
        let newest = ops
            .latest
            .entry(device.clone())
            .or_insert_with(|| (String::new(), 0));
        let previous = std::mem::replace(&mut newest.0, operation_id.to_owned());
        newest.1 += 1;
        if let Some(older) = ops.by_operation.get(&previous) {
            older.overtaken.signal();
        }
        ops.by_operation.insert(operation_id.to_owned(), op);
        drop(ops);
        Running {
            engine: self,
            operation_id: operation_id.to_owned(),
            device,
            overtaken,
        }
    }

    pub(super) fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, InFlightOps> {
        // A poisoned map only means another task panicked mid-insert; the data is still usable.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}
