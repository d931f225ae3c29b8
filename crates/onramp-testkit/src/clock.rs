//! [`ManualClock`]: time that moves when a test says so.

use std::sync::Mutex;

use onramp_core::ports::Clock;
use onramp_model::UtcTime;

/// A clock tests can set.
pub struct ManualClock(Mutex<UtcTime>);

impl ManualClock {
    pub fn new(at: UtcTime) -> Self {
        Self(Mutex::new(at))
    }
    pub fn set(&self, at: UtcTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
    pub fn advance_seconds(&self, seconds: i64) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) =
            UtcTime::from_unix_nanos(t.unix_nanos() + i128::from(seconds) * 1_000_000_000)
        {
            *t = next;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UtcTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
