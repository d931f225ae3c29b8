//! The registration state machine: attest → allocate → register in the hub →
//! record → answer. Protocol-neutral: endpoints build the requests below from
//! HTTPS, MQTT or AMQP and encode the answer back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use onramp_model::{
    AllocationPolicy, CustomAllocationDefinition, DeviceRegistration, DeviceRegistrationState,
    ErrorCode, IdScope, RegistrationId, RegistrationOperationStatus, RegistrationStatus,
    ReprovisionPolicy, SymmetricKeyRegistrationResult, UtcTime, X509RegistrationResult,
};

use crate::ProvisioningError;
use crate::allocate::{HubSelection, Proximity, Regions, allocate, candidates};
use crate::attest::{
    AttestationConfig, Attested, DeviceCredential, Enrollment, GROUP_PAGE, Prefetched, Proof,
    attest,
};
use crate::custom;
use crate::events::{
    AttestationAttempt, AttestationStep, HubCleanup, Protocol, RegistrationAttempt,
};
use crate::ports::{
    AllocationWebhook, Clock, DeviceIdentity, HubError, HubLatency, HubRegistry, IdentityAuth,
    NoLatency, Placement, RegistrationInputs, RegistrationRecord, Store, TwinSetup, WebhookError,
    WebhookTarget,
};
use crate::reprovision::{self, TwinPlan};
use crate::tenant::{LinkedHub, ProvisioningService};

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub attestation: AttestationConfig,
    /// How long after it started an operation can still be polled.
    pub operation_ttl_seconds: i64,
    /// Lowest-latency allocation shares devices among the hubs this close
    /// (in milliseconds) to the fastest one.
    pub latency_tolerance_ms: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            attestation: AttestationConfig::default(),
            operation_ttl_seconds: 30 * 60,
            latency_tolerance_ms: 10.0,
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
    /// The device's address, for the operator's network-to-region table.
    pub client_addr: Option<IpAddr>,
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
    webhook: Arc<dyn AllocationWebhook>,
    latency: Arc<dyn HubLatency>,
    regions: Regions,
    /// Operations whose work has not finished yet.
    in_flight: Mutex<InFlightOps>,
}

#[derive(Default)]
struct InFlightOps {
    by_operation: HashMap<String, InFlight>,
    /// Per device (`service/key`) with operations running: the newest of
    /// them, and how many there are. An older one still running (a webhook
    /// being retried, say) must not overwrite what a newer one recorded.
    latest: HashMap<String, (String, usize)>,
}

#[derive(Debug, Clone)]
struct InFlight {
    service: String,
    registration_key: String,
    registration_id: String,
    overtaken: Arc<Overtaken>,
}

/// Set when a newer registration of the same device starts: an older one
/// stops waiting on its webhook and records nothing.
#[derive(Debug, Default)]
struct Overtaken {
    happened: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Overtaken {
    fn signal(&self) {
        self.happened
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    fn happened(&self) -> bool {
        self.happened.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// An operation in the in-flight map; removed when dropped.
struct Running<'a> {
    engine: &'a Engine,
    operation_id: String,
    /// `service/key`: the device the operation registers.
    device: String,
    overtaken: Arc<Overtaken>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut ops = self.engine.lock_in_flight();
        ops.by_operation.remove(&self.operation_id);
        if let Some((_, running)) = ops.latest.get_mut(&self.device) {
            *running -= 1;
            if *running == 0 {
                ops.latest.remove(&self.device);
            }
        }
    }
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
            webhook: Arc::new(NoWebhook),
            latency: Arc::new(NoLatency),
            regions: Regions::default(),
            in_flight: Mutex::new(InFlightOps::default()),
        }
    }

    /// The client custom allocation calls webhooks with.
    pub fn with_webhook(mut self, webhook: Arc<dyn AllocationWebhook>) -> Self {
        self.webhook = webhook;
        self
    }

    /// Hub round trips measured from this node, for lowest-latency allocation.
    pub fn with_latency(mut self, latency: Arc<dyn HubLatency>) -> Self {
        self.latency = latency;
        self
    }

    /// This node's region and the operator's network-to-region table.
    pub fn with_regions(mut self, regions: Regions) -> Self {
        self.regions = regions;
        self
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
        // All the store reads of a registration at once; attestation and
        // allocation then work from these.
        let (found, earlier) = match self
            .registration_inputs(&req.id_scope, &registration_id)
            .await
        {
            Ok(inputs) => {
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
        let (service, attested) = self
            .attest_in(
                found,
                &req.id_scope,
                &registration_id,
                &req.credential,
                req.protocol,
                AttestationStep::Register,
            )
            .await?;
        let (previous, linked) = earlier;

        let key = registration_id.key();
        let running = self.running(
            &req.operation_id,
            InFlight {
                service: service.name.clone(),
                registration_key: key.clone(),
                registration_id: registration_id.to_string(),
                overtaken: Arc::default(),
            },
        );
        let result = self
            .assign(
                &service,
                &attested,
                &req,
                previous,
                linked,
                &running.overtaken,
            )
            .await;
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
            operation_id: req.operation_id,
            status: state.status,
            registration_state: Some(state),
        })
    }

    /// Allocation, hub registration and the durable record. A device that
    /// moved leaves its old hub identity behind only after the new record is
    /// durable, so a crash in between never loses where the device's data is.
    async fn assign(
        &self,
        service: &ProvisioningService,
        attested: &Attested,
        req: &RegisterRequest,
        previous: Option<Box<RegistrationRecord>>,
        linked: Vec<LinkedHub>,
        overtaken: &Overtaken,
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
            operation_id: req.operation_id.clone(),
            enrollment_group_id: attested.enrollment.group_id().map(str::to_owned),
            placement,
        };
        if overtaken.happened() {
            return Err(self
                .superseded_answer(service, attested, &record, &linked)
                .await);
        }
        let record = self
            .store
            .put_registration(&service.name, &record, self.clock.now())
            .await?;
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
        mine: &RegistrationRecord,
        linked: &[LinkedHub],
    ) -> ProvisioningError {
        if mine.state.status == RegistrationStatus::Assigned
            && let Some(made) = mine.placement.as_ref()
        {
            let recorded = self
                .store
                .registration(&service.name, &attested.registration_id.key())
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

    /// Chooses the hub, applies the reprovisioning policy and registers the
    /// device identity there.
    #[allow(clippy::too_many_arguments)]
    async fn place(
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
        Ok(Placed {
            hub: hub.name.clone(),
            substatus,
            payload: answer.and_then(|a| a.payload).filter(|p| !p.is_null()),
            leaves: plan.leaves,
        })
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
                AttestationStep::OperationStatus,
            )
            .await?;
        let key = registration_id.key();
        let running = self
            .lock_in_flight()
            .by_operation
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
        // An operation newer than the record's ended without one (its write
        // failed, or the process stopped): answering the older record would
        // tell the device a stale hub.
        if record.operation_id != req.operation_id
            && operation_started(&record.operation_id).is_some_and(|recorded| recorded < started)
        {
            return Err(ProvisioningError::new(
                ErrorCode::OperationNotFound,
                format!(
                    "operation '{}' of registration '{registration_id}' ended without a result; \
                     register again",
                    req.operation_id
                ),
            ));
        }
        // Any earlier operation of this device answers with its current
        // record: polls may arrive late.
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
                AttestationStep::RegistrationStatus,
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
        self.authenticate(
            id_scope,
            &registration_id,
            credential,
            protocol,
            AttestationStep::Connect,
        )
        .await
        .map(|_| ())
    }

    async fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &RegistrationId,
        credential: &DeviceCredential,
        protocol: Protocol,
        step: AttestationStep,
    ) -> Result<(ProvisioningService, Attested), ProvisioningError> {
        let found = self
            .service_for_scope(id_scope)
            .await
            .map(|service| (service, Prefetched::default()));
        self.attest_in(found, id_scope, registration_id, credential, protocol, step)
            .await
    }

    /// Attestation in the service found for the ID scope (or the error of not
    /// finding it), with the enrollment reads made already; records the attempt.
    async fn attest_in(
        &self,
        found: Result<(ProvisioningService, Prefetched), ProvisioningError>,
        id_scope: &str,
        registration_id: &RegistrationId,
        credential: &DeviceCredential,
        protocol: Protocol,
        step: AttestationStep,
    ) -> Result<(ProvisioningService, Attested), ProvisioningError> {
        let result = match found {
            Ok((service, prefetched)) => attest(
                &*self.store,
                prefetched,
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
            step,
            error: result.as_ref().err(),
        }
        .emit();
        result
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

    async fn registration_inputs(
        &self,
        id_scope: &str,
        registration_id: &RegistrationId,
    ) -> Result<RegistrationInputs, ProvisioningError> {
        self.store
            .registration_inputs(&scope_key(id_scope)?, &registration_id.key(), GROUP_PAGE)
            .await?
            .ok_or_else(|| no_service(id_scope))
    }

    /// Marks an operation as running until the guard drops, however the
    /// registration ends, and tells the device's previous newest operation,
    /// if one still runs, that it is overtaken.
    fn running(&self, operation_id: &str, op: InFlight) -> Running<'_> {
        let device = format!("{}/{}", op.service, op.registration_key);
        let overtaken = op.overtaken.clone();
        let mut ops = self.lock_in_flight();
        let newest = ops
            .latest
            .entry(device.clone())
            .or_insert_with(|| (String::new(), 0));
        let previous = std::mem::replace(&mut newest.0, operation_id.to_owned());
        newest.1 += 1;
        if let Some(older) = ops.by_operation.get(&previous) {
            older.overtaken.signal();
        }
        ops.by_operation.insert(operation_id.to_owned(), op);
        drop(ops);
        Running {
            engine: self,
            operation_id: operation_id.to_owned(),
            device,
            overtaken,
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, InFlightOps> {
        // A poisoned map only means another task panicked mid-insert; the data is still usable.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn superseded(attested: &Attested) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::RegistrationSuperseded,
        format!(
            "a newer registration of '{}' started while this one ran; its result is the \
             device's (poll it, or register again)",
            attested.registration_id
        ),
    )
}

/// The store key of the ID scope a device sent.
fn scope_key(id_scope: &str) -> Result<String, ProvisioningError> {
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

/// Where a registration put the device.
struct Placed {
    hub: String,
    substatus: onramp_model::Substatus,
    /// The webhook's payload for the device.
    payload: Option<serde_json::Value>,
    /// The identity the device left behind.
    leaves: Option<(String, String)>,
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

/// The custom-allocation client of an engine built without one.
struct NoWebhook;

#[async_trait::async_trait]
impl AllocationWebhook for NoWebhook {
    async fn allocate(
        &self,
        _target: &WebhookTarget,
        _request: &onramp_model::allocation::AllocationRequest,
    ) -> Result<onramp_model::allocation::AllocationResponse, WebhookError> {
        Err(WebhookError::Unreachable(
            "this Onramp server was started without a webhook client".into(),
        ))
    }
}

/// The enrollment members the engine reads, whichever kind it is.
struct Settings<'a> {
    selection: HubSelection<'a>,
    initial_twin: Option<&'a onramp_model::InitialTwin>,
    capabilities: onramp_model::DeviceCapabilities,
    device_id: Option<&'a str>,
    reprovision: ReprovisionPolicy,
    custom: Option<&'a CustomAllocationDefinition>,
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
                reprovision: e.reprovision_policy.unwrap_or_default(),
                custom: e.custom_allocation_definition.as_ref(),
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
                reprovision: g.reprovision_policy.unwrap_or_default(),
                custom: g.custom_allocation_definition.as_ref(),
            },
        }
    }

    /// The enrollment's webhook, else the service's default one.
    fn webhook(&self, service: &ProvisioningService) -> Result<WebhookTarget, ProvisioningError> {
        self.custom
            .filter(|d| !d.webhook_url.trim().is_empty())
            .or(service.custom_allocation.as_ref())
            .map(|d| WebhookTarget {
                url: d.webhook_url.trim().to_owned(),
                api_version: d.api_version.clone(),
            })
            .ok_or_else(|| {
                ProvisioningError::new(
                    ErrorCode::CustomAllocationFailed,
                    "the enrollment uses custom allocation but neither it nor the provisioning service \
                     names a webhook; set customAllocationDefinition on the enrollment or \
                     onramp service update --webhook-url",
                )
            })
    }
}
