//! What a device reads back: a poll of its operation (`assigning` while the
//! work runs, then the record that operation wrote), and its registration
//! record.

use onramp_model::{
    DeviceRegistrationState, ErrorCode, RegistrationId, RegistrationOperationStatus,
    RegistrationStatus,
};

use super::authenticate::Claim;
use super::operation_id::operation_started;
use super::{Engine, OperationRequest, StatusRequest, parse_registration_id};
use crate::ProvisioningError;
use crate::events::AttestationStep;
use crate::ports::{DeviceAt, RegistrationRecord, StoreExt};
use crate::tenant::ProvisioningService;

/// The answer to a poll of an operation still running (here or on another
/// node).
fn assigning(operation_id: String, registration_id: String) -> RegistrationOperationStatus {
    RegistrationOperationStatus {
        operation_id,
        status: RegistrationStatus::Assigning,
        registration_state: Some(DeviceRegistrationState::new(
            registration_id,
            RegistrationStatus::Assigning,
        )),
    }
}

impl Engine {
    /// Answers a poll: `assigning` while the work runs, then the recorded result.
    pub async fn operation_status(
        &self,
        req: OperationRequest,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        let (asker, operation_id) = req.into_parts();
        let (registration_id, service) = self
            .authenticate_asker(&asker, AttestationStep::OperationStatus)
            .await?;
        let key = registration_id.key();
        let running = self
            .lock_in_flight()
            .by_operation
            .get(&operation_id)
            .filter(|f| f.service == service.name && f.registration_key == key)
            .cloned();
        if let Some(op) = running {
            return Ok(assigning(operation_id, op.registration_id));
        }
        let not_found = || {
            ProvisioningError::new(
                ErrorCode::OperationNotFound,
                format!(
                    "operation '{}' of registration '{registration_id}' is unknown or older than {} minutes; register again",
                    operation_id,
                    self.config.operation_ttl_seconds / 60
                ),
            )
        };
        let started = operation_started(&operation_id).ok_or_else(not_found)?;
        let now = self.clock.now();
        if now.unix_nanos() - started
            > i128::from(self.config.operation_ttl_seconds) * 1_000_000_000
        {
            return Err(not_found());
        }
        // An operation newer than the record's ended without one (its write
        // failed, or the process stopped): answering the older record would
        // tell the device a stale hub.
        let answers = |r: &RegistrationRecord| {
            r.operation_id == operation_id
                || operation_started(&r.operation_id).is_none_or(|recorded| recorded >= started)
        };
        let record = self
            .store
            .get::<RegistrationRecord>(&service.name, &key)
            .await?;
        let record = match record {
            Some(r) if answers(&r) => r,
            stale => {
                // Not recorded yet: it may still run on another node, which
                // vouches for it until its lease ends.
                let elsewhere = self
                    .store
                    .operation(&DeviceAt::new(&service.name, &key))
                    .await?;
                if let Some(op) = elsewhere
                    && op.operation_id == operation_id
                    && op.lease_until > now
                {
                    return Ok(assigning(operation_id, op.registration_id));
                }
                // The node may have finished between the two reads: its
                // record replaces its running operation in one write.
                let now_recorded = self
                    .store
                    .get::<RegistrationRecord>(&service.name, &key)
                    .await?;
                match now_recorded.filter(|r| answers(r)) {
                    Some(r) => r,
                    None if stale.is_none() => return Err(not_found()),
                    None => {
                        return Err(ProvisioningError::new(
                            ErrorCode::OperationNotFound,
                            format!(
                                "operation '{}' of registration '{registration_id}' ended without a result; \
                                 register again",
                                operation_id
                            ),
                        ));
                    }
                }
            }
        };
        // Any earlier operation of this device answers with its current
        // record: polls may arrive late.
        Ok(RegistrationOperationStatus {
            operation_id,
            status: record.state.status,
            registration_state: Some(record.state),
        })
    }

    /// The device's registration record (the device API's status lookup);
    /// `RegistrationNotFound` until the device has one that is not
    /// `unassigned`.
    pub async fn registration_status(
        &self,
        req: StatusRequest,
    ) -> Result<DeviceRegistrationState, ProvisioningError> {
        let (registration_id, service) = self
            .authenticate_asker(&req, AttestationStep::RegistrationStatus)
            .await?;
        let state = self
            .store
            .get::<RegistrationRecord>(&service.name, &registration_id.key())
            .await?
            .map(|r| r.state)
            .ok_or_else(|| {
                ProvisioningError::new(
                    ErrorCode::RegistrationNotFound,
                    format!(
                        "registration '{registration_id}' has not registered yet; register first"
                    ),
                )
            })?;
        // A device that is not assigned has no registration to show, as in
        // Azure: the lookup is a 404, whatever the protocol.
        if state.status == RegistrationStatus::Unassigned {
            return Err(ProvisioningError::new(
                ErrorCode::RegistrationNotFound,
                "the device has not been assigned yet",
            ));
        }
        Ok(state)
    }

    /// Parses the registration ID a device asks about and authenticates the
    /// device as its holder: polls and status lookups read only their own.
    async fn authenticate_asker(
        &self,
        asker: &StatusRequest,
        step: AttestationStep,
    ) -> Result<(RegistrationId, ProvisioningService), ProvisioningError> {
        let registration_id = parse_registration_id(&asker.registration_id)?;
        let claim = Claim::of(
            &asker.id_scope,
            &registration_id,
            &asker.credential,
            asker.protocol,
        );
        let (service, _) = self.authenticate(claim, step).await?;
        Ok((registration_id, service))
    }
}
