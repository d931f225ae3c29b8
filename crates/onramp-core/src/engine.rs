//! The registration state machine: attest → allocate → register in the hub →
//! record → answer. Protocol-neutral: endpoints build the requests below from
//! HTTPS, MQTT or AMQP and encode the answer back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use onramp_model::{
    DeviceRegistration, DeviceRegistrationState, ErrorCode, IdScope, RegistrationId,
    RegistrationOperationStatus, RegistrationStatus, Substatus, SymmetricKeyRegistrationResult,
    UtcTime, X509RegistrationResult,
};

use crate::ProvisioningError;
use crate::allocate::{HubSelection, allocate};
use crate::attest::{AttestationConfig, Attested, DeviceCredential, Enrollment, Proof, attest};
use crate::events::{AttestationAttempt, Protocol, RegistrationAttempt};
use crate::ports::{
    Clock, DeviceIdentity, HubError, HubRegistry, IdentityAuth, RegistrationRecord, Store,
    TwinSetup,
};
use crate::tenant::ProvisioningService;

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub attestation: AttestationConfig,
    /// How long after it started an operation can still be polled.
    pub operation_ttl_seconds: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            attestation: AttestationConfig::default(),
            operation_ttl_seconds: 30 * 60,
        }
    }
}

/// A device asks to be provisioned.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub id_scope: String,
    /// From the URL, MQTT username or AMQP link: never only from the body.
    pub registration_id: String,
    pub credential: DeviceCredential,
    pub body: DeviceRegistration,
    pub force_registration: bool,
    /// Chosen by the endpoint (see [`Engine::new_operation_id`]) so it can
    /// answer `assigning` if the work outlives its reply budget.
    pub operation_id: String,
    pub protocol: Protocol,
}

/// A device polls an operation.
#[derive(Debug, Clone)]
pub struct OperationRequest {
    pub id_scope: String,
    pub registration_id: String,
    pub credential: DeviceCredential,
    pub operation_id: String,
    pub protocol: Protocol,
}

/// A device asks for its registration record.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    pub id_scope: String,
    pub registration_id: String,
    pub credential: DeviceCredential,
    pub protocol: Protocol,
}

pub struct Engine {
    store: Arc<dyn Store>,
    hubs: Arc<dyn HubRegistry>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// Operations whose work has not finished yet, by operation ID.
    in_flight: Mutex<HashMap<String, InFlight>>,
}

#[derive(Debug, Clone)]
struct InFlight {
    service: String,
    registration_key: String,
    registration_id: String,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        hubs: Arc<dyn HubRegistry>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        Self {
            store,
            hubs,
            clock,
            config,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A fresh operation ID, `1.<start time, hex ns>.<uuid>`: only characters
    /// SDKs can put unescaped into paths and topics.
    pub fn new_operation_id(&self) -> String {
        let nanos = self.clock.now().unix_nanos().max(0) as u64;
        format!("1.{nanos:016x}.{}", uuid::Uuid::new_v4())
    }

    /// Runs a registration to its end and records it. Assignment failures
    /// (no hub, hub down) are recorded and answered as `failed`; refusals
    /// (bad credential, unknown device, disabled enrollment, bad input) are
    /// errors and leave no trace in the store or the hub.
    pub async fn register(
        &self,
        req: RegisterRequest,
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
        let attested = self
            .authenticate(
                &req.id_scope,
                &registration_id,
                &req.credential,
                req.protocol,
            )
            .await?;
        let (service, attested) = attested;

        let key = registration_id.key();
        self.lock_in_flight().insert(
            req.operation_id.clone(),
            InFlight {
                service: service.name.clone(),
                registration_key: key.clone(),
                registration_id: registration_id.to_string(),
            },
        );
        let result = self.assign(&service, &attested, &req).await;
        self.lock_in_flight().remove(&req.operation_id);
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
            operation_id: req.operation_id,
            status: state.status,
            registration_state: Some(state),
        })
    }

    /// Allocation, hub registration and the durable record.
    async fn assign(
        &self,
        service: &ProvisioningService,
        attested: &Attested,
        req: &RegisterRequest,
    ) -> Result<RegistrationRecord, ProvisioningError> {
        let key = attested.registration_id.key();
        let previous = self.store.registration(&service.name, &key).await?;
        let linked = self.store.linked_hubs(&service.name).await?;
        let settings = Settings::of(&attested.enrollment, service);
        let device_id = settings
            .device_id
            .unwrap_or(attested.registration_id.as_str())
            .to_owned();

        let outcome: Result<String, ProvisioningError> = async {
            let hub = allocate(
                settings.selection,
                &linked,
                attested.registration_id.as_str(),
            )?;
            let same_place = previous.as_ref().is_some_and(|p| {
                p.state.status == RegistrationStatus::Assigned
                    && p.state
                        .assigned_hub
                        .as_deref()
                        .is_some_and(|h| hub.is_named(h))
                    && p.state.device_id.as_deref() == Some(device_id.as_str())
            });
            let twin = if same_place && !req.force_registration {
                TwinSetup::Keep
            } else {
                TwinSetup::Initial(settings.initial_twin.cloned().unwrap_or_default())
            };
            let identity = DeviceIdentity {
                device_id: device_id.clone(),
                auth: identity_auth(attested),
                capabilities: settings.capabilities,
                twin,
            };
            self.hubs
                .register_device(hub, &identity)
                .await
                .map_err(|e| hub_failure(&hub.name, e))?;
            Ok(hub.name.clone())
        }
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
            Proof::X509 { leaf, signing } => {
                state.x509 = Some(X509RegistrationResult {
                    certificate_info: Some(leaf.info.clone()),
                    enrollment_group_id: attested.enrollment.group_id().map(str::to_owned),
                    signing_certificate_info: signing.as_ref().map(|s| s.info.clone()),
                });
            }
        }
        match outcome {
            Ok(hub) => {
                state.assigned_hub = Some(hub);
                state.device_id = Some(device_id);
                state.substatus = Some(Substatus::InitialAssignment);
            }
            Err(e) => {
                state.status = RegistrationStatus::Failed;
                state.error_code = Some(e.code.code() as i32);
                state.error_message = Some(e.message);
            }
        }
        let record = RegistrationRecord {
            state,
            operation_id: req.operation_id.clone(),
            enrollment_group_id: attested.enrollment.group_id().map(str::to_owned),
        };
        Ok(self
            .store
            .put_registration(&service.name, &record, self.clock.now())
            .await?)
    }

    /// Answers a poll: `assigning` while the work runs, then the recorded result.
    pub async fn operation_status(
        &self,
        req: OperationRequest,
    ) -> Result<RegistrationOperationStatus, ProvisioningError> {
        let registration_id = parse_registration_id(&req.registration_id)?;
        let (service, _) = self
            .authenticate(
                &req.id_scope,
                &registration_id,
                &req.credential,
                req.protocol,
            )
            .await?;
        let key = registration_id.key();
        let running = self
            .lock_in_flight()
            .get(&req.operation_id)
            .filter(|f| f.service == service.name && f.registration_key == key)
            .cloned();
        if let Some(op) = running {
            return Ok(RegistrationOperationStatus {
                operation_id: req.operation_id,
                status: RegistrationStatus::Assigning,
                registration_state: Some(DeviceRegistrationState::new(
                    op.registration_id,
                    RegistrationStatus::Assigning,
                )),
            });
        }
        let not_found = || {
            ProvisioningError::new(
                ErrorCode::OperationNotFound,
                format!(
                    "operation '{}' of registration '{registration_id}' is unknown or older than {} minutes; register again",
                    req.operation_id,
                    self.config.operation_ttl_seconds / 60
                ),
            )
        };
        let started = operation_started(&req.operation_id).ok_or_else(not_found)?;
        let now = self.clock.now();
        if now.unix_nanos() - started
            > i128::from(self.config.operation_ttl_seconds) * 1_000_000_000
        {
            return Err(not_found());
        }
        let record = self
            .store
            .registration(&service.name, &key)
            .await?
            .ok_or_else(not_found)?;
        // Any recent operation of this device answers with its current record:
        // polls may arrive late, or through another Onramp node.
        Ok(RegistrationOperationStatus {
            operation_id: req.operation_id,
            status: record.state.status,
            registration_state: Some(record.state),
        })
    }

    /// The device's registration record (the device API's status lookup).
    pub async fn registration_status(
        &self,
        req: StatusRequest,
    ) -> Result<DeviceRegistrationState, ProvisioningError> {
        let registration_id = parse_registration_id(&req.registration_id)?;
        let (service, _) = self
            .authenticate(
                &req.id_scope,
                &registration_id,
                &req.credential,
                req.protocol,
            )
            .await?;
        self.store
            .registration(&service.name, &registration_id.key())
            .await?
            .map(|r| r.state)
            .ok_or_else(|| {
                ProvisioningError::new(
                    ErrorCode::RegistrationNotFound,
                    format!(
                        "registration '{registration_id}' has not registered yet; register first"
                    ),
                )
            })
    }

    /// Checks a device's credential without registering it (an MQTT or AMQP
    /// connection is accepted or refused before any request).
    pub async fn check_device(
        &self,
        id_scope: &str,
        registration_id: &str,
        credential: &DeviceCredential,
        protocol: Protocol,
    ) -> Result<(), ProvisioningError> {
        let registration_id = parse_registration_id(registration_id)?;
        self.authenticate(id_scope, &registration_id, credential, protocol)
            .await
            .map(|_| ())
    }

    async fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &RegistrationId,
        credential: &DeviceCredential,
        protocol: Protocol,
    ) -> Result<(ProvisioningService, Attested), ProvisioningError> {
        let service = self.service_for_scope(id_scope).await;
        let result = match service {
            Ok(service) => attest(
                &*self.store,
                &service.name,
                service.id_scope.as_str(),
                registration_id,
                credential,
                self.clock.now().unix_seconds(),
                self.config.attestation,
            )
            .await
            .map(|a| (service, a)),
            Err(e) => Err(e),
        };
        AttestationAttempt {
            id_scope,
            service: result.as_ref().ok().map(|(s, _)| s.name.as_str()),
            registration_id: registration_id.as_str(),
            protocol,
            error: result.as_ref().err(),
        }
        .emit();
        result
    }

    async fn service_for_scope(
        &self,
        id_scope: &str,
    ) -> Result<ProvisioningService, ProvisioningError> {
        let scope = IdScope::parse(id_scope)
            .map_err(|e| ProvisioningError::new(ErrorCode::ProvisioningServiceNotFound, e))?;
        self.store.service_by_scope(&scope.key()).await?.ok_or_else(|| {
            ProvisioningError::new(
                ErrorCode::ProvisioningServiceNotFound,
                format!("no provisioning service has ID scope '{id_scope}'; check the ID scope configured on the device"),
            )
        })
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        // A poisoned map only means another task panicked mid-insert; the data is still usable.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
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

fn parse_registration_id(text: &str) -> Result<RegistrationId, ProvisioningError> {
    RegistrationId::parse(text).map_err(ProvisioningError::invalid)
}

/// Start time (Unix ns) encoded in an operation ID from [`Engine::new_operation_id`].
fn operation_started(operation_id: &str) -> Option<i128> {
    let mut parts = operation_id.split('.');
    let (version, time, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if version != "1" || rest.is_empty() || parts.next().is_some() {
        return None;
    }
    u64::from_str_radix(time, 16).ok().map(i128::from)
}

fn seconds_between(a: UtcTime, b: UtcTime) -> f64 {
    (b.unix_nanos() - a.unix_nanos()) as f64 / 1e9
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

/// The enrollment members the engine reads, whichever kind it is.
struct Settings<'a> {
    selection: HubSelection<'a>,
    initial_twin: Option<&'a onramp_model::InitialTwin>,
    capabilities: onramp_model::DeviceCapabilities,
    device_id: Option<&'a str>,
}

impl<'a> Settings<'a> {
    fn of(enrollment: &'a Enrollment, service: &ProvisioningService) -> Self {
        match enrollment {
            Enrollment::Individual(e) => Settings {
                selection: HubSelection {
                    policy: e.allocation_policy.unwrap_or(service.allocation_policy),
                    iot_hubs: e.iot_hubs.as_deref().unwrap_or_default(),
                    iot_hub_host_name: e.iot_hub_host_name.as_deref(),
                },
                initial_twin: e.initial_twin.as_ref(),
                capabilities: e.capabilities.unwrap_or_default(),
                device_id: e.device_id.as_deref().filter(|d| !d.is_empty()),
            },
            Enrollment::Group(g) => Settings {
                selection: HubSelection {
                    policy: g.allocation_policy.unwrap_or(service.allocation_policy),
                    iot_hubs: g.iot_hubs.as_deref().unwrap_or_default(),
                    iot_hub_host_name: g.iot_hub_host_name.as_deref(),
                },
                initial_twin: g.initial_twin.as_ref(),
                capabilities: g.capabilities.unwrap_or_default(),
                device_id: None,
            },
        }
    }
}
