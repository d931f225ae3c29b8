//! Where a registration puts the device: the hub (by the enrollment's
//! allocation policy, or its webhook), what the reprovisioning policy does to
//! its twin, and its identity in that hub.

use onramp_model::{AllocationPolicy, ErrorCode};

use super::Engine;
use super::diagnose::Progress;
use super::in_flight::Overtaken;
use super::register::superseded;
use super::settings::Settings;
use crate::ProvisioningError;
use crate::allocate::{Proximity, allocate, candidates};
use crate::attest::{Attested, Enrollment, Proof};
use crate::custom;
use crate::engine::RegisterRequest;
use crate::ports::{DeviceIdentity, HubError, IdentityAuth, Placement, Step, TwinSetup};
use crate::reprovision::{self, TwinPlan};
use crate::tenant::{LinkedHub, ProvisioningService};

impl Engine {
    /// Chooses the hub, applies the reprovisioning policy and registers the
    /// device identity there.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn place(
        &self,
        service: &ProvisioningService,
        attested: &Attested,
        req: &RegisterRequest,
        settings: &Settings<'_>,
        linked: &[LinkedHub],
        current: Option<&Placement>,
        previous_substatus: Option<onramp_model::Substatus>,
        device_id: &str,
        overtaken: &Overtaken,
        progress: &Progress,
    ) -> Result<Placed, ProvisioningError> {
        let current_hub = current.and_then(|c| linked.iter().find(|h| h.is_named(&c.hub)));
        let may_move = reprovision::may_move(
            settings.reprovision,
            req.force_registration,
            current,
            current_hub.is_some(),
        );
        let stay = current_hub.filter(|_| !may_move);

        let (hub, answer) = if settings.selection.policy == AllocationPolicy::Custom {
            let offered = match stay {
                Some(h) => vec![h],
                None => candidates(settings.selection, linked)?,
            };
            let target = settings.webhook(service)?;
            let request = custom::request(attested, current, req.body.payload.as_ref(), &offered);
            let answer = tokio::select! {
                answer = self.webhook.allocate(&target, &request) => {
                    answer.map_err(|e| custom::failure(&target, e))?
                }
                () = overtaken.wake.notified() => return Err(superseded(attested)),
            };
            (
                custom::chosen_hub(&target, &answer, &offered)?,
                Some(answer),
            )
        } else if let Some(h) = stay {
            (h, None)
        } else {
            let proximity = Proximity {
                client_region: self.regions.client_region(req.client_addr),
                latency: &*self.latency,
                tolerance_ms: self.config.latency_tolerance_ms,
            };
            let hub = allocate(
                settings.selection,
                linked,
                attested.registration_id.as_str(),
                proximity,
            )?;
            (hub, None)
        };

        progress.reach(Step::Hub);
        let plan = reprovision::plan(
            settings.reprovision,
            current,
            previous_substatus,
            current_hub.is_some(),
            &hub.name,
            device_id,
        );
        let (twin, substatus) = match plan.twin {
            TwinPlan::Keep => (TwinSetup::Keep, plan.substatus),
            TwinPlan::Initial => (
                TwinSetup::Initial(initial_twin(settings, answer.as_ref())),
                plan.substatus,
            ),
            TwinPlan::Migrate => {
                let (Some(from), Some(cur)) = (current_hub, current) else {
                    return Err(ProvisioningError::internal(
                        "migration without a current hub",
                    ));
                };
                let snapshot = self.hubs.twin(from, &cur.device_id).await.map_err(|e| {
                    ProvisioningError::new(
                        ErrorCode::HubRegistrationFailed,
                        format!(
                            "the twin of '{}' could not be read from its current hub '{}' to migrate it ({e}); \
                             register again later",
                            cur.device_id, from.name
                        ),
                    )
                })?;
                match snapshot {
                    Some(t) => (TwinSetup::Migrate(t), plan.substatus),
                    // The operator deleted the device from its hub: nothing to carry over.
                    None => (
                        TwinSetup::Initial(initial_twin(settings, answer.as_ref())),
                        if plan.substatus == onramp_model::Substatus::DeviceDataMigrated {
                            onramp_model::Substatus::DeviceDataReset
                        } else {
                            plan.substatus
                        },
                    ),
                }
            }
        };
        let identity = DeviceIdentity {
            device_id: device_id.to_owned(),
            auth: identity_auth(attested),
            capabilities: settings.capabilities,
            twin,
        };
        self.hubs
            .register_device(hub, &identity)
            .await
            .map_err(|e| hub_failure(&hub.name, e))?;
        progress.reach(Step::Record);
        Ok(Placed {
            hub: hub.name.clone(),
            substatus,
            payload: answer.and_then(|a| a.payload).filter(|p| !p.is_null()),
            leaves: plan.leaves,
        })
    }
}

/// The hub identity a proof calls for: the device's keys; its certificates'
/// thumbprints (individual enrollments); or any certificate under the
/// group's CA.
fn identity_auth(attested: &Attested) -> IdentityAuth {
    match (&attested.proof, &attested.enrollment) {
        (Proof::SymmetricKey { primary, secondary }, _) => IdentityAuth::SymmetricKey {
            primary: primary.clone(),
            secondary: secondary.clone(),
        },
        (
            Proof::Tpm {
                hub_primary,
                hub_secondary,
                ..
            },
            _,
        ) => IdentityAuth::SymmetricKey {
            primary: hub_primary.clone(),
            secondary: hub_secondary.clone(),
        },
        (
            Proof::X509 {
                signing: Some(anchor),
                ..
            },
            _,
        ) => IdentityAuth::CertificateAuthority {
            anchor: anchor.der.clone(),
        },
        (Proof::X509 { leaf, .. }, Enrollment::Individual(e)) => {
            let thumbprint = |slot: Option<&onramp_model::X509CertificateWithInfo>| {
                slot.and_then(|c| c.info.as_ref())
                    .map(|i| i.sha256_thumbprint.clone())
            };
            let certs = e
                .attestation
                .as_ref()
                .and_then(|a| a.x509.as_ref())
                .and_then(|x| x.client_certificates.as_ref());
            let primary = thumbprint(certs.and_then(|c| c.primary.as_ref()))
                .unwrap_or_else(|| leaf.info.sha256_thumbprint.clone());
            let secondary = thumbprint(certs.and_then(|c| c.secondary.as_ref()))
                .unwrap_or_else(|| primary.clone());
            IdentityAuth::SelfSigned {
                primary_thumbprint: primary,
                secondary_thumbprint: secondary,
            }
        }
        (Proof::X509 { leaf, .. }, Enrollment::Group(_)) => IdentityAuth::SelfSigned {
            primary_thumbprint: leaf.info.sha256_thumbprint.clone(),
            secondary_thumbprint: leaf.info.sha256_thumbprint.clone(),
        },
    }
}

fn hub_failure(hub: &str, e: HubError) -> ProvisioningError {
    match e {
        HubError::Unauthorized(m) => ProvisioningError::new(
            ErrorCode::IotHubUnauthorized,
            format!(
                "hub '{hub}' refused Onramp's credentials ({m}); relink it with a connection string that has registry write rights"
            ),
        ),
        HubError::Unreachable(m) => ProvisioningError::new(
            ErrorCode::HubRegistrationFailed,
            format!("hub '{hub}' could not be reached ({m}); register again later"),
        ),
        HubError::Rejected(m) => ProvisioningError::new(
            ErrorCode::HubRegistrationFailed,
            format!("hub '{hub}' refused the device identity: {m}"),
        ),
    }
}

/// Where a registration put the device.
pub(super) struct Placed {
    pub(super) hub: String,
    pub(super) substatus: onramp_model::Substatus,
    /// The webhook's payload for the device.
    pub(super) payload: Option<serde_json::Value>,
    /// The identity the device left behind.
    pub(super) leaves: Option<(String, String)>,
}

/// The twin a device starts from: the webhook's, else the enrollment's.
fn initial_twin(
    settings: &Settings<'_>,
    answer: Option<&onramp_model::allocation::AllocationResponse>,
) -> onramp_model::InitialTwin {
    answer
        .and_then(|a| a.initial_twin.clone())
        .or_else(|| settings.initial_twin.cloned())
        .unwrap_or_default()
}
