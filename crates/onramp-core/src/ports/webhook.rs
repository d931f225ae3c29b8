//! The custom-allocation webhook, called with Azure's contract.

use async_trait::async_trait;

/// Where and how to call a custom-allocation webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The URL, secrets in its query included.
    pub url: String,
    pub api_version: String,
}

impl WebhookTarget {
    /// The URL without its query, for messages and logs (Azure Functions keep
    /// their access code in the query).
    pub fn display_url(&self) -> &str {
        self.url.split(['?', '#']).next().unwrap_or_default()
    }
}

/// How a webhook call went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// No answer within the time limit.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The connection could not be made (also after the retry).
    #[error("{0}")]
    Unreachable(String),
    /// An HTTP status other than 200.
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// A 200 whose body is not an allocation response.
    #[error("{0}")]
    InvalidResponse(String),
}

/// A custom-allocation webhook: Azure's contract, posted as JSON.
#[async_trait]
pub trait AllocationWebhook: Send + Sync + 'static {
    async fn allocate(
        &self,
        target: &WebhookTarget,
        request: &onramp_model::allocation::AllocationRequest,
    ) -> Result<onramp_model::allocation::AllocationResponse, WebhookError>;
}
