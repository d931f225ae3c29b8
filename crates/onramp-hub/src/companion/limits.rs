//! What one device may send the companion hub: IoT Hub's device-to-cloud
//! message size limit, a message rate per device (a token bucket), and how
//! much telemetry the hub keeps (per device, and by age; the oldest goes
//! first).

use std::num::NonZeroU32;
use std::time::Duration;

use onramp_core::throttle::Bucket;

/// The hub's limits on device-to-cloud messages; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// The largest message body, in bytes (IoT Hub's is 256 KiB).
    pub max_message_bytes: usize,
    /// Messages one device may send a second (and at once).
    pub device_messages_per_second: u32,
    /// Messages kept per device; past it the oldest are dropped.
    pub retained_messages_per_device: u64,
    /// Messages older than this are dropped.
    pub retained_message_age: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 256 * 1024,
            device_messages_per_second: 100,
            retained_messages_per_device: 10_000,
            retained_message_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl HubLimits {
    /// From the settings as an operator writes them (the age in seconds).
    pub fn new(
        max_message_bytes: usize,
        device_messages_per_second: u32,
        retained_messages_per_device: u64,
        retained_message_age_seconds: u64,
    ) -> Self {
        Self {
            max_message_bytes,
            device_messages_per_second,
            retained_messages_per_device,
            retained_message_age: Duration::from_secs(retained_message_age_seconds),
        }
    }
}

/// The `limit` label of the hub's rate refusals in `onramp_throttled_total`.
pub const THROTTLE_LIMIT: &str = "hub-messages";

/// Why the hub did not take a message.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageRefusal {
    /// IoT Hub's `MessageTooLarge` (413001).
    TooLarge { size: usize, limit: usize },
    /// IoT Hub's `ThrottlingException` (429001): try again after this.
    Throttled { retry_after: Duration, rate: u32 },
    /// The store could not keep it.
    Unavailable(String),
}

impl MessageRefusal {
    /// Whole seconds to wait, at least one.
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            Self::Throttled { retry_after, .. } => {
                u64::try_from(retry_after.as_nanos().div_ceil(1_000_000_000))
                    .unwrap_or(u64::MAX)
                    .max(1)
            }
            _ => 1,
        }
    }
}

impl std::fmt::Display for MessageRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { size, limit } => write!(
                f,
                "the message is {size} bytes, over this hub's limit of {limit} bytes \
                 (hub.max_message_bytes); send smaller messages"
            ),
            Self::Throttled { rate, .. } => write!(
                f,
                "the device sent more than {rate} messages a second \
                 (hub.device_messages_per_second); retry after {} s",
                self.retry_after_seconds()
            ),
            Self::Unavailable(m) => write!(f, "the message could not be stored: {m}"),
        }
    }
}

/// The size and rate checks, before a message is stored.
pub(crate) struct MessageGate {
    limits: HubLimits,
    rate: Option<Bucket<String>>,
}

impl MessageGate {
    pub fn new(limits: HubLimits) -> Self {
        Self {
            limits,
            rate: NonZeroU32::new(limits.device_messages_per_second)
                .map(|n| Bucket::per_second(THROTTLE_LIMIT, n)),
        }
    }

    pub fn limits(&self) -> HubLimits {
        self.limits
    }

    /// Refuses a message too large, or over the device's rate.
    pub fn admit(&self, device_id: &str, size: usize) -> Result<(), MessageRefusal> {
        let limit = self.limits.max_message_bytes;
        if limit > 0 && size > limit {
            crate::events::MessageRefused {
                reason: "too-large",
            }
            .emit();
            return Err(MessageRefusal::TooLarge { size, limit });
        }
        if let Some(rate) = &self.rate {
            rate.take(&device_id.to_ascii_lowercase())
                .map_err(|retry_after| MessageRefusal::Throttled {
                    retry_after,
                    rate: self.limits.device_messages_per_second,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let at = |ms| {
            MessageRefusal::Throttled {
                retry_after: Duration::from_millis(ms),
                rate: 1,
            }
            .retry_after_seconds()
        };
        assert_eq!(at(0), 1);
        assert_eq!(at(10), 1);
        assert_eq!(at(1000), 1);
        assert_eq!(at(1001), 2);
        assert_eq!(at(2500), 3);
    }

    #[test]
    fn size_then_rate() {
        let gate = MessageGate::new(HubLimits {
            max_message_bytes: 10,
            device_messages_per_second: 1,
            ..HubLimits::default()
        });
        assert!(matches!(
            gate.admit("d", 11),
            Err(MessageRefusal::TooLarge {
                size: 11,
                limit: 10
            })
        ));
        assert_eq!(gate.admit("d", 10), Ok(()));
        assert!(matches!(
            gate.admit("D", 1),
            Err(MessageRefusal::Throttled { rate: 1, .. })
        ));
        assert_eq!(gate.admit("other", 1), Ok(()));
    }
}
