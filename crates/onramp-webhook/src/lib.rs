//! [`WebhookClient`]: the engine's `AllocationWebhook` port over HTTPS.
//!
//! Azure DPS's contract: `POST` the allocation request as JSON to the
//! enrollment's `webhookUrl` (whose query usually carries the function's
//! access code) and read an allocation response from a 200. A webhook that
//! answers 429 or above is busy, not wrong: it is asked again on Azure's
//! schedule ([`Retries`]) while the device polls `assigning`. A call that
//! cannot connect, or whose connection closes before any answer, is tried
//! once more at once; each exchange is given up on after the timeout.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use async_trait::async_trait;
use onramp_core::ports::{AllocationWebhook, WebhookError, WebhookTarget};
use onramp_model::allocation::{AllocationRequest, AllocationResponse};

pub mod events;

/// Why a [`WebhookClient`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WebhookClientError {
    #[error("cannot build the webhook HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Largest answer read from a webhook.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How much of an error answer goes into the registration's error message.
const ERROR_EXCERPT: usize = 200;

pub struct WebhookClient {
    http: reqwest::Client,
    timeout: Duration,
    retries: Retries,
}

/// When a busy webhook (HTTP 429 or above) is asked again: after `first`,
/// then after each wait grows by `increment`, `retries` times in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    pub retries: u32,
    pub first: Duration,
    pub increment: Duration,
}

impl Default for Retries {
    /// Azure's: 10 attempts, waits of 1 s, 10 s, 19 s, …
    fn default() -> Self {
        Self {
            retries: 9,
            first: Duration::from_secs(1),
            increment: Duration::from_secs(9),
        }
    }
}

impl Retries {
    /// The wait before retry `n` (0-based).
    fn wait(&self, n: u32) -> Duration {
        self.first.saturating_add(self.increment.saturating_mul(n))
    }
}

impl WebhookClient {
    /// `tls` decides which webhook certificates are trusted.
    pub fn new(tls: rustls::ClientConfig, timeout: Duration) -> Result<Self, WebhookClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("onramp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookClientError::Build)?;
        Ok(Self {
            http,
            timeout,
            retries: Retries::default(),
        })
    }

    /// Asks busy webhooks again on `retries` instead of Azure's schedule.
    pub fn with_retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    async fn call(
        &self,
        target: &WebhookTarget,
        body: &[u8],
    ) -> Result<AllocationResponse, WebhookError> {
        let mut retried = 0;
        loop {
            let started = Instant::now();
            let result = self.exchange(target, body).await;
            // Per exchange: the waits between retries are not the webhook's time.
            let outcome = match &result {
                Ok(_) => "ok",
                Err(WebhookError::Timeout(_)) => "timeout",
                Err(WebhookError::Unreachable(_)) => "unreachable",
                Err(WebhookError::Status { .. }) => "status",
                Err(WebhookError::InvalidResponse(_)) => "invalid",
            };
            events::WebhookCall {
                outcome,
                seconds: started.elapsed().as_secs_f64(),
            }
            .emit();
            match result {
                Err(WebhookError::Status { status, .. })
                    if status >= 429 && retried < self.retries.retries =>
                {
                    let wait = self.retries.wait(retried);
                    retried += 1;
                    events::WebhookRetry {
                        url: target.display_url(),
                        status,
                        retry: retried,
                        wait,
                    }
                    .emit();
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// One exchange within the timeout, with one more try when the request
    /// never reached the webhook.
    async fn exchange(
        &self,
        target: &WebhookTarget,
        body: &[u8],
    ) -> Result<AllocationResponse, WebhookError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = self.timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.attempt(target, body)).await {
                Err(_) => return Err(WebhookError::Timeout(self.timeout.as_millis() as u64)),
                Ok(Err(Attempt::Retry(why))) if attempt == 1 => {
                    tracing::debug!(url = target.display_url(), error = %why, "webhook connection failed; retrying once");
                }
                Ok(Err(Attempt::Retry(why))) => return Err(WebhookError::Unreachable(why)),
                Ok(Err(Attempt::Failed(e))) => return Err(e),
                Ok(Ok(answer)) => return Ok(answer),
            }
        }
    }

    async fn attempt(
        &self,
        target: &WebhookTarget,
        body: &[u8],
    ) -> Result<AllocationResponse, Attempt> {
        let response = self
            .http
            .post(&target.url)
            .header("content-type", "application/json; charset=utf-8")
            .header("accept", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                // (The whole exchange is bounded by the caller's timeout, so
                // reqwest itself reports no timeouts beyond the connect one.)
                if e.is_connect() || is_closed_early(&e) {
                    Attempt::Retry(onramp_core::error::chain(&e))
                } else {
                    Attempt::Failed(WebhookError::Unreachable(onramp_core::error::chain(&e)))
                }
            })?;
        let status = response.status();
        let answer = read_capped(response).await.map_err(Attempt::Failed)?;
        // Only a 200 carries an allocation (Azure's failure table).
        if status != reqwest::StatusCode::OK {
            return Err(Attempt::Failed(WebhookError::Status {
                status: status.as_u16(),
                body: excerpt(&answer),
            }));
        }
        serde_json::from_slice::<AllocationResponse>(&answer).map_err(|e| {
            Attempt::Failed(WebhookError::InvalidResponse(format!(
                "{e}; the answer began with '{}'",
                excerpt(&answer)
            )))
        })
    }
}

enum Attempt {
    /// The request never reached the webhook: worth one more try.
    Retry(String),
    Failed(WebhookError),
}

#[async_trait]
impl AllocationWebhook for WebhookClient {
    async fn allocate(
        &self,
        target: &WebhookTarget,
        request: &AllocationRequest,
    ) -> Result<AllocationResponse, WebhookError> {
        let body = serde_json::to_vec(request).map_err(|e| {
            WebhookError::InvalidResponse(format!("cannot encode the request: {e}"))
        })?;
        self.call(target, &body).await
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, WebhookError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        WebhookError::Unreachable(format!(
            "reading the answer: {}",
            onramp_core::error::chain(&e)
        ))
    })? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(WebhookError::InvalidResponse(format!(
                "the answer is larger than {} KiB",
                MAX_ANSWER_BYTES / 1024
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first bytes of an answer, printable and on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_EXCERPT)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The connection closed before the webhook answered anything.
fn is_closed_early(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
        {
            return true;
        }
        source = s.source();
    }
    false
}
