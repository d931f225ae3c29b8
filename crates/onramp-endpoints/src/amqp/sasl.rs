//! The SASL layer of a DPS AMQP connection, run by Onramp itself: the
//! credential check is asynchronous (it reads the enrollment), which the
//! AMQP crate's SASL callbacks cannot be.
//!
//! The server answers the client's `AMQP 3 1 0 0` with its own, offers its
//! mechanisms, reads `sasl-init`, checks the credential and sends
//! `sasl-outcome`: `ok`, `auth` for a refused credential, `sys-temp` when the
//! store cannot answer. Frames are read one at a time with exact reads, so
//! nothing of the AMQP header that follows is consumed here.

use bytes::{BufMut, BytesMut};
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use onramp_core::ProvisioningError;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::Engine;
use onramp_core::events::Protocol;
use onramp_model::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::{Identity, SASL_HEADER};

/// SASL frames before the Open are at most 512 bytes (AMQP 1.0's smallest
/// max-frame-size); the SDKs stay within it.
pub const MAX_SASL_FRAME: usize = 512;

/// The mechanisms Onramp offers. `TPM` will join `PLAIN` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// A SAS token as the password of `{idScope}/registrations/{id}`.
    Plain,
}

impl Mechanism {
    pub const ALL: &'static [Mechanism] = &[Mechanism::Plain];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.name() == name)
    }
}

/// What a successful SASL exchange established.
#[derive(Debug)]
pub(crate) struct SaslSuccess {
    pub identity: Identity,
    pub credential: DeviceCredential,
}

/// `PLAIN`'s initial response, `[authzid] NUL authcid NUL password`, as
/// (authcid, password); `None` if malformed or not UTF-8.
pub fn parse_plain(response: &[u8]) -> Option<(&str, &str)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    Some((authcid, password))
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: Frame) -> Result<(), String> {
    let mut body = BytesMut::new();
    FrameCodec {}
        .encode(frame, &mut body)
        .map_err(|e| format!("encoding a SASL frame: {e}"))?;
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32(u32::try_from(body.len() + 4).map_err(|_| "SASL frame too large".to_owned())?);
    out.extend_from_slice(&body);
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("writing a SASL frame: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("writing a SASL frame: {e}"))
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Frame, String> {
    let size = stream
        .read_u32()
        .await
        .map_err(|e| format!("reading a SASL frame: {e}"))?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if !(8..=MAX_SASL_FRAME).contains(&size) {
        return Err(format!(
            "a SASL frame of {size} bytes (at most {MAX_SASL_FRAME})"
        ));
    }
    let mut body = BytesMut::zeroed(size - 4);
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("reading a SASL frame: {e}"))?;
    decode_frame(&body)
}

/// A SASL frame from the bytes after its 4-byte size: the data offset, the
/// frame type and the performative.
pub fn decode_frame(body: &[u8]) -> Result<Frame, String> {
    if body.len() < 4 {
        return Err(format!("a SASL frame of {} bytes", body.len() + 4));
    }
    // The decoder allocates what a value declares: check the sizes first.
    let doff = usize::from(body[0]) * 4;
    if doff < 8 || doff - 4 > body.len() {
        return Err(format!("a SASL frame with a data offset of {doff} bytes"));
    }
    super::guard::check_values(&body[doff - 4..])?;
    match (FrameCodec {}).decode(&mut BytesMut::from(body)) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err("an incomplete SASL frame".into()),
        Err(e) => Err(format!("a malformed SASL frame: {e}")),
    }
}

fn code_for(e: &ProvisioningError) -> SaslCode {
    match e.code {
        ErrorCode::StoreUnavailable
        | ErrorCode::ShuttingDown
        | ErrorCode::InternalError
        | ErrorCode::Throttled => SaslCode::SysTemp,
        _ => SaslCode::Auth,
    }
}

async fn outcome<S: AsyncWrite + Unpin>(stream: &mut S, code: SaslCode) -> Result<(), String> {
    write_frame(
        stream,
        Frame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }),
    )
    .await
}

/// Runs the SASL layer after the client's `AMQP 3 1 0 0` was read. On
/// success the client's next bytes are its `AMQP 0 1 0 0`; on failure the
/// outcome was sent and the connection is to be closed.
pub(crate) async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    engine: &Engine,
    protocol: Protocol,
    client_addr: std::net::IpAddr,
) -> Result<SaslSuccess, String> {
    stream
        .write_all(&SASL_HEADER)
        .await
        .map_err(|e| format!("writing the SASL header: {e}"))?;
    let offered: Vec<Symbol> = Mechanism::ALL
        .iter()
        .map(|m| Symbol::from(m.name()))
        .collect();
    write_frame(
        stream,
        Frame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: Array::from(offered),
        }),
    )
    .await?;
    let init = match read_frame(stream).await? {
        Frame::Init(init) => init,
        other => {
            outcome(stream, SaslCode::Auth).await?;
            return Err(format!("expected sasl-init, got {other:?}"));
        }
    };
    let Some(mechanism) = Mechanism::from_name(init.mechanism.as_str()) else {
        outcome(stream, SaslCode::Auth).await?;
        return Err(format!(
            "SASL mechanism {} not offered",
            init.mechanism.as_str()
        ));
    };
    match mechanism {
        Mechanism::Plain => {
            let response = init.initial_response.as_ref().map(|b| b.as_ref());
            let Some((authcid, password)) = response.and_then(parse_plain) else {
                outcome(stream, SaslCode::Auth).await?;
                return Err("a malformed PLAIN response".into());
            };
            let Some((scope, registration_id)) = crate::mqtt::parse_dps_username(authcid) else {
                outcome(stream, SaslCode::Auth).await?;
                return Err(format!(
                    "user name '{authcid}' is not {{idScope}}/registrations/{{registrationId}}"
                ));
            };
            let credential = DeviceCredential::SasToken(password.to_owned());
            if let Err(e) = engine
                .check_device(
                    scope,
                    registration_id,
                    &credential,
                    protocol,
                    Some(client_addr),
                )
                .await
            {
                outcome(stream, code_for(&e)).await?;
                return Err(format!("SASL refused: {}", e.message));
            }
            outcome(stream, SaslCode::Ok).await?;
            Ok(SaslSuccess {
                identity: Identity {
                    scope: scope.to_owned(),
                    registration_id: registration_id.to_owned(),
                },
                credential,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses_split_into_user_and_password() {
        assert_eq!(
            parse_plain(b"\0scope/registrations/dev\0SharedAccessSignature sr=x"),
            Some(("scope/registrations/dev", "SharedAccessSignature sr=x"))
        );
        assert_eq!(parse_plain(b"authz\0user\0pw"), Some(("user", "pw")));
        assert_eq!(parse_plain(b"\0\0pw"), None);
        assert_eq!(parse_plain(b"user-only"), None);
        assert_eq!(parse_plain(b"\0a\0b\0c"), None);
        assert_eq!(parse_plain(b"\0\xff\0pw"), None);
    }
}
