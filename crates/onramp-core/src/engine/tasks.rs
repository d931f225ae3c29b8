//! Registrations in tasks of their own: a device waits at most the reply
//! budget and then hears `assigning` while the work goes on; the engine
//! tracks every task, so a stopping server takes no new registrations and
//! lets the running ones finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use onramp_model::{ErrorCode, RegistrationOperationStatus, RegistrationStatus};
use tokio_util::task::TaskTracker;

use super::lease::Announce;
use super::{Engine, RegisterRequest};
use crate::ProvisioningError;

/// How long a register call past its budget waits for its registration to
/// be recorded as running.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// The registration tasks, and whether the engine still takes new ones.
#[derive(Debug, Default)]
pub(super) struct Tasks {
    tracker: TaskTracker,
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

impl Engine {
    /// Registers a device. The registration runs in a task of its own and
    /// the caller waits up to the reply budget: it gets the finished status,
    /// or `assigning` with the operation ID to poll while the work goes on.
    /// A stopping engine refuses with `ShuttingDown` (503, which every SDK
    /// retries after `Retry-After`).
    pub async fn register(
        self: &Arc<Self>,
        req: RegisterRequest,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        if self.tasks.closing.load(Ordering::SeqCst) {
            return Err(ProvisioningError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; register again after the Retry-After interval",
            ));
        }
        let operation_id = self.new_operation_id();
        let engine = Arc::clone(self);
        let id = operation_id.clone();
        let (done, mut announced) = tokio::sync::watch::channel(false);
        // Half the budget: a registration still running then is recorded
        // for the other nodes before the device hears `assigning`.
        let announce = Announce {
            at: tokio::time::Instant::now() + self.config.reply_budget / 2,
            done,
        };
        let mut work = self
            .tasks
            .tracker
            .spawn(async move { engine.run(req, id, announce).await });
        match tokio::time::timeout(self.config.reply_budget, &mut work).await {
            Ok(joined) => joined.map_err(|e| {
                ProvisioningError::internal(format!("the registration task failed: {e}"))
            })?,
            Err(_) => {
                // Bounded: a store that does not answer delays no device
                // longer than this. (An ended task closes the channel.)
                let _ = tokio::time::timeout(ANNOUNCE_WAIT, announced.wait_for(|done| *done)).await;
                Ok(RegistrationOperationStatus {
                    operation_id,
                    status: RegistrationStatus::Assigning,
                    registration_state: None,
                })
            }
        }
    }

    /// Takes no new registrations from now on, then waits up to `grace` for
    /// the running ones.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.tasks.closing.store(true, Ordering::SeqCst);
        self.tasks.tracker.close();
        let in_flight = self.tasks.tracker.len();
        let _ = tokio::time::timeout(grace, self.tasks.tracker.wait()).await;
        Drained {
            in_flight,
            cut: self.tasks.tracker.len(),
        }
    }
}
