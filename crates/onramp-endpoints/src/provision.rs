//! What every device transport shares: running a registration within the
//! reply budget, in a task a stopping server can wait for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use onramp_core::ProvisioningError;
use onramp_core::engine::{Engine, RegisterRequest};
use onramp_model::{ErrorCode, RegistrationOperationStatus, RegistrationStatus};
use tokio_util::task::TaskTracker;

/// The registrations running in their own tasks. A stopping server stops
/// taking new ones ([`Registrations::close`]) and lets the running ones
/// finish ([`Registrations::drain`]) before it closes its connections, so
/// a device that is waiting gets its answer.
#[derive(Debug, Default)]
pub struct Registrations {
    tasks: TaskTracker,
    closing: AtomicBool,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Registrations running when the drain began.
    pub in_flight: usize,
    /// Of those, the ones still running when the grace period ended.
    pub cut: usize,
}

impl Registrations {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registrations running now.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Takes no new registrations from now on: they are answered 503 with
    /// `Retry-After`, which every SDK retries.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.tasks.close();
    }

    /// Closes, then waits up to `grace` for the running registrations.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.close();
        let in_flight = self.tasks.len();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        Drained {
            in_flight,
            cut: self.tasks.len(),
        }
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Runs the registration in its own task and waits up to `budget`: the
/// device gets the finished status, or `assigning` (and polls) while the
/// work goes on.
pub async fn register_within(
    engine: &Arc<Engine>,
    registrations: &Registrations,
    request: RegisterRequest,
    budget: Duration,
) -> Result<RegistrationOperationStatus, ProvisioningError> {
    if registrations.closing() {
        return Err(ProvisioningError::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down; register again after the Retry-After interval",
        ));
    }
    let operation_id = request.operation_id.clone();
    let engine = engine.clone();
    let mut work = registrations
        .tasks
        .spawn(async move { engine.register(request).await });
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
