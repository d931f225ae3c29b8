//! The registration state machine: attest → allocate → register in the hub →
//! record → answer. Protocol-neutral: endpoints build the requests below from
//! HTTPS, MQTT or AMQP and encode the answer back.
//!
//! - `register`: a registration from its request to its record;
//!   `place`: the hub it goes to, and its identity there.
//! - `status`: polls and status lookups.
//! - `authenticate`: the service an ID scope names, and
//!   attestation in it.
//! - `tasks`: each registration in a task of its own, answered within the
//!   reply budget, and drained when the server stops.
//! - `in_flight`: operations still running, and the newest
//!   one of each device.
//! - `lease`: running operations recorded in the store, for polls
//!   through other nodes.
//! - `operation_id`: operation IDs and the time they carry.
//! - `settings`: what an enrollment decides, whichever kind it is.
//! - `diagnose`: each attempt's diagnostic entry, for the operator.

mod authenticate;
mod diagnose;
mod in_flight;
mod lease;
mod operation_id;
mod place;
mod register;
mod settings;
mod status;
mod tasks;

pub use operation_id::operation_started;
pub use tasks::Drained;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onramp_model::{DeviceRegistration, RegistrationId};

use crate::ProvisioningError;
use crate::allocate::Regions;
use crate::attest::{AttestationConfig, DeviceCredential};
use crate::diagnostics::{Diagnostics, DiagnosticsConfig};
use crate::events::Protocol;
use crate::ports::{
    AllocationWebhook, Clock, HubLatency, HubRegistry, NoLatency, Store, WebhookError,
    WebhookTarget,
};
use crate::throttle::{Throttle, ThrottleConfig};
use in_flight::InFlightOps;

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub attestation: AttestationConfig,
    /// How long after it started an operation can still be polled.
    pub operation_ttl_seconds: i64,
    /// Lowest-latency allocation shares devices among the hubs this close
    /// (in milliseconds) to the fastest one.
    pub latency_tolerance_ms: f64,
    /// How long a register call waits for its registration before it
    /// answers `assigning` and lets the device poll.
    pub reply_budget: Duration,
    /// How long a node vouches for a registration it records as running
    /// (renewed every third of it while the work goes on): a poll through
    /// another node answers `assigning` until the lease ends.
    pub operation_lease: Duration,
    /// Registrations running at once on this node, at the most; past it a
    /// register call is answered `ServerBusy` (503 with Retry-After) before
    /// any work. 0 is no bound.
    pub max_registrations_in_flight: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            attestation: AttestationConfig::default(),
            operation_ttl_seconds: 30 * 60,
            latency_tolerance_ms: 10.0,
            reply_budget: Duration::from_secs(10),
            operation_lease: Duration::from_secs(30),
            max_registrations_in_flight: 0,
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

impl OperationRequest {
    /// Who polls (what a status lookup carries) and the operation polled.
    fn into_parts(self) -> (StatusRequest, String) {
        let OperationRequest {
            id_scope,
            registration_id,
            credential,
            operation_id,
            protocol,
        } = self;
        let asker = StatusRequest {
            id_scope,
            registration_id,
            credential,
            protocol,
        };
        (asker, operation_id)
    }
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
    tasks: tasks::Tasks,
    throttle: Throttle,
    /// The start time (Unix ns) of the last operation ID minted: IDs never
    /// go back in time, even when the wall clock does.
    last_operation_start: std::sync::atomic::AtomicU64,
    /// This node's name, in the running operations it records.
    node: String,
    /// Where each attempt's diagnostic entry goes.
    diagnostics: Diagnostics,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        hubs: Arc<dyn HubRegistry>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        tasks::start_metrics(&config);
        let diagnostics =
            Diagnostics::new(store.clone(), clock.clone(), DiagnosticsConfig::default());
        Self {
            store,
            hubs,
            clock,
            diagnostics,
            config,
            webhook: Arc::new(NoWebhook),
            latency: Arc::new(NoLatency),
            regions: Regions::default(),
            in_flight: Mutex::new(InFlightOps::default()),
            tasks: tasks::Tasks::default(),
            throttle: Throttle::default(),
            last_operation_start: std::sync::atomic::AtomicU64::new(0),
            node: "onramp".to_owned(),
        }
    }

    /// This node's name, recorded with the registrations it runs.
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }

    /// How diagnostic entries are written and how long they are kept.
    pub fn with_diagnostics(mut self, config: DiagnosticsConfig) -> Self {
        self.diagnostics = Diagnostics::new(self.store.clone(), self.clock.clone(), config);
        self
    }

    /// The diagnostics recorder: started by a server, flushed by tests.
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.diagnostics
    }

    /// The limits that answer `Throttled` (429 with Retry-After).
    pub fn with_throttle(mut self, config: ThrottleConfig) -> Self {
        self.throttle = Throttle::new(config);
        self
    }

    pub fn throttle(&self) -> &Throttle {
        &self.throttle
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
}

fn parse_registration_id(text: &str) -> Result<RegistrationId, ProvisioningError> {
    RegistrationId::parse(text).map_err(ProvisioningError::invalid)
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
