//! The diagnostic entry of a registration attempt: what the engine learns
//! as it goes (service, enrollment, the step reached), and how the attempt
//! ended. A TPM challenge is a step of an attempt, not an attempt.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};

use onramp_model::{AttestationType, ErrorCode, RegistrationOperationStatus, RegistrationStatus};

use super::{Engine, RegisterRequest};
use crate::ProvisioningError;
use crate::attest::{Attested, DeviceCredential, Proof};
use crate::diagnostics::Tenant;
use crate::error::enrollment_ref;
use crate::events::Protocol;
use crate::ports::{DiagnosticEntry, Outcome, Step, to_millis};

/// The step a registration's work has reached, moved on by the work itself.
#[derive(Debug, Default)]
pub(super) struct Progress(AtomicU8);

impl Progress {
    const STEPS: [Step; 5] = [
        Step::Attest,
        Step::Allocate,
        Step::Hub,
        Step::Record,
        Step::Done,
    ];

    pub(super) fn reach(&self, step: Step) {
        let index = Self::STEPS.iter().position(|s| *s == step).unwrap_or(0);
        self.0.fetch_max(index as u8, Ordering::Relaxed);
    }

    fn step(&self) -> Step {
        Self::STEPS
            .get(usize::from(self.0.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Step::Attest)
    }
}

/// What an attempt's entry will say, gathered while it runs.
pub(super) struct Trace {
    started: onramp_model::UtcTime,
    id_scope: String,
    registration_id: String,
    protocol: Protocol,
    client_addr: Option<IpAddr>,
    attestation: Option<AttestationType>,
    service: Option<String>,
    enrollment: Option<String>,
    operation_id: Option<String>,
    pub(super) progress: Progress,
}

impl Trace {
    /// The trace of register call `req`.
    pub(super) fn of(engine: &Engine, req: &RegisterRequest) -> Self {
        Self::new(
            engine,
            &req.id_scope,
            &req.registration_id,
            &req.credential,
            req.protocol,
            req.client_addr,
        )
    }

    pub(super) fn new(
        engine: &Engine,
        id_scope: &str,
        registration_id: &str,
        credential: &DeviceCredential,
        protocol: Protocol,
        client_addr: Option<IpAddr>,
    ) -> Self {
        Self {
            started: engine.clock.now(),
            id_scope: bounded(id_scope, MAX_ID_CHARS),
            registration_id: bounded(registration_id, MAX_ID_CHARS),
            protocol,
            client_addr,
            attestation: match credential {
                DeviceCredential::SasToken(_) => Some(AttestationType::SymmetricKey),
                DeviceCredential::X509Chain(_) => Some(AttestationType::X509),
                DeviceCredential::Tpm { .. } => Some(AttestationType::Tpm),
                DeviceCredential::None => None,
            },
            service: None,
            enrollment: None,
            operation_id: None,
            progress: Progress::default(),
        }
    }

    /// The service the ID scope named.
    pub(super) fn in_service(&mut self, service: &str) {
        self.service = Some(service.to_owned());
    }

    /// Attestation admitted the device: the enrollment and how it proved itself.
    pub(super) fn attested(&mut self, attested: &Attested) {
        self.enrollment = Some(enrollment_ref(
            attested.enrollment.kind(),
            attested.enrollment.id(),
        ));
        self.attestation = Some(match attested.proof {
            Proof::SymmetricKey { .. } => AttestationType::SymmetricKey,
            Proof::X509 { .. } => AttestationType::X509,
            Proof::Tpm { .. } => AttestationType::Tpm,
        });
    }

    /// The device's work begins under `operation_id`.
    pub(super) fn assigning(&mut self, operation_id: &str) {
        self.operation_id = Some(operation_id.to_owned());
        self.progress.reach(Step::Allocate);
    }
}

impl Engine {
    /// Records the attempt `trace` followed, which ended in `result`.
    pub(super) fn diagnose(
        &self,
        trace: Trace,
        result: Result<&RegistrationOperationStatus, &ProvisioningError>,
    ) {
        let step = trace.progress.step();
        let mut entry = DiagnosticEntry {
            time: to_millis(self.clock.now()),
            service: String::new(),
            registration_id: trace.registration_id,
            protocol: trace.protocol.as_str().to_owned(),
            client_address: trace.client_addr.map(|a| a.to_string()),
            attestation: trace.attestation,
            enrollment: trace.enrollment,
            step,
            outcome: Outcome::Assigned,
            error_code: None,
            message: String::new(),
            duration_ms: millis_between(trace.started, self.clock.now()),
            operation_id: trace.operation_id,
            assigned_hub: None,
            device_id: None,
        };
        match result {
            // The device is asked to sign with its TPM: the attempt goes on.
            Err(e) if e.tpm_challenge.is_some() => return,
            Err(e) => {
                entry.outcome = if step == Step::Attest && !is_ours(e.code) {
                    Outcome::Refused
                } else {
                    Outcome::Failed
                };
                entry.error_code = Some(e.code.code() as i32);
                entry.message = bounded(&e.message, MAX_MESSAGE_CHARS);
                if entry.enrollment.is_none() {
                    entry.enrollment = e.enrollment.clone();
                }
            }
            Ok(status) => {
                let Some(state) = &status.registration_state else {
                    return;
                };
                entry.assigned_hub = state.assigned_hub.clone();
                entry.device_id = state.device_id.clone();
                if state.status == RegistrationStatus::Assigned {
                    entry.step = Step::Done;
                    entry.message = format!(
                        "assigned to hub '{}' as device '{}'{}",
                        state.assigned_hub.as_deref().unwrap_or_default(),
                        state.device_id.as_deref().unwrap_or_default(),
                        state
                            .substatus
                            .map(|s| format!(" ({})", s.as_str()))
                            .unwrap_or_default()
                    );
                } else {
                    entry.outcome = Outcome::Failed;
                    entry.error_code = state.error_code;
                    entry.message = bounded(
                        state.error_message.as_deref().unwrap_or_default(),
                        MAX_MESSAGE_CHARS,
                    );
                }
            }
        }
        let tenant = match trace.service {
            Some(service) => Tenant::Service(service),
            None => Tenant::Scope(trace.id_scope),
        };
        self.diagnostics.record(tenant, entry);
    }
}

/// The longest registration ID or ID scope an entry keeps. What a device
/// sends is recorded before it is checked (a refusal of a malformed ID is
/// worth an entry too), so an entry keeps at most this much of it: Azure's
/// IDs are at most 128 characters.
const MAX_ID_CHARS: usize = 128;
/// The longest message an entry keeps (messages quote what the device sent).
const MAX_MESSAGE_CHARS: usize = 1024;

/// `text` as an entry keeps it: control characters replaced (they would
/// reach an operator's terminal through `onramp diagnostics`), and cut at
/// `max` characters, an ellipsis marking the cut.
fn bounded(text: &str, max: usize) -> String {
    let mut kept: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        kept.push('…');
    }
    kept
}

/// Errors that are the server's, not the device's: an attempt that meets
/// one before its assignment began failed rather than was refused.
fn is_ours(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::InternalError | ErrorCode::StoreUnavailable)
}

fn millis_between(a: onramp_model::UtcTime, b: onramp_model::UtcTime) -> u64 {
    u64::try_from((b.unix_nanos() - a.unix_nanos()) / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn what_a_device_sent_is_kept_bounded_and_without_control_characters() {
        assert_eq!(bounded("dev-1", 128), "dev-1");
        assert_eq!(bounded("a\u{1b}[31mb\n", 128), "a\u{FFFD}[31mb\u{FFFD}");
        let long = "é".repeat(70_000);
        let kept = bounded(&long, 128);
        assert_eq!(kept.chars().count(), 129);
        assert!(kept.ends_with('…'));
        assert_eq!(bounded(&"x".repeat(128), 128), "x".repeat(128));
    }
}
