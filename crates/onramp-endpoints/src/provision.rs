//! What every device transport shares: running a registration within the
//! reply budget.

use std::sync::Arc;
use std::time::Duration;

use onramp_core::ProvisioningError;
use onramp_core::engine::{Engine, RegisterRequest};
use onramp_model::{RegistrationOperationStatus, RegistrationStatus};

/// Runs the registration in its own task and waits up to `budget`: the
/// device gets the finished status, or `assigning` (and polls) while the
/// work goes on.
pub async fn register_within(
    engine: &Arc<Engine>,
    request: RegisterRequest,
    budget: Duration,
) -> Result<RegistrationOperationStatus, ProvisioningError> {
    let operation_id = request.operation_id.clone();
    let engine = engine.clone();
    let mut work = tokio::spawn(async move { engine.register(request).await });
    match tokio::time::timeout(budget, &mut work).await {
        Ok(joined) => joined.map_err(|e| {
            ProvisioningError::internal(format!("the registration task failed: {e}"))
        })?,
        Err(_) => Ok(RegistrationOperationStatus {
            operation_id,
            status: RegistrationStatus::Assigning,
            registration_state: None,
        }),
    }
}
