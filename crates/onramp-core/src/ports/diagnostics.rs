//! Diagnostics: one entry per registration attempt (assigned, failed or
//! refused), kept by the store for the operator's question "why was my
//! device refused?".

use std::time::Duration;

use async_trait::async_trait;
use onramp_model::{AttestationType, IdKey, UtcTime};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StoreError;

/// How a registration attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The registration ended assigned.
    Assigned,
    /// The device was accepted but could not be assigned (webhook failed,
    /// hub error, no hub, …).
    Failed,
    /// The device's identity was not accepted (unknown device, wrong
    /// key, certificate or token, disabled enrollment, throttled).
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Assigned, Outcome::Failed, Outcome::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Assigned => "assigned",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }

    /// The outcome named `text` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

/// The last step a registration attempt reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// The device's credential and its enrollment.
    Attest,
    /// The choice of a hub (allocation policy or webhook).
    Allocate,
    /// The device's identity in the chosen hub.
    Hub,
    /// The registration record.
    Record,
    /// Finished: the device heard its result.
    Done,
}

/// One registration attempt, as the operator reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticEntry {
    /// When the attempt ended, to the millisecond.
    #[serde(serialize_with = "millis", deserialize_with = "rfc3339")]
    pub time: UtcTime,
    /// The provisioning service it was made in.
    pub service: String,
    pub registration_id: String,
    /// `https`, `mqtt`, `mqtt-ws`, `amqp` or `amqp-ws`.
    pub protocol: String,
    pub client_address: Option<String>,
    /// How the device attested, when known.
    pub attestation: Option<AttestationType>,
    /// `individual:<id>` or `group:<id>`: the enrollment that matched, if any.
    pub enrollment: Option<String>,
    pub step: Step,
    pub outcome: Outcome,
    /// The Azure error code; none when assigned.
    pub error_code: Option<i32>,
    /// The check that failed, or where the device went.
    pub message: String,
    pub duration_ms: u64,
    /// The registration's operation; none when no operation started.
    pub operation_id: Option<String>,
    pub assigned_hub: Option<String>,
    pub device_id: Option<String>,
}

/// `2026-12-05T01:02:03.456Z`.
fn millis<S: Serializer>(time: &UtcTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&time.to_rfc3339(3))
}

fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<UtcTime, D::Error> {
    let text = String::deserialize(d)?;
    UtcTime::parse(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not an RFC 3339 time")))
}

/// A time to the millisecond, as entries keep it (so that it reads back
/// from an entry's JSON exactly).
pub fn to_millis(time: UtcTime) -> UtcTime {
    let nanos = time.unix_nanos();
    UtcTime::from_unix_nanos(nanos - nanos.rem_euclid(1_000_000)).unwrap_or(time)
}

/// Which entries of a service to read: newest first, at most `top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosticsQuery {
    /// One device's (the key of its registration ID), or every device's.
    pub registration: Option<IdKey>,
    pub outcome: Option<Outcome>,
    /// Entries at this time or later.
    pub since: Option<UtcTime>,
    pub top: usize,
}

/// How long and how many entries a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries older than this are removed.
    pub max_age: Duration,
    /// Past this many entries in a service, its oldest are removed.
    pub max_entries_per_service: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_entries_per_service: 100_000,
        }
    }
}

/// Where diagnostic entries are kept: every [`Store`](super::Store) is one.
#[async_trait]
pub trait DiagnosticsLog: Send + Sync {
    /// Appends entries. An entry of a service that no longer exists is
    /// left out; the others are still written.
    async fn add_diagnostics(&self, entries: &[DiagnosticEntry]) -> Result<(), StoreError>;

    /// The entries of `service` that `query` selects, newest first.
    async fn diagnostics(
        &self,
        service: &str,
        query: &DiagnosticsQuery,
    ) -> Result<Vec<DiagnosticEntry>, StoreError>;

    /// Removes the entries `retention` no longer keeps at `now`; how many.
    async fn prune_diagnostics(
        &self,
        retention: Retention,
        now: UtcTime,
    ) -> Result<u64, StoreError>;
}

/// The time before which `retention` keeps nothing at `now`.
pub fn oldest_kept(retention: Retention, now: UtcTime) -> UtcTime {
    let age = i128::try_from(retention.max_age.as_nanos()).unwrap_or(i128::MAX);
    UtcTime::from_unix_nanos(now.unix_nanos().saturating_sub(age))
        .or_else(|| UtcTime::from_unix_nanos(0))
        .unwrap_or(now)
}
