//! [`ScriptedWebhook`]: a custom-allocation webhook.

use std::pin::Pin;
use std::sync::Mutex;

use async_trait::async_trait;
use onramp_core::ports::{AllocationWebhook, WebhookError, WebhookTarget};
use onramp_model::allocation::{AllocationRequest, AllocationResponse};

use crate::lock;

/// What a held call awaits before it answers.
type Hold = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A webhook that answers what it is told, and remembers what it was sent.
#[derive(Default)]
pub struct ScriptedWebhook {
    pub answer: Mutex<Option<Result<AllocationResponse, WebhookError>>>,
    pub requests: Mutex<Vec<(WebhookTarget, AllocationRequest)>>,
    hold: Mutex<Option<Hold>>,
}

impl ScriptedWebhook {
    pub fn answer(&self, answer: Result<AllocationResponse, WebhookError>) {
        *lock(&self.answer) = Some(answer);
    }

    /// Makes the next call, once it is remembered, await `until` before it
    /// answers: a webhook that is slow to answer.
    pub fn hold_next(&self, until: impl Future<Output = ()> + Send + 'static) {
        *lock(&self.hold) = Some(Box::pin(until));
    }

    pub fn last_request(&self) -> Option<(WebhookTarget, AllocationRequest)> {
        lock(&self.requests).last().cloned()
    }
}

#[async_trait]
impl AllocationWebhook for ScriptedWebhook {
    async fn allocate(
        &self,
        target: &WebhookTarget,
        request: &AllocationRequest,
    ) -> Result<AllocationResponse, WebhookError> {
        lock(&self.requests).push((target.clone(), request.clone()));
        let hold = lock(&self.hold).take();
        if let Some(hold) = hold {
            hold.await;
        }
        lock(&self.answer)
            .clone()
            .unwrap_or_else(|| Err(WebhookError::Unreachable("no answer scripted".into())))
    }
}
