//! Observable events of the webhook client, declared as the engine's are
//! (`onramp_core::events`): each struct logs and counts together.
//!
//! - `onramp_webhook_call_seconds{outcome}`: one exchange with a webhook
//! - `onramp_webhook_retries_total`: a busy webhook asked again

use std::time::Duration;

use onramp_core::events::{Metric, MetricKind};

pub const CALL_SECONDS: &str = "onramp_webhook_call_seconds";
pub const RETRIES: &str = "onramp_webhook_retries_total";

/// One exchange with a webhook ended: `ok`, `timeout`, `unreachable`,
/// `status` (an error answer) or `invalid` (not an allocation response).
pub struct WebhookCall {
    pub outcome: &'static str,
    pub seconds: f64,
}

impl WebhookCall {
    pub fn emit(&self) {
        metrics::histogram!(CALL_SECONDS, "outcome" => self.outcome).record(self.seconds);
    }
}

/// A busy webhook is asked again after `wait`.
pub struct WebhookRetry<'a> {
    pub url: &'a str,
    pub status: u16,
    pub retry: u32,
    pub wait: Duration,
}

impl WebhookRetry<'_> {
    pub fn emit(&self) {
        metrics::counter!(RETRIES).increment(1);
        tracing::info!(
            url = self.url,
            status = self.status,
            retry = self.retry,
            wait_ms = self.wait.as_millis() as u64,
            "custom allocation webhook is busy; asking again"
        );
    }
}

/// The webhook client's metrics.
pub const METRICS: &[Metric] = &[
    Metric::new(
        MetricKind::Histogram,
        CALL_SECONDS,
        "Time of one exchange with a custom allocation webhook, in seconds, by outcome.",
    ),
    Metric::new(
        MetricKind::Counter,
        RETRIES,
        "Times a busy custom allocation webhook (HTTP 429 or above) was asked again.",
    ),
];
