//! HTTPS answers: the protocol-neutral [`wire`] answers and errors as a
//! status line, `Retry-After` and `x-ms-error-code` headers and a JSON body;
//! and bounded body reading.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use onramp_core::ProvisioningError;
use onramp_model::ErrorCode;
use serde::Serialize;

use crate::wire;
// The service API reads its bodies by the same rules as the device API.
pub use crate::wire::parse;

pub const JSON: &str = "application/json; charset=utf-8";

/// An Azure error body with its status, `x-ms-error-code`, and a
/// `Retry-After` when trying again later can help.
pub fn error(err: &ProvisioningError) -> Response {
    let mut resp = answer(wire::error(err));
    if let Ok(v) = HeaderValue::from_str(err.code.name()) {
        resp.headers_mut().insert("x-ms-error-code", v);
    }
    resp
}

/// A device API answer: its status, its JSON and its `Retry-After`.
pub fn answer(answer: wire::Answer) -> Response {
    let mut resp = body(
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer.body,
    );
    if let Some(seconds) = answer.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    resp
}

/// JSON with `Content-Type: application/json; charset=utf-8` (the service API's answers).
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => body(status, text),
        Err(e) => {
            tracing::error!(error = %e, "a response could not be serialised");
            error(&ProvisioningError::internal(
                "the response could not be encoded",
            ))
        }
    }
}

fn body(status: StatusCode, text: String) -> Response {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    resp
}

/// Reads at most `limit` bytes of body and parses them as JSON (see
/// [`parse`]; an empty body is `{}` when `empty_ok`).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
    empty_ok: bool,
) -> Result<T, ProvisioningError> {
    parse(&read_body(body, limit).await?, empty_ok)
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
