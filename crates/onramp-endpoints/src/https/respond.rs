//! Encoding answers: Azure error bodies, JSON with the headers every SDK
//! needs, and bounded body reading.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use onramp_core::ProvisioningError;
use onramp_model::{ErrorBody, ErrorCode, UtcTime};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const JSON: &str = "application/json; charset=utf-8";

/// An Azure error body with its status, `x-ms-error-code`, and a
/// `Retry-After` when trying again later can help.
pub fn error(err: &ProvisioningError) -> Response {
    let body = error_body(err);
    let mut resp = json(
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
        true,
    );
    if let Ok(v) = HeaderValue::from_str(err.code.name()) {
        resp.headers_mut().insert("x-ms-error-code", v);
    }
    if matches!(err.http_status(), 429 | 503) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
    }
    resp
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

/// JSON with `Content-Type: application/json; charset=utf-8`. Device answers
/// escape non-ASCII characters (Node's MQTT transport decodes as ASCII).
pub fn json(status: StatusCode, value: &impl Serialize, ascii_only: bool) -> Response {
    let text = match serde_json::to_string(value) {
        Ok(t) if ascii_only => escape_non_ascii(&t),
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "a response could not be serialised");
            return error(&ProvisioningError::internal(
                "the response could not be encoded",
            ));
        }
    };
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    resp
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

/// Reads at most `limit` bytes of body.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ProvisioningError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ProvisioningError::new(
                ErrorCode::RequestTooLarge,
                format!(
                    "the request body is larger than {} KB; send at most {limit} bytes",
                    limit / 1024
                ),
            ))
        }
        Err(e) => match onramp_net::BodyTimedOut::is_cause_of(&*e) {
            Some(timeout) => Err(ProvisioningError::new(
                ErrorCode::RequestTimeout,
                format!("{timeout}; send the whole body at once"),
            )),
            None => Err(ProvisioningError::new(
                ErrorCode::InvalidRequestBody,
                format!("the request body could not be read: {e}"),
            )),
        },
    }
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
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at '{path}'")
        };
        ProvisioningError::new(
            ErrorCode::InvalidRequestBody,
            format!("the request body is not valid JSON for this call{at}: {inner}"),
        )
    })
}

#[cfg(test)]
mod tests {
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
}
