//! [`ScriptedWebhook`]: a custom-allocation webhook.

use std::sync::Mutex;

use async_trait::async_trait;
use onramp_core::ports::{AllocationWebhook, WebhookError, WebhookTarget};
use onramp_model::allocation::{AllocationRequest, AllocationResponse};

/// A webhook that answers what it is told, and remembers what it was sent.
#[derive(Default)]
pub struct ScriptedWebhook {
    pub answer: Mutex<Option<Result<AllocationResponse, WebhookError>>>,
    pub requests: Mutex<Vec<(WebhookTarget, AllocationRequest)>>,
}

impl ScriptedWebhook {
    pub fn answer(&self, answer: Result<AllocationResponse, WebhookError>) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    }

    pub fn last_request(&self) -> Option<(WebhookTarget, AllocationRequest)> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}

#[async_trait]
impl AllocationWebhook for ScriptedWebhook {
    async fn allocate(
        &self,
        target: &WebhookTarget,
        request: &AllocationRequest,
    ) -> Result<AllocationResponse, WebhookError> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((target.clone(), request.clone()));
        self.answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Err(WebhookError::Unreachable("no answer scripted".into())))
    }
}
