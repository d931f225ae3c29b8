//! Observable events of the hub side: each is one struct that logs and
//! counts together, declared as the engine's are (`onramp_core::events`).
//!
//! - `onramp_hub_connected_devices`: devices connected to the companion hub
//! - `onramp_hub_messages_total`: telemetry messages the companion hub stored
//! - `onramp_hub_messages_refused_total{reason}`: telemetry refused as too
//!   large (`too-large`); over a device's rate it counts in
//!   `onramp_throttled_total{limit="hub-messages"}`
//! - `onramp_hub_messages_dropped_total`: stored telemetry dropped by the
//!   retention limits
//! - `onramp_hub_latency_seconds{hub}`: smoothed round trip to a linked hub
//! - `onramp_hub_probe_failures_total{hub}`: latency probes that failed

use onramp_core::events::{Metric, MetricKind};

pub const CONNECTED_DEVICES: &str = "onramp_hub_connected_devices";
pub const MESSAGES: &str = "onramp_hub_messages_total";
pub const LATENCY: &str = "onramp_hub_latency_seconds";
pub const PROBE_FAILURES: &str = "onramp_hub_probe_failures_total";

/// The number of devices connected to the companion hub changed.
pub struct ConnectedDevices {
    pub count: usize,
}

impl ConnectedDevices {
    pub fn emit(&self) {
        metrics::gauge!(CONNECTED_DEVICES).set(self.count as f64);
    }
}

/// The companion hub stored a device's telemetry message.
pub struct MessageStored;

impl MessageStored {
    pub fn emit(&self) {
        metrics::counter!(MESSAGES).increment(1);
    }
}

pub const MESSAGES_REFUSED: &str = "onramp_hub_messages_refused_total";
pub const MESSAGES_DROPPED: &str = "onramp_hub_messages_dropped_total";

/// The companion hub refused a device's message.
pub struct MessageRefused {
    pub reason: &'static str,
}

impl MessageRefused {
    pub fn emit(&self) {
        metrics::counter!(MESSAGES_REFUSED, "reason" => self.reason).increment(1);
    }
}

/// The companion hub dropped stored messages past its retention limits.
pub struct MessagesDropped {
    pub count: u64,
}

impl MessagesDropped {
    pub fn emit(&self) {
        if self.count > 0 {
            metrics::counter!(MESSAGES_DROPPED).increment(self.count);
            tracing::debug!(
                count = self.count,
                "hub telemetry past its retention dropped"
            );
        }
    }
}

/// The companion hub's refusal and drop counters start at 0, so a
/// dashboard sees them before the first refusal.
pub fn start_counters() {
    metrics::counter!(MESSAGES_REFUSED, "reason" => "too-large").increment(0);
    metrics::counter!(MESSAGES_DROPPED).increment(0);
}

/// One latency probe of a linked hub: its smoothed latency, if any, and
/// the probe's failure, if it failed.
pub struct HubProbe<'a> {
    pub hub: &'a str,
    pub smoothed_ms: Option<f64>,
    pub error: Option<&'a str>,
}

impl HubProbe<'_> {
    pub fn emit(&self) {
        if let Some(ms) = self.smoothed_ms {
            metrics::gauge!(LATENCY, "hub" => self.hub.to_owned()).set(ms / 1000.0);
        }
        if let Some(e) = self.error {
            metrics::counter!(PROBE_FAILURES, "hub" => self.hub.to_owned()).increment(1);
            tracing::debug!(hub = %self.hub, error = %e, "hub latency probe failed");
        }
    }
}

/// The hub side's metrics.
pub const METRICS: &[Metric] = &[
    Metric::new(
        MetricKind::Gauge,
        CONNECTED_DEVICES,
        "Devices connected to the companion hub over MQTT now.",
    ),
    Metric::new(
        MetricKind::Counter,
        MESSAGES,
        "Telemetry messages the companion hub received and stored.",
    ),
    Metric::new(
        MetricKind::Counter,
        MESSAGES_REFUSED,
        "Telemetry messages the companion hub refused, by reason (too-large).",
    ),
    Metric::new(
        MetricKind::Counter,
        MESSAGES_DROPPED,
        "Stored telemetry messages the companion hub dropped past its retention limits.",
    ),
    Metric::new(
        MetricKind::Gauge,
        LATENCY,
        "Smoothed TCP and TLS handshake time to a linked hub, in seconds.",
    ),
    Metric::new(
        MetricKind::Counter,
        PROBE_FAILURES,
        "Latency probes of a linked hub that failed.",
    ),
];
