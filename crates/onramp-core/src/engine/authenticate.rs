//! Who is asking: the provisioning service an ID scope names, and
//! attestation in it, each attempt logged and counted.

use std::net::IpAddr;
use std::time::Duration;

use onramp_model::{ErrorCode, IdKey, IdScope, RegistrationId};

use super::diagnose::Trace;
use super::{Engine, parse_registration_id};
use crate::ProvisioningError;
use crate::attest::{Attempt, Attested, DeviceCredential, GROUP_PAGE, Prefetched, Proof, attest};
use crate::auth::{ServiceCaller, ServiceRequest};
use crate::events::{AttestationAttempt, AttestationStep, Protocol};
use crate::ports::{RegistrationInputs, RegistrationLookup};
use crate::tenant::ProvisioningService;
use crate::throttle::back_off;

/// Who a device request says it is, for attestation to check.
#[derive(Clone, Copy)]
pub(super) struct Claim<'a> {
    pub id_scope: &'a str,
    pub registration_id: &'a RegistrationId,
    pub credential: &'a DeviceCredential,
    pub protocol: Protocol,
    /// Where the request came from, when the protocol knows: failed
    /// authentications are counted per address.
    pub client_addr: Option<IpAddr>,
}

impl<'a> Claim<'a> {
    pub fn of(
        id_scope: &'a str,
        registration_id: &'a RegistrationId,
        credential: &'a DeviceCredential,
        protocol: Protocol,
    ) -> Self {
        Self {
            id_scope,
            registration_id,
            credential,
            protocol,
            client_addr: None,
        }
    }

    pub fn from(self, client_addr: Option<IpAddr>) -> Self {
        Self {
            client_addr,
            ..self
        }
    }
}

impl Engine {
    /// Checks a device's credential without registering it (an MQTT or AMQP
    /// connection is accepted or refused before any request).
    pub async fn check_device(
        &self,
        id_scope: &str,
        registration_id: &str,
        credential: &DeviceCredential,
        protocol: Protocol,
        client_addr: Option<IpAddr>,
    ) -> Result<(), ProvisioningError> {
        let mut trace = Trace::new(
            self,
            id_scope,
            registration_id,
            credential,
            protocol,
            client_addr,
        );
        let checked = async {
            let registration_id = parse_registration_id(registration_id)?;
            let claim =
                Claim::of(id_scope, &registration_id, credential, protocol).from(client_addr);
            let found = self.found_for(id_scope).await;
            if let Ok((service, _)) = &found {
                trace.in_service(&service.name);
            }
            self.attest_in(found, claim, AttestationStep::Connect).await
        };
        // Only a refusal is an attempt's end here: an accepted device
        // registers next, and that leaves the entry.
        let result = checked.await.map(|_| ());
        if let Err(e) = &result {
            self.diagnose(trace, Err(e));
        }
        result
    }

    /// Checks a service-API call's `Authorization` (see
    /// [`crate::auth::authenticate`]) and counts it in its service's
    /// budget. A failure with a policy's name spends that policy's failed
    /// authentications, and is answered late once they are spent.
    pub async fn authenticate_service_call(
        &self,
        request: &ServiceRequest<'_>,
    ) -> Result<ServiceCaller, ProvisioningError> {
        let caller = crate::auth::authenticate(&*self.store, request).await;
        match caller {
            Ok(caller) => {
                // Counted once the token is checked: nobody spends a
                // service's budget with a wrong key.
                self.throttle.admit_service_call(&caller.service)?;
                Ok(caller)
            }
            Err(e) => {
                let policy = (e.http_status() == 401)
                    .then(|| {
                        crate::sas::parse(request.authorization?.trim())
                            .ok()?
                            .key_name
                    })
                    .flatten();
                if let Some(policy) = policy {
                    back_off(self.throttle.policy_failed(&policy)).await;
                }
                Err(e)
            }
        }
    }

    pub(super) async fn authenticate(
        &self,
        claim: Claim<'_>,
        step: AttestationStep,
    ) -> Result<(ProvisioningService, Attested), ProvisioningError> {
        let found = self.found_for(claim.id_scope).await;
        self.attest_in(found, claim, step).await
    }

    /// The service an ID scope names, with nothing read ahead for attestation.
    async fn found_for(
        &self,
        id_scope: &str,
    ) -> Result<(ProvisioningService, Prefetched), ProvisioningError> {
        self.service_for_scope(id_scope)
            .await
            .map(|service| (service, Prefetched::default()))
    }

    /// Attestation in the service found for the ID scope (or the error of not
    /// finding it), with the enrollment reads made already; records the
    /// attempt. An address that spent its failed authentications is refused
    /// before any check, and a failure spends one; a failure of a
    /// registration ID that spent its own is answered late.
    pub(super) async fn attest_in(
        &self,
        found: Result<(ProvisioningService, Prefetched), ProvisioningError>,
        claim: Claim<'_>,
        step: AttestationStep,
    ) -> Result<(ProvisioningService, Attested), ProvisioningError> {
        let Claim {
            id_scope,
            registration_id,
            credential,
            protocol,
            client_addr,
        } = claim;
        let admitted = self.throttle.admit_address(client_addr);
        let service = found.as_ref().ok().map(|(s, _)| s.name.clone());
        let mut delay = Duration::ZERO;
        let result = match (admitted, found) {
            (Err(e), _) => Err(e),
            (Ok(()), found) => self
                .attest_found(found, registration_id, credential, protocol, step)
                .await
                .inspect_err(|e| {
                    if matches!(e.http_status(), 401 | 404) && e.tpm_challenge.is_none() {
                        self.throttle.failed(client_addr);
                        if let Some(service) = &service {
                            delay = self
                                .throttle
                                .registration_failed(service, &registration_id.key());
                        }
                    }
                }),
        };
        AttestationAttempt {
            id_scope,
            service: result.as_ref().ok().map(|(s, _)| s.name.as_str()),
            registration_id: registration_id.as_str(),
            protocol,
            step,
            error: result.as_ref().err(),
        }
        .emit();
        back_off(delay).await;
        result
    }

    async fn attest_found(
        &self,
        found: Result<(ProvisioningService, Prefetched), ProvisioningError>,
        registration_id: &RegistrationId,
        credential: &DeviceCredential,
        protocol: Protocol,
        step: AttestationStep,
    ) -> Result<(ProvisioningService, Attested), ProvisioningError> {
        match found {
            Ok((service, prefetched)) => {
                let attempt = Attempt {
                    store: &*self.store,
                    service: &service.name,
                    id_scope: service.id_scope.as_str(),
                    registration_id,
                    now: self.clock.now(),
                    config: self.config.attestation,
                };
                attest(attempt, prefetched, credential)
                    .await
                    .and_then(|a| tpm_only_where_it_exists(protocol, a))
                    .and_then(|a| unspent_before_a_connection(step, a))
                    .map(|a| (service, a))
            }
            Err(e) => Err(e),
        }
    }

    async fn service_for_scope(
        &self,
        id_scope: &str,
    ) -> Result<ProvisioningService, ProvisioningError> {
        self.store
            .service_by_scope(&scope_key(id_scope)?)
            .await?
            .ok_or_else(|| no_service(id_scope))
    }

    pub(super) async fn registration_inputs(
        &self,
        id_scope: &str,
        registration_id: &RegistrationId,
    ) -> Result<RegistrationInputs, ProvisioningError> {
        self.store
            .registration_inputs(&RegistrationLookup::new(
                &scope_key(id_scope)?,
                &registration_id.key(),
                GROUP_PAGE,
            ))
            .await?
            .ok_or_else(|| no_service(id_scope))
    }
}

/// TPM attestation runs over HTTPS and AMQP: MQTT has no challenge in any
/// SDK, so a TPM device there is refused, whatever token it holds.
fn tpm_only_where_it_exists(
    protocol: Protocol,
    attested: Attested,
) -> Result<Attested, ProvisioningError> {
    match (&attested.proof, protocol) {
        (Proof::Tpm { .. }, Protocol::Mqtt | Protocol::MqttWs) => Err(ProvisioningError::new(
            ErrorCode::UnsupportedAttestation,
            format!(
                "registration '{}' attests with a TPM, which DPS devices do over HTTPS or \
                 AMQP, not MQTT; provision it over HTTPS",
                attested.registration_id
            ),
        )),
        _ => Ok(attested),
    }
}

/// A connection (AMQP, MQTT) is authenticated before it registers: a TPM
/// token whose challenge a registration has spent already is a replay there.
/// (Polls of that registration still read with it, over HTTPS or on the
/// connection that registered.)
fn unspent_before_a_connection(
    step: AttestationStep,
    attested: Attested,
) -> Result<Attested, ProvisioningError> {
    match &attested.proof {
        Proof::Tpm { challenge, .. }
            if step == AttestationStep::Connect && challenge.spent_by.is_some() =>
        {
            Err(ProvisioningError::unauthorized(format!(
                "the TPM challenge sent to '{}' was spent by an earlier registration, so its \
                 token opens no new connection; authenticate with SASL TPM to get a new challenge",
                attested.registration_id
            )))
        }
        _ => Ok(attested),
    }
}

/// The store key of the ID scope a device sent.
fn scope_key(id_scope: &str) -> Result<IdKey, ProvisioningError> {
    IdScope::parse(id_scope)
        .map(|scope| scope.key())
        .map_err(|e| ProvisioningError::new(ErrorCode::ProvisioningServiceNotFound, e))
}

fn no_service(id_scope: &str) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::ProvisioningServiceNotFound,
        format!(
            "no provisioning service has ID scope '{id_scope}'; check the ID scope configured on the device"
        ),
    )
}
