//! Registrations in tasks of their own: a device waits at most the reply
//! budget and then hears `assigning` while the work goes on; the engine
//! tracks every task, so a stopping server takes no new registrations and
//! lets the running ones finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use onramp_model::{ErrorCode, RegistrationOperationStatus, RegistrationStatus};
use tokio_util::task::TaskTracker;

use super::diagnose::Trace;
use super::lease::Announce;
use super::{Engine, RegisterRequest};
use crate::ProvisioningError;
use crate::events::{REGISTRATIONS_IN_FLIGHT, REGISTRATIONS_SHED};

/// How long a register call past its budget waits for its registration to
/// be recorded as running.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// How long a stopping engine waits for its diagnostic entries to be written.
const DIAGNOSTICS_FLUSH: Duration = Duration::from_secs(2);

/// Seconds a device refused for load is told to wait: long enough for the
/// registrations running to finish (most take well under a second), short
/// enough that a factory line barely notices.
const SHED_RETRY_AFTER_SECONDS: u32 = 2;

/// The series exist from the start, so a dashboard sees 0, not nothing.
pub(super) fn start_metrics(config: &super::EngineConfig) {
    metrics::gauge!(REGISTRATIONS_IN_FLIGHT).set(0.0);
    if config.max_registrations_in_flight > 0 {
        metrics::counter!(REGISTRATIONS_SHED).increment(0);
    }
}

/// `onramp_registrations_in_flight` counts a registration task while it lives.
struct InFlightGauge;

impl InFlightGauge {
    fn new() -> Self {
        metrics::gauge!(REGISTRATIONS_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        metrics::gauge!(REGISTRATIONS_IN_FLIGHT).decrement(1.0);
    }
}

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
        if let Err(e) = self.admit() {
            let trace = Trace::of(self, &req);
            self.diagnose(trace, Err(&e));
            return Err(e);
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
        let running = InFlightGauge::new();
        let mut work = self.tasks.tracker.spawn(async move {
            let _running = running;
            engine.run(req, id, announce).await
        });
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

    /// Registrations running on this node now.
    pub fn registrations_in_flight(&self) -> usize {
        self.tasks.tracker.len()
    }

    /// Whether a new registration may start: not while the engine stops,
    /// nor past the bound of registrations at once.
    fn admit(&self) -> Result<(), ProvisioningError> {
        if self.tasks.closing.load(Ordering::SeqCst) {
            return Err(ProvisioningError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; register again after the Retry-After interval",
            ));
        }
        self.admit_in_flight()
    }

    /// Load shedding: a node already running its bound of registrations
    /// takes no more (work it could not finish in time would only make
    /// every device wait longer); the device hears 503 and when to retry.
    fn admit_in_flight(&self) -> Result<(), ProvisioningError> {
        let bound = self.config.max_registrations_in_flight;
        if bound == 0 || self.tasks.tracker.len() < bound {
            return Ok(());
        }
        metrics::counter!(REGISTRATIONS_SHED).increment(1);
        Err(ProvisioningError {
            retry_after: Some(SHED_RETRY_AFTER_SECONDS),
            ..ProvisioningError::new(
                ErrorCode::ServerBusy,
                format!(
                    "this server is running its limit of {bound} registrations at once; \
                     register again after the Retry-After interval"
                ),
            )
        })
    }

    /// Takes no new registrations from now on, then waits up to `grace` for
    /// the running ones.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.tasks.closing.store(true, Ordering::SeqCst);
        self.tasks.tracker.close();
        let in_flight = self.tasks.tracker.len();
        let _ = tokio::time::timeout(grace, self.tasks.tracker.wait()).await;
        let cut = self.tasks.tracker.len();
        // The finished registrations' diagnostic entries, written before the stop.
        self.diagnostics.flush(DIAGNOSTICS_FLUSH).await;
        Drained { in_flight, cut }
    }
}
