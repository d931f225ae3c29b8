//! The DPS device API's messages, whatever carries them: decoding a register
//! body, and encoding answers and errors as the SDKs expect them — a status
//! code, JSON with every non-ASCII character escaped, and the seconds to wait
//! before polling or trying again. HTTPS puts an [`Answer`] into a status
//! line, headers and a body; MQTT into a response topic and a payload; AMQP
//! will put it into message properties.

use onramp_core::ProvisioningError;
use onramp_model::{
    DeviceRegistration, DeviceRegistrationState, ErrorBody, ErrorCode, RegistrationOperationStatus,
    TpmRegistrationChallenge, UtcTime,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Seconds a device is told to wait before it polls, or tries again after a
/// 429 or 503 (Azure's value; every SDK honours it).
pub const RETRY_AFTER_SECONDS: u32 = 3;

/// What a device asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A register request.
    Register,
    /// A poll of a registration operation.
    Poll,
}

/// An answer to a device, ready for its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, which MQTT and AMQP carry too.
    pub status: u16,
    /// JSON, ASCII only.
    pub body: String,
    /// Seconds to wait before polling or trying again, when the device should.
    pub retry_after: Option<u32>,
}

/// The answer to a register request or a poll. A register call is answered
/// 202 even when it finished (the C# v1 SDK throws on 200; every SDK but the
/// Edge client then skips polling); a poll 200 once the operation ended.
/// Unfinished operations tell the device when to poll.
pub fn operation(call: Call, status: &RegistrationOperationStatus) -> Answer {
    let terminal = status.status.is_terminal();
    let code = if call == Call::Register || !terminal {
        202
    } else {
        200
    };
    answer(code, status, (!terminal).then_some(RETRY_AFTER_SECONDS))
}

/// The answer to a device's status lookup: its registration record.
pub fn registration(state: &DeviceRegistrationState) -> Answer {
    answer(200, state, None)
}

/// An Azure error body with the error's status; 429 and 503 say when to
/// try again.
pub fn error(err: &ProvisioningError) -> Answer {
    if let Some(blob) = &err.tpm_challenge {
        // The SDKs read these three members; a `status` would make the C SDK
        // take the body for a registration answer.
        let challenge = TpmRegistrationChallenge {
            message: err.message.clone(),
            authentication_key: blob.clone(),
            key_name: "registration".into(),
        };
        return answer(401, &challenge, None);
    }
    let status = err.http_status();
    Answer {
        status,
        body: to_json(&error_body(err)).unwrap_or_else(|_| "{}".into()),
        retry_after: matches!(status, 429 | 503)
            .then(|| err.retry_after.unwrap_or(RETRY_AFTER_SECONDS)),
    }
}

fn answer(status: u16, value: &impl Serialize, retry_after: Option<u32>) -> Answer {
    match to_json(value) {
        Ok(body) => Answer {
            status,
            body,
            retry_after,
        },
        Err(e) => error(&e),
    }
}

/// The Azure error body for `err`, with a fresh tracking ID.
pub fn error_body(err: &ProvisioningError) -> ErrorBody {
    ErrorBody {
        error_code: err.code.code(),
        tracking_id: uuid::Uuid::new_v4().to_string(),
        message: err.message.clone(),
        info: None,
        timestamp_utc: UtcTime::now(),
    }
}

/// JSON text of `value` with non-ASCII characters escaped (Node's MQTT
/// transport decodes device answers as ASCII).
pub fn to_json(value: &impl Serialize) -> Result<String, ProvisioningError> {
    match serde_json::to_string(value) {
        Ok(text) => Ok(escape_non_ascii(&text)),
        Err(e) => {
            tracing::error!(error = %e, "a response could not be serialised");
            Err(ProvisioningError::internal(
                "the response could not be encoded",
            ))
        }
    }
}

/// A register request's body (a `DeviceRegistration`; empty means `{}`), at
/// most `limit` bytes.
pub fn decode_registration(
    payload: &[u8],
    limit: usize,
) -> Result<DeviceRegistration, ProvisioningError> {
    if payload.len() > limit {
        return Err(ProvisioningError::new(
            ErrorCode::RequestTooLarge,
            format!(
                "the register request is larger than {} KB; send at most {limit} bytes",
                limit / 1024
            ),
        ));
    }
    parse(payload, true)
}

/// The EK certificate a TPM device of a TPM enrollment group (Onramp's
/// extension) sends: `tpm.endorsementKeyCertificate`, or else the member
/// `endorsementKeyCertificate` of its custom `payload`, which every SDK lets
/// an application set.
pub fn endorsement_key_certificate(body: &DeviceRegistration) -> Option<String> {
    body.tpm
        .as_ref()
        .and_then(|t| t.endorsement_key_certificate.clone())
        .or_else(|| {
            body.payload
                .as_ref()
                .and_then(|p| p.get("endorsementKeyCertificate"))
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
}

/// Replaces every non-ASCII character with `\uXXXX` (surrogate pairs above
/// the BMP). In JSON text such characters only occur inside strings, so the
/// result is the same JSON value.
pub fn escape_non_ascii(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Parses JSON, naming the failing member (`attestation.symmetricKey.primaryKey: …`).
/// An empty body parses as `{}` when `empty_ok`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], empty_ok: bool) -> Result<T, ProvisioningError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        if !empty_ok {
            return Err(ProvisioningError::new(
                ErrorCode::InvalidRequestBody,
                "the request body is empty; send a JSON object",
            ));
        }
        b"{}"
    } else {
        bytes
    };
    onramp_model::json::decode(bytes).map_err(|e| {
        ProvisioningError::new(
            ErrorCode::InvalidRequestBody,
            format!(
                "the request body is not valid JSON for this call{}: {}",
                e.location(),
                e.reason()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

    use onramp_model::RegistrationStatus;

    use super::*;

    #[test]
    fn non_ascii_is_escaped_and_still_the_same_json() {
        let v = serde_json::json!({"name": "Zürich 🌍"});
        let escaped = escape_non_ascii(&v.to_string());
        assert!(escaped.is_ascii());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&escaped).unwrap(),
            v
        );
    }

    #[test]
    fn parse_errors_name_the_member() {
        #[derive(serde::Deserialize, Debug)]
        struct Outer {
            #[allow(dead_code)]
            inner: Inner,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Inner {
            #[allow(dead_code)]
            flag: bool,
        }
        let err = parse::<Outer>(br#"{"inner": {"flag": "yes"}}"#, false).unwrap_err();
        assert!(err.message.contains("'inner.flag'"), "{}", err.message);
        let err = parse::<Outer>(b"{not json", false).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequestBody);
        assert!(
            parse::<Outer>(b"  ", false)
                .unwrap_err()
                .message
                .contains("empty")
        );
    }

    #[test]
    fn register_bodies_are_bounded_and_may_be_empty() {
        assert_eq!(
            decode_registration(b" ", 10).unwrap(),
            DeviceRegistration::default()
        );
        let body = br#"{"registrationId":"dev-01"}"#;
        assert_eq!(
            decode_registration(body, 1024)
                .unwrap()
                .registration_id
                .as_deref(),
            Some("dev-01")
        );
        let err = decode_registration(body, 10).unwrap_err();
        assert_eq!(err.code, ErrorCode::RequestTooLarge);
    }

    #[test]
    fn answers_carry_the_status_and_retry_after_the_sdks_expect() {
        let op = |status| RegistrationOperationStatus {
            operation_id: "1.0.x".into(),
            status,
            registration_state: None,
        };
        let assigning = op(RegistrationStatus::Assigning);
        let assigned = op(RegistrationStatus::Assigned);
        let seen = |a: Answer| (a.status, a.retry_after);
        assert_eq!(
            seen(operation(Call::Register, &assigning)),
            (202, Some(RETRY_AFTER_SECONDS))
        );
        assert_eq!(seen(operation(Call::Register, &assigned)), (202, None));
        assert_eq!(
            seen(operation(Call::Poll, &assigning)),
            (202, Some(RETRY_AFTER_SECONDS))
        );
        assert_eq!(seen(operation(Call::Poll, &assigned)), (200, None));

        let busy = ProvisioningError::new(ErrorCode::ShuttingDown, "stopping");
        assert_eq!(seen(error(&busy)), (503, Some(RETRY_AFTER_SECONDS)));
        let refused = error(&ProvisioningError::unauthorized("Zürich"));
        assert_eq!(seen(refused.clone()), (401, None));
        assert!(refused.body.is_ascii(), "{}", refused.body);
        let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["message"], "Zürich");
    }
}
