//! Diagnostics as operators query them (an Onramp extension of the service
//! API): one service's registration attempts, newest first, by device,
//! outcome and time.

use onramp_model::UtcTime;

use super::*;
use crate::ports::{DiagnosticEntry, DiagnosticsQuery, Outcome};

/// Entries a query returns when it names no `top`, and at most.
pub const DEFAULT_DIAGNOSTICS: usize = 100;
pub const MAX_DIAGNOSTICS: usize = 1000;

/// A diagnostics query's parameters as the caller sent them.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiagnosticsFilter<'a> {
    pub registration_id: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub since: Option<&'a str>,
    pub top: Option<&'a str>,
}

/// A parameter's value, unless it is absent or blank.
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// A parameter read by `parse`, absent when not given; `parse` names the
/// parameter and its fix when the value is no good.
fn parsed<T>(
    value: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, ProvisioningError> {
    given(value)
        .map(|text| parse(text).map_err(ProvisioningError::invalid))
        .transpose()
}

impl DiagnosticsFilter<'_> {
    /// The store's query, or a refusal naming the parameter and its fix.
    pub fn query(&self) -> Result<DiagnosticsQuery, ProvisioningError> {
        let registration = parsed(self.registration_id, |id| {
            RegistrationId::parse(id)
                .map(|id| id.key())
                .map_err(|e| format!("registrationId: {e}"))
        })?;
        let outcome = parsed(self.outcome, |text| {
            Outcome::parse(text).ok_or_else(|| {
                format!("outcome '{text}' is not an outcome; use assigned, failed or refused")
            })
        })?;
        let since = parsed(self.since, |text| {
            UtcTime::parse(text).ok_or_else(|| {
                format!("since '{text}' is not an RFC 3339 time; use e.g. 2026-12-05T01:00:00Z")
            })
        })?;
        let top = parsed(self.top, |text| {
            text.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_DIAGNOSTICS).contains(n))
                .ok_or_else(|| format!("top '{text}' is not a number from 1 to {MAX_DIAGNOSTICS}"))
        })?
        .unwrap_or(DEFAULT_DIAGNOSTICS);
        Ok(DiagnosticsQuery {
            registration,
            outcome,
            since,
            top,
        })
    }
}

impl Admin {
    /// The registration attempts of `service` the filter selects, newest first.
    pub async fn diagnostics(
        &self,
        service: &str,
        filter: DiagnosticsFilter<'_>,
    ) -> Result<Vec<DiagnosticEntry>, ProvisioningError> {
        let query = filter.query()?;
        Ok(self.store.diagnostics(service, &query).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(filter: DiagnosticsFilter<'_>) -> String {
        let e = filter.query().expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        e.message
    }

    #[test]
    fn each_bad_parameter_is_named() {
        let outcome = refusal(DiagnosticsFilter {
            outcome: Some("lost"),
            ..Default::default()
        });
        assert!(outcome.starts_with("outcome 'lost'"), "{outcome}");
        let since = refusal(DiagnosticsFilter {
            since: Some("1h"),
            ..Default::default()
        });
        assert!(since.starts_with("since '1h'"), "{since}");
        for top in ["0", "1001", "ten", "-1"] {
            let message = refusal(DiagnosticsFilter {
                top: Some(top),
                ..Default::default()
            });
            assert!(message.starts_with(&format!("top '{top}'")), "{message}");
        }
        let id = refusal(DiagnosticsFilter {
            registration_id: Some("a b"),
            ..Default::default()
        });
        assert!(id.starts_with("registrationId"), "{id}");
    }

    #[test]
    fn a_query_keeps_what_was_asked() {
        let query = DiagnosticsFilter {
            registration_id: Some("Dev-1"),
            outcome: Some("Refused"),
            since: Some("2026-12-05T01:00:00+01:00"),
            top: Some("7"),
        }
        .query()
        .expect("valid");
        assert_eq!(query.registration, Some(IdKey::of("dev-1")));
        assert_eq!(query.outcome, Some(Outcome::Refused));
        assert_eq!(query.since, UtcTime::parse("2026-12-05T00:00:00Z"));
        assert_eq!(query.top, 7);
        let all = DiagnosticsFilter::default().query().expect("valid");
        assert_eq!((all.registration, all.top), (None, DEFAULT_DIAGNOSTICS));
    }
}
