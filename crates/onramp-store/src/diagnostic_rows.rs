//! What both stores write for a diagnostic entry: its JSON, and the
//! columns queries and pruning select on.

use onramp_core::ports::{DiagnosticEntry, DiagnosticsQuery, StoreError};

use crate::sqlite::operations::nanos;
use crate::sqlite::rows::corrupt;

pub(crate) struct DiagnosticRow {
    pub(crate) service: String,
    /// The registration ID's key (lower case).
    pub(crate) id_key: String,
    /// Unix nanoseconds.
    pub(crate) time: i64,
    pub(crate) outcome: &'static str,
    pub(crate) doc: String,
}

impl DiagnosticRow {
    pub(crate) fn of(entry: &DiagnosticEntry) -> Result<Self, StoreError> {
        Ok(Self {
            service: entry.service.clone(),
            id_key: entry.registration_id.to_ascii_lowercase(),
            time: nanos(entry.time),
            outcome: entry.outcome.as_str(),
            doc: serde_json::to_string(entry).map_err(|e| corrupt("diagnostic entry", e))?,
        })
    }

    /// Rows for `entries`.
    pub(crate) fn all(entries: &[DiagnosticEntry]) -> Result<Vec<Self>, StoreError> {
        entries.iter().map(Self::of).collect()
    }

    /// An entry from its stored JSON.
    pub(crate) fn entry(doc: &str) -> Result<DiagnosticEntry, StoreError> {
        serde_json::from_str(doc).map_err(|e| corrupt("diagnostic entry", e))
    }
}

/// What a diagnostics query binds beside the service and registration key.
pub(crate) struct QueryBounds {
    /// Unix nanoseconds of the oldest entry wanted.
    pub(crate) since: i64,
    pub(crate) outcome: Option<&'static str>,
    pub(crate) top: i64,
}

impl QueryBounds {
    pub(crate) fn of(query: &DiagnosticsQuery) -> Self {
        Self {
            since: query.since.map_or(i64::MIN, nanos),
            outcome: query.outcome.map(|o| o.as_str()),
            top: i64::try_from(query.top).unwrap_or(i64::MAX),
        }
    }
}
