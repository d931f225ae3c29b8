//! Registrations other nodes can see: one still running when the reply
//! budget is half spent is recorded in the store (its operation, its node,
//! a lease the node renews while it runs), so that a poll through another
//! node answers `assigning` rather than "unknown". The registration's record
//! removes it in the same commit; a registration that ends without a record
//! removes it itself; a node that dies leaves it to expire.

use std::future::Future;
use std::time::Duration;

use onramp_model::UtcTime;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Engine;
use crate::ProvisioningError;
use crate::ports::{RegistrationRecord, RunningOperation};

/// When and to whom a registration says that it still runs.
pub(super) struct Announce {
    /// When the operation is recorded if it has not finished.
    pub(super) at: Instant,
    /// Told once the record is written (or could not be): the register call
    /// answers `assigning` only then, so that the device's next poll finds it
    /// through any node.
    pub(super) done: watch::Sender<bool>,
}

impl Engine {
    /// Runs `work`, the assignment of `op`, recording `op` as running (and
    /// renewing its lease) if it outlasts `announce.at`.
    pub(super) async fn leased(
        &self,
        service: &str,
        mut op: RunningOperation,
        announce: Announce,
        work: impl Future<Output = Result<RegistrationRecord, ProvisioningError>>,
    ) -> Result<RegistrationRecord, ProvisioningError> {
        let lease = self.config.operation_lease;
        let mut work = std::pin::pin!(work);
        let timer = tokio::time::sleep_until(announce.at);
        let mut timer = std::pin::pin!(timer);
        let mut recorded = false;
        let result = loop {
            tokio::select! {
                biased;
                result = &mut work => break result,
                () = &mut timer => {
                    op.lease_until = later(self.clock.now(), lease);
                    match self.store.put_operation(service, &op).await {
                        Ok(()) => recorded = true,
                        Err(e) => tracing::warn!(
                            service,
                            registration_id = %op.registration_id,
                            operation_id = %op.operation_id,
                            error = %e,
                            "the running registration could not be recorded: polls through other nodes will not find it"
                        ),
                    }
                    announce.done.send_replace(true);
                    timer.as_mut().reset(Instant::now() + lease / 3);
                }
            }
        };
        if recorded
            && result.is_err()
            && let Err(e) = self.store.end_operation(service, &op).await
        {
            tracing::warn!(
                service,
                registration_id = %op.registration_id,
                operation_id = %op.operation_id,
                error = %e,
                "the ended registration could not be removed from the running ones; its lease will expire"
            );
        }
        result
    }
}

/// `now` plus `lease`.
fn later(now: UtcTime, lease: Duration) -> UtcTime {
    let nanos = i128::try_from(lease.as_nanos()).unwrap_or(i128::MAX / 2);
    UtcTime::from_unix_nanos(now.unix_nanos().saturating_add(nanos)).unwrap_or(now)
}
