//! A symmetric-key device over HTTPS that keeps trying as an SDK does
//! (`--retry-for`), and the file of every answer the devices heard
//! (`--outcomes`).

use std::io::Write;
use std::path::Path;

use super::*;

/// `--outcomes`: one JSON line per answer, written whole as it is heard, so
/// that a reader following the file sees the run as it goes.
pub(crate) struct OutcomeLog(std::sync::Mutex<std::fs::File>);

impl OutcomeLog {
    pub(crate) fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the outcomes file {}", path.display()))?;
        Ok(Self(std::sync::Mutex::new(file)))
    }

    fn write(&self, heard: &Heard<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(heard)?;
        line.push(b'\n');
        let mut file = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(&line)
    }
}

/// One line of the outcomes file.
#[serde_with::skip_serializing_none]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Heard<'a> {
    registration_id: &'a str,
    /// When the device began, in Unix milliseconds.
    started: u64,
    /// When it heard this answer, in Unix milliseconds.
    at: u64,
    /// `register` or `poll`.
    request: &'static str,
    /// The HTTP status; none when the connection failed.
    status: Option<u16>,
    /// `assigned`, `assigning`, `failed`, `disabled`, `retry` (a 429 or
    /// 503, a broken connection, an operation no server knows) or `refused`.
    outcome: &'a str,
    /// The device's last line: assigned, refused, or out of time.
    #[serde(rename = "final")]
    last: bool,
    /// The device's requests that failed before this answer.
    failures: u32,
    retry_after: Option<u32>,
    error_code: Option<i64>,
    message: Option<String>,
    assigned_hub: Option<String>,
}

/// What an answer means to a device that keeps trying.
enum Next {
    /// Assigned, or refused for good.
    Done(Outcome),
    /// `assigning`: poll this operation.
    Poll(String),
    /// Register again; the outcome if time runs out.
    Again(Outcome),
}

/// An answer judged: what comes next, and what the outcomes file says of it.
struct Judged {
    next: Next,
    status: Option<u16>,
    outcome: String,
    retry_after: Option<u32>,
    error_code: Option<i64>,
    message: Option<String>,
    assigned_hub: Option<String>,
}

fn judge(answer: anyhow::Result<Answer>, polling: bool) -> Judged {
    let mut judged = Judged {
        next: Next::Done(Outcome::Failed {
            code: String::new(),
        }),
        status: None,
        outcome: "retry".into(),
        retry_after: None,
        error_code: None,
        message: None,
        assigned_hub: None,
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let message = e.to_string();
            judged.next = Next::Again(Outcome::Failed {
                code: error_code(&message),
            });
            judged.message = Some(message);
            return judged;
        }
    };
    judged.status = Some(answer.status);
    judged.retry_after = answer.retry_after;
    if answer.status < 300 {
        judged.next = match serde_json::from_slice::<RegistrationOperationStatus>(&answer.body) {
            Ok(op) if op.status == RegistrationStatus::Assigning => {
                judged.outcome = op.status.to_string();
                Next::Poll(op.operation_id)
            }
            Ok(op) => {
                judged.outcome = op.status.to_string();
                if let Some(state) = &op.registration_state {
                    judged.assigned_hub = state.assigned_hub.clone();
                    judged.error_code = state.error_code.map(i64::from);
                    judged.message = state.error_message.clone();
                }
                Next::Done(outcome_of(op))
            }
            Err(e) => {
                judged.outcome = "refused".into();
                judged.message = Some(format!("not a registration operation: {e}"));
                Next::Done(Outcome::Failed {
                    code: format!("HTTP {}", answer.status),
                })
            }
        };
        return judged;
    }
    let code = match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(e) => {
            judged.error_code = Some(i64::from(e.error_code));
            judged.message = Some(e.message);
            e.error_code.to_string()
        }
        Err(_) => format!("HTTP {}", answer.status),
    };
    let failed = Outcome::Failed { code };
    // An operation no server knows: the node that ran it is gone.
    judged.next = if matches!(answer.status, 429 | 503) || (polling && answer.status == 404) {
        Next::Again(failed)
    } else {
        judged.outcome = "refused".into();
        Next::Done(failed)
    };
    judged
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Worker {
    /// One symmetric-key device over HTTPS: registers, and within
    /// `--retry-for` waits out 429 and 503, polls `assigning`, and
    /// registers again after a broken connection or an unknown operation.
    pub(super) async fn https_device(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        registration_id: &str,
        key: &str,
    ) -> Outcome {
        let resource = format!("{}/registrations/{registration_id}", self.load.id_scope);
        let token = match sas::sign(
            &resource,
            key,
            simulator::unix_now() + 3600,
            Some("registration"),
        ) {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Failed {
                    code: format!("key: {e}"),
                };
            }
        };
        let body = serde_json::json!({ "registrationId": registration_id });
        let (begun, started) = (Instant::now(), unix_ms());
        let mut operation: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let (request, answer) = match &operation {
                None => {
                    let path = format!("/{resource}/register");
                    let answer = self
                        .send(
                            connection,
                            hyper::Method::PUT,
                            &path,
                            Some(&token),
                            Some(&body),
                        )
                        .await;
                    ("register", answer)
                }
                Some(op) => {
                    let path = format!("/{resource}/operations/{op}");
                    let answer = self
                        .send(connection, hyper::Method::GET, &path, Some(&token), None)
                        .await;
                    ("poll", answer)
                }
            };
            if answer.is_err() {
                *connection = None;
            }
            let judged = judge(answer, operation.is_some());
            let advised = judged
                .retry_after
                .map(|s| Duration::from_secs(u64::from(s)));
            let wait = advised.unwrap_or(self.load.poll_interval);
            let again = !matches!(judged.next, Next::Done(_))
                && begun.elapsed() + wait < self.load.retry_for;
            if let Some(log) = &self.load.outcomes {
                let heard = Heard {
                    registration_id,
                    started,
                    at: unix_ms(),
                    request,
                    status: judged.status,
                    outcome: &judged.outcome,
                    last: !again,
                    failures,
                    retry_after: judged.retry_after,
                    error_code: judged.error_code,
                    message: judged.message,
                    assigned_hub: judged.assigned_hub,
                };
                if let Err(e) = log.write(&heard) {
                    return Outcome::Failed {
                        code: format!("writing the outcomes file: {e}"),
                    };
                }
            }
            match (judged.next, again) {
                (Next::Done(outcome) | Next::Again(outcome), false) => return outcome,
                (Next::Poll(_), false) => {
                    return Outcome::Failed {
                        code: "still assigning".into(),
                    };
                }
                (Next::Poll(op), true) => operation = Some(op),
                (Next::Again(_), true) | (Next::Done(_), true) => {
                    failures += 1;
                    operation = None;
                }
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(
        status: u16,
        retry_after: Option<u32>,
        body: serde_json::Value,
    ) -> anyhow::Result<Answer> {
        Ok(Answer {
            status,
            retry_after,
            body: Bytes::from(body.to_string()),
        })
    }

    fn error(code: u32) -> serde_json::Value {
        serde_json::json!({"errorCode": code, "trackingId": "t", "message": "why", "timestampUtc": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn unavailable_and_throttled_are_waited_out_and_registered_again() {
        for status in [429, 503] {
            let j = judge(
                answer(status, Some(3), error(status as u32 * 1000 + 1)),
                false,
            );
            assert!(
                matches!(j.next, Next::Again(Outcome::Failed { .. })),
                "{status}"
            );
            assert_eq!((j.retry_after, j.outcome.as_str()), (Some(3), "retry"));
            assert_eq!(j.error_code, Some(i64::from(status) * 1000 + 1));
            assert_eq!(j.message.as_deref(), Some("why"));
        }
    }

    #[test]
    fn an_unknown_operation_registers_again_but_an_unknown_device_is_refused() {
        let polled = judge(answer(404, None, error(404_201)), true);
        assert!(matches!(polled.next, Next::Again(_)));
        let registered = judge(answer(404, None, error(404_201)), false);
        assert!(matches!(registered.next, Next::Done(_)));
        assert_eq!(registered.outcome, "refused");
        let unauthorized = judge(answer(401, None, error(401_002)), false);
        assert!(
            matches!(unauthorized.next, Next::Done(Outcome::Failed { code }) if code == "401002")
        );
    }

    #[test]
    fn assigning_is_polled_and_assigned_is_done() {
        let assigning = judge(
            answer(
                202,
                None,
                serde_json::json!({"operationId": "op-1", "status": "assigning"}),
            ),
            false,
        );
        assert!(matches!(&assigning.next, Next::Poll(op) if op == "op-1"));
        let assigned = judge(
            answer(
                200,
                None,
                serde_json::json!({"operationId": "op-1", "status": "assigned", "registrationState": {
                    "registrationId": "d-1", "status": "assigned", "assignedHub": "hub-a", "deviceId": "d-1"}}),
            ),
            true,
        );
        assert!(matches!(assigned.next, Next::Done(Outcome::Assigned { hub }) if hub == "hub-a"));
        assert_eq!(assigned.assigned_hub.as_deref(), Some("hub-a"));
    }

    #[test]
    fn a_broken_connection_registers_again() {
        let j = judge(Err(anyhow::anyhow!("connection reset")), true);
        assert!(matches!(j.next, Next::Again(_)));
        assert_eq!((j.status, j.outcome.as_str()), (None, "retry"));
        assert_eq!(j.message.as_deref(), Some("connection reset"));
    }
}
