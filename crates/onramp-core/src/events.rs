//! Observable events: each is one struct that logs and counts together, so a
//! log line and a metric can never disagree.
//!
//! Every metric is declared once as a [`Metric`] (name, kind, `# HELP` text)
//! and listed in [`METRICS`]; the events record through those declarations,
//! and `onramp serve` describes them all to the recorder at start. The
//! crates above the engine (the hub, the webhook client) declare theirs the
//! same way in their own `events` modules. README's metrics table is the
//! contract, and a test scrapes a running server to hold both to it.
//!
//! The engine's metrics (labels in braces):
//! - `onramp_attestation_attempts_total{service, protocol, step, outcome}`:
//!   `step` says why the credential was checked, so that an MQTT registration
//!   (checked at CONNECT and again at register) is not read as two devices
//! - `onramp_registration_attempts_total{service, hub, protocol, status}`
//! - `onramp_device_assignments_total{service, hub}`
//! - `onramp_registration_duration_seconds{protocol, status}` (histogram)
//! - `onramp_hub_cleanups_total{service, outcome}`: identities removed from
//!   the hub a device moved away from
//! - `onramp_throttled_total{limit}`: requests a throttle limit refused
//!   (`service`, `device`, `address`, `service-api`) or failures it
//!   answered late (`registration-failures`, `policy-failures`); each
//!   configured limit starts at 0
//! - `onramp_registrations_in_flight`: registrations running on this node
//! - `onramp_registrations_shed_total`: register calls refused with 503
//!   `ServerBusy` because the node ran `max_registrations_in_flight`
//! - `onramp_diagnostics_dropped_total`: diagnostic entries lost because
//!   the writer was behind or the store failed

use onramp_model::RegistrationStatus;

use crate::ProvisioningError;

/// How a metric is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// Exported as a Prometheus summary (quantiles, sum and count).
    Histogram,
}

/// A metric's declaration: its name, its kind and its `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub kind: MetricKind,
    pub name: &'static str,
    pub help: &'static str,
}

impl Metric {
    pub const fn new(kind: MetricKind, name: &'static str, help: &'static str) -> Self {
        Self { kind, name, help }
    }

    /// Gives the installed recorder the metric's kind and `# HELP` text.
    pub fn describe(&self) {
        match self.kind {
            MetricKind::Counter => metrics::describe_counter!(self.name, self.help),
            MetricKind::Gauge => metrics::describe_gauge!(self.name, self.help),
            MetricKind::Histogram => metrics::describe_histogram!(self.name, self.help),
        }
    }
}

pub const ATTESTATION_ATTEMPTS: &str = "onramp_attestation_attempts_total";
pub const REGISTRATION_ATTEMPTS: &str = "onramp_registration_attempts_total";
pub const DEVICE_ASSIGNMENTS: &str = "onramp_device_assignments_total";
pub const REGISTRATION_DURATION: &str = "onramp_registration_duration_seconds";
pub const HUB_CLEANUPS: &str = "onramp_hub_cleanups_total";
pub const THROTTLED: &str = "onramp_throttled_total";
pub const REGISTRATIONS_IN_FLIGHT: &str = "onramp_registrations_in_flight";
pub const REGISTRATIONS_SHED: &str = "onramp_registrations_shed_total";
pub const DIAGNOSTICS_DROPPED: &str = "onramp_diagnostics_dropped_total";

/// The device transport a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Https,
    Mqtt,
    MqttWs,
    Amqp,
    AmqpWs,
    /// Calls made in-process (tests, tools).
    Internal,
}

impl Protocol {
    /// AMQP, over WebSockets or not.
    pub fn amqp(websocket: bool) -> Self {
        if websocket {
            Protocol::AmqpWs
        } else {
            Protocol::Amqp
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Https => "https",
            Protocol::Mqtt => "mqtt",
            Protocol::MqttWs => "mqtt-ws",
            Protocol::Amqp => "amqp",
            Protocol::AmqpWs => "amqp-ws",
            Protocol::Internal => "internal",
        }
    }
}

/// Why a device's credential is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttestationStep {
    /// An MQTT CONNECT or an AMQP SASL exchange, before any request.
    Connect,
    /// A register request.
    Register,
    /// A poll of a registration operation.
    OperationStatus,
    /// The device API's lookup of its own registration record.
    RegistrationStatus,
}

impl AttestationStep {
    pub fn as_str(&self) -> &'static str {
        match self {
            AttestationStep::Connect => "connect",
            AttestationStep::Register => "register",
            AttestationStep::OperationStatus => "operation-status",
            AttestationStep::RegistrationStatus => "registration-status",
        }
    }
}

/// One device operation's log event: the same fields whether it succeeded
/// (`result = "Success"` at the `success` level) or failed (`"Failure"` at
/// the `failure` level, with the error's own fields).
macro_rules! outcome_event {
    (
        $error:expr, success: $ok:ident, failure: $failed:ident,
        { $($field:tt)* }, |$e:ident| { $($error_field:tt)* }
    ) => {
        match $error {
            None => tracing::$ok!(
                target: "onramp::device_operations",
                $($field)*
                result = "Success",
            ),
            Some($e) => tracing::$failed!(
                target: "onramp::device_operations",
                $($field)*
                result = "Failure",
                $($error_field)*
            ),
        }
    };
}

/// A device tried to prove who it is.
pub struct AttestationAttempt<'a> {
    pub id_scope: &'a str,
    pub service: Option<&'a str>,
    pub registration_id: &'a str,
    pub protocol: Protocol,
    pub step: AttestationStep,
    pub error: Option<&'a ProvisioningError>,
}

impl AttestationAttempt<'_> {
    pub fn emit(&self) {
        let outcome = self.error.map_or("success", |e| e.code.name());
        metrics::counter!(
            ATTESTATION_ATTEMPTS,
            "service" => self.service.unwrap_or("unknown").to_owned(),
            "protocol" => self.protocol.as_str(),
            "step" => self.step.as_str(),
            "outcome" => outcome,
        )
        .increment(1);
        outcome_event!(self.error, success: debug, failure: info, {
            operation = "AttestationAttempt",
            id_scope = self.id_scope,
            registration_id = self.registration_id,
            protocol = self.protocol.as_str(),
            step = self.step.as_str(),
        }, |e| {
            error_code = e.code.code(),
            error = e.code.name(),
            message = %e.message,
        });
    }
}

/// A registration ran to its end (assigned or failed).
pub struct RegistrationAttempt<'a> {
    pub service: &'a str,
    pub registration_id: &'a str,
    pub hub: Option<&'a str>,
    pub protocol: Protocol,
    pub status: RegistrationStatus,
    pub error_code: Option<i32>,
    pub seconds: f64,
}

impl RegistrationAttempt<'_> {
    pub fn emit(&self) {
        let hub = self.hub.unwrap_or("none").to_owned();
        metrics::counter!(
            REGISTRATION_ATTEMPTS,
            "service" => self.service.to_owned(),
            "hub" => hub.clone(),
            "protocol" => self.protocol.as_str(),
            "status" => self.status.as_str(),
        )
        .increment(1);
        if self.status == RegistrationStatus::Assigned {
            metrics::counter!(
                DEVICE_ASSIGNMENTS,
                "service" => self.service.to_owned(),
                "hub" => hub.clone(),
            )
            .increment(1);
        }
        metrics::histogram!(
            REGISTRATION_DURATION,
            "protocol" => self.protocol.as_str(),
            "status" => self.status.as_str(),
        )
        .record(self.seconds);
        tracing::info!(
            target: "onramp::device_operations",
            operation = "Registration",
            service = self.service,
            registration_id = self.registration_id,
            hub = %hub,
            protocol = self.protocol.as_str(),
            status = self.status.as_str(),
            error_code = self.error_code,
            duration_ms = self.seconds * 1000.0,
        );
    }
}

/// A device moved: its identity on the hub it left was removed (or not).
pub struct HubCleanup<'a> {
    pub service: &'a str,
    pub hub: &'a str,
    pub device_id: &'a str,
    pub error: Option<&'a crate::ports::HubError>,
}

impl HubCleanup<'_> {
    pub fn emit(&self) {
        metrics::counter!(
            HUB_CLEANUPS,
            "service" => self.service.to_owned(),
            "outcome" => if self.error.is_some() { "failed" } else { "removed" },
        )
        .increment(1);
        outcome_event!(self.error, success: info, failure: warn, {
            operation = "HubCleanup",
            service = self.service,
            hub = self.hub,
            device_id = self.device_id,
        }, |e| {
            message = %e,
            "the device moved to another hub but its old identity could not be removed; delete it from that hub",
        });
    }
}

/// The engine's metrics.
pub const METRICS: &[Metric] = &[
    Metric::new(
        MetricKind::Counter,
        ATTESTATION_ATTEMPTS,
        "Device credential checks, by the step that checked them and their outcome.",
    ),
    Metric::new(
        MetricKind::Counter,
        REGISTRATION_ATTEMPTS,
        "Registrations that ran to their end, by final status.",
    ),
    Metric::new(
        MetricKind::Counter,
        DEVICE_ASSIGNMENTS,
        "Devices assigned to a hub.",
    ),
    Metric::new(
        MetricKind::Histogram,
        REGISTRATION_DURATION,
        "Time from a register request to its final status, in seconds.",
    ),
    Metric::new(
        MetricKind::Counter,
        HUB_CLEANUPS,
        "Identities removed, or not, from the hub a device moved away from.",
    ),
    Metric::new(
        MetricKind::Counter,
        THROTTLED,
        "Requests answered 429 Throttled, and failed authentications answered late, by the limit that refused or delayed them.",
    ),
    Metric::new(
        MetricKind::Gauge,
        REGISTRATIONS_IN_FLIGHT,
        "Registrations running on this node now.",
    ),
    Metric::new(
        MetricKind::Counter,
        REGISTRATIONS_SHED,
        "Register calls answered 503 ServerBusy because the node ran its limit of registrations at once.",
    ),
    Metric::new(
        MetricKind::Counter,
        DIAGNOSTICS_DROPPED,
        "Diagnostic entries of registration attempts lost because the writer was behind or the store failed.",
    ),
];
