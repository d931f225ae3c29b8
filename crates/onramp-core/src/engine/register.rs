//! A registration from its request to its durable record: attestation,
//! then assignment; a device hears `assigned` only once the hub identity
//! exists and the record is committed.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_model::{
    DeviceRegistrationState, ErrorCode, RegistrationOperationStatus, RegistrationStatus, Secret,
    SymmetricKeyRegistrationResult, TpmRegistrationResult, UtcTime, X509RegistrationResult,
};

use super::authenticate::Claim;
use super::diagnose::{Progress, Trace};
use super::in_flight::{InFlight, Overtaken};
use super::lease::Announce;
use super::settings::Settings;
use super::{Engine, RegisterRequest, parse_registration_id};
use crate::ProvisioningError;
use crate::attest::{Attested, Prefetched, Proof};
use crate::events::{AttestationStep, HubCleanup, RegistrationAttempt};
use crate::ports::{
    Placement, Precondition, RegistrationInputs, RegistrationRecord, RunningOperation, StoreError,
    StoreExt, TpmChallenge,
};
use crate::tenant::{LinkedHub, ProvisioningService};
use crate::tpm::{self, RsaPublic};

impl Engine {
    /// Runs registration `operation_id` to its end and records it.
    /// Assignment failures (no hub, hub down) are recorded and answered as
    /// `failed`; refusals (bad credential, unknown device, disabled
    /// enrollment, bad input) are errors and leave no trace in the store or
    /// the hub.
    pub(super) async fn run(
        &self,
        req: RegisterRequest,
        operation_id: String,
        announce: Announce,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        let mut trace = Trace::of(self, &req);
        let result = self.traced(req, operation_id, announce, &mut trace).await;
        self.diagnose(trace, result.as_ref());
        result
    }

    async fn traced(
        &self,
        req: RegisterRequest,
        operation_id: String,
        announce: Announce,
        trace: &mut Trace,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        let started = self.clock.now();
        let registration_id = parse_registration_id(&req.registration_id)?;
        if let Some(body_id) = req
            .body
            .registration_id
            .as_deref()
            .filter(|b| !b.is_empty())
            && !body_id.eq_ignore_ascii_case(registration_id.as_str())
        {
            return Err(ProvisioningError::new(
                ErrorCode::RegistrationIdMismatch,
                format!(
                    "registrationId '{body_id}' in the body differs from '{registration_id}' the device \
                     authenticated as; send the same registration ID in both"
                ),
            ));
        }
        // All the store reads of a registration at once; attestation and
        // allocation then work from these.
        let (found, earlier) = match self
            .registration_inputs(&req.id_scope, &registration_id)
            .await
        {
            Ok(inputs) => {
                trace.in_service(&inputs.service.name);
                let RegistrationInputs {
                    service,
                    enrollment,
                    first_groups,
                    previous,
                    linked_hubs,
                } = inputs;
                let prefetched = Prefetched {
                    enrollment: Some(enrollment),
                    first_groups,
                };
                (Ok((service, prefetched)), (previous, linked_hubs))
            }
            Err(e) => (Err(e), Default::default()),
        };
        let claim = Claim::of(
            &req.id_scope,
            &registration_id,
            &req.credential,
            req.protocol,
        )
        .from(req.client_addr);
        let (service, attested) = self
            .attest_in(found, claim, AttestationStep::Register)
            .await?;
        trace.attested(&attested);
        self.throttle
            .admit_registration(&service.name, &registration_id.key())
            .inspect_err(|e| {
                tracing::info!(
                    target: "onramp::device_operations",
                    operation = "Throttled",
                    service = %service.name,
                    registration_id = registration_id.as_str(),
                    retry_after = e.retry_after,
                    message = %e.message,
                );
            })?;
        let (previous, linked) = earlier;
        if let Proof::Tpm { challenge, .. } = &attested.proof {
            self.spend(&service.name, challenge, &operation_id).await?;
        }

        trace.assigning(&operation_id);
        let key = registration_id.key();
        let running = self.running(
            &operation_id,
            InFlight {
                service: service.name.clone(),
                registration_key: key.clone(),
                registration_id: registration_id.to_string(),
                overtaken: Arc::default(),
            },
        );
        let visible = RunningOperation {
            registration_id: registration_id.to_string(),
            operation_id: operation_id.clone(),
            node: self.node.clone(),
            started,
            lease_until: started,
        };
        let work = self.assign(
            &service,
            &attested,
            &req,
            &operation_id,
            previous,
            linked,
            &running.overtaken,
            &trace.progress,
        );
        let result = self.leased(&service.name, visible, announce, work).await;
        drop(running);
        let record = result?;

        let state = record.state;
        RegistrationAttempt {
            service: &service.name,
            registration_id: registration_id.as_str(),
            hub: state.assigned_hub.as_deref(),
            protocol: req.protocol,
            status: state.status,
            error_code: state.error_code,
            seconds: seconds_between(started, self.clock.now()),
        }
        .emit();
        Ok(RegistrationOperationStatus {
            operation_id,
            status: state.status,
            registration_state: Some(state),
        })
    }

    /// Allocation, hub registration and the durable record. A device that
    /// moved leaves its old hub identity behind only after the new record is
    /// durable, so a crash in between never loses where the device's data is.
    #[allow(clippy::too_many_arguments)]
    async fn assign(
        &self,
        service: &ProvisioningService,
        attested: &Attested,
        req: &RegisterRequest,
        operation_id: &str,
        previous: Option<Box<RegistrationRecord>>,
        linked: Vec<LinkedHub>,
        overtaken: &Overtaken,
        progress: &Progress,
    ) -> Result<RegistrationRecord, ProvisioningError> {
        let current = previous
            .as_deref()
            .and_then(RegistrationRecord::current_placement);
        let previous_substatus = previous
            .as_deref()
            .filter(|p| p.state.status == RegistrationStatus::Assigned)
            .and_then(|p| p.state.substatus);
        let settings = Settings::of(&attested.enrollment, service);
        let device_id = settings
            .device_id
            .unwrap_or(attested.registration_id.as_str())
            .to_owned();

        let placed = self
            .place(
                service,
                attested,
                req,
                &settings,
                &linked,
                current.as_ref(),
                previous_substatus,
                &device_id,
                overtaken,
                progress,
            )
            .await;

        let mut state = DeviceRegistrationState::new(
            attested.registration_id.as_str(),
            RegistrationStatus::Assigned,
        );
        match &attested.proof {
            Proof::SymmetricKey { .. } => {
                state.symmetric_key =
                    attested
                        .enrollment
                        .group_id()
                        .map(|g| SymmetricKeyRegistrationResult {
                            enrollment_group_id: Some(g.to_owned()),
                        });
            }
            Proof::Tpm { .. } => {}
            Proof::X509 { leaf, signing } => {
                state.x509 = Some(X509RegistrationResult {
                    certificate_info: Some(leaf.info.clone()),
                    enrollment_group_id: attested.enrollment.group_id().map(str::to_owned),
                    signing_certificate_info: signing.as_ref().map(|s| s.info.clone()),
                });
            }
        }
        let (placement, leaves) = match placed {
            Ok(p) => {
                if let Proof::Tpm {
                    challenge,
                    hub_primary,
                    ..
                } = &attested.proof
                {
                    // The hub identity's key, for the TPM only.
                    state.tpm = Some(TpmRegistrationResult {
                        authentication_key: hub_key_blob(challenge, hub_primary)?,
                    });
                }
                state.assigned_hub = Some(p.hub.clone());
                state.device_id = Some(device_id.clone());
                state.substatus = Some(p.substatus);
                state.payload = p.payload;
                let placement = Placement {
                    initial_hub: current
                        .as_ref()
                        .map_or_else(|| p.hub.clone(), |c| c.initial_hub.clone()),
                    hub: p.hub,
                    device_id,
                };
                (Some(placement), p.leaves)
            }
            Err(e) => {
                state.status = RegistrationStatus::Failed;
                state.error_code = Some(e.code.code() as i32);
                state.error_message = Some(e.message);
                // The device's data stays where it was.
                (current, None)
            }
        };
        let record = RegistrationRecord {
            state,
            operation_id: operation_id.to_owned(),
            enrollment_group_id: attested.enrollment.group_id().map(str::to_owned),
            placement,
        };
        // The identity this registration made, which a newer one's record may not name.
        let made = (record.state.status == RegistrationStatus::Assigned)
            .then(|| record.placement.clone())
            .flatten();
        if overtaken.happened() {
            return Err(self
                .superseded_answer(service, attested, made, &linked)
                .await);
        }
        // A newer registration on another node may have recorded first: the
        // store refuses to put this older one over it.
        let record = match self
            .store
            .put(&service.name, record, Precondition::None, self.clock.now())
            .await
        {
            Ok(record) => record,
            Err(StoreError::Overtaken(_)) => {
                return Err(self
                    .superseded_answer(service, attested, made, &linked)
                    .await);
            }
            Err(e) => return Err(e.into()),
        };
        if let Some((hub_name, old_id)) = leaves
            && let Some(hub) = linked.iter().find(|h| h.is_named(&hub_name))
        {
            let result = self.hubs.remove_device(hub, &old_id).await;
            HubCleanup {
                service: &service.name,
                hub: &hub.name,
                device_id: &old_id,
                error: result.err().as_ref(),
            }
            .emit();
        }
        Ok(record)
    }

    /// A registration overtaken by a newer one of the same device records
    /// nothing; a hub identity it made that the device's record does not name
    /// is removed again, so no orphan stays behind.
    async fn superseded_answer(
        &self,
        service: &ProvisioningService,
        attested: &Attested,
        made: Option<Placement>,
        linked: &[LinkedHub],
    ) -> ProvisioningError {
        if let Some(made) = made {
            let recorded = self
                .store
                .get::<RegistrationRecord>(&service.name, &attested.registration_id.key())
                .await
                .ok()
                .flatten()
                .and_then(|r| r.current_placement());
            let named = recorded.is_some_and(|r| {
                r.hub.eq_ignore_ascii_case(&made.hub) && r.device_id == made.device_id
            });
            if !named && let Some(hub) = linked.iter().find(|h| h.is_named(&made.hub)) {
                let result = self.hubs.remove_device(hub, &made.device_id).await;
                HubCleanup {
                    service: &service.name,
                    hub: &hub.name,
                    device_id: &made.device_id,
                    error: result.err().as_ref(),
                }
                .emit();
            }
        }
        superseded(attested)
    }
}

pub(super) fn superseded(attested: &Attested) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::RegistrationSuperseded,
        format!(
            "a newer registration of '{}' started while this one ran; its result is the \
             device's (poll it, or register again)",
            attested.registration_id
        ),
    )
}

fn seconds_between(a: UtcTime, b: UtcTime) -> f64 {
    (b.unix_nanos() - a.unix_nanos()) as f64 / 1e9
}

impl Engine {
    /// Marks a TPM challenge spent by registration `operation_id`: its key
    /// vouches for one registration (and that one's polls), not for more.
    async fn spend(
        &self,
        service: &str,
        challenge: &TpmChallenge,
        operation_id: &str,
    ) -> Result<(), ProvisioningError> {
        if challenge
            .spent_by
            .as_deref()
            .is_some_and(|spent_by| spent_by != operation_id)
        {
            return Err(ProvisioningError::unauthorized(format!(
                "the TPM challenge sent to '{}' was spent by an earlier registration; send the \
                 register request without Authorization, with the tpm keys, to get a new one",
                challenge.registration_id
            )));
        }
        let mut spent = challenge.clone();
        spent.spent_by = Some(operation_id.to_owned());
        self.store
            .put(service, spent, Precondition::None, self.clock.now())
            .await?;
        Ok(())
    }
}

/// The activation blob (base64) that carries the hub identity's primary key
/// to the TPM that answered `challenge`.
fn hub_key_blob(
    challenge: &TpmChallenge,
    hub_primary: &Secret,
) -> Result<String, ProvisioningError> {
    let failed = |e: &dyn std::fmt::Display| {
        ProvisioningError::internal(format!("the TPM's hub key could not be wrapped: {e}"))
    };
    let ek = RsaPublic::from_base64(&challenge.endorsement_key).map_err(|e| failed(&e))?;
    let srk = RsaPublic::from_base64(&challenge.storage_root_key).map_err(|e| failed(&e))?;
    let key = STANDARD
        .decode(hub_primary.expose())
        .map_err(|e| failed(&e))?;
    let blob = tpm::activation_blob(&ek, &srk, &key).map_err(|e| failed(&e))?;
    Ok(STANDARD.encode(blob))
}
