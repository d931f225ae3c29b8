//! The SASL layer of a DPS AMQP connection, run by Onramp itself: the
//! credential check is asynchronous (it reads the enrollment), which the
//! AMQP crate's SASL callbacks cannot be.
//!
//! The server answers the client's `AMQP 3 1 0 0` with its own, offers its
//! mechanisms, reads `sasl-init`, checks the credential and sends
//! `sasl-outcome`: `ok`, `auth` for a refused credential, `sys-temp` when the
//! store cannot answer. Frames are read one at a time with exact reads, so
//! nothing of the AMQP header that follows is consumed here.
//!
//! `PLAIN` carries a SAS token in one `sasl-init`. `TPM` is the nonce
//! challenge in SASL frames (device protocol notes §4.3): every payload
//! starts with a control byte; the init carries the ID scope, the
//! registration ID and the endorsement key, the first response the storage
//! root key; the engine's activation blob goes back in two challenges
//! (`0x80` then `0xC1` before each half), and the last response is the SAS
//! token the TPM signed with the key inside.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::{BufMut, BytesMut};
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslChallenge, SaslCode, SaslInit, SaslMechanisms, SaslOutcome};
use onramp_core::ProvisioningError;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::Engine;
use onramp_core::events::Protocol;
use onramp_core::tpm::{self, RsaPublic};
use onramp_model::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::{Identity, SASL_HEADER};

/// SASL frames before the Open are at most 512 bytes (AMQP 1.0's smallest
/// max-frame-size); the SDKs stay within it.
pub const MAX_SASL_FRAME: usize = 512;

/// The mechanisms Onramp offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// A SAS token as the password of `{idScope}/registrations/{id}`.
    Plain,
    /// The TPM nonce challenge: the device's keys in, an activation blob
    /// out, a token signed in the TPM back.
    Tpm,
}

impl Mechanism {
    pub const ALL: &'static [Mechanism] = &[Mechanism::Plain, Mechanism::Tpm];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Tpm => "TPM",
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

/// A `TPM` payload's control byte: set on the challenges that carry a part
/// of the activation blob.
pub const TPM_NONCE_SEGMENT: u8 = 0x80;
/// A `TPM` payload's control byte: set on the last part of the blob.
pub const TPM_FINAL_SEGMENT: u8 = 0x40;
/// The largest part of a blob in one challenge: the C SDK's own limit on a
/// SASL payload, well inside a 512-byte frame.
pub const MAX_TPM_SEGMENT: usize = 470;

/// A `TPM` mechanism's `sasl-init`: who the device says it is, and its
/// endorsement key (a marshaled `TPM2B_PUBLIC`, checked by the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmInit<'a> {
    pub scope: &'a str,
    pub registration_id: &'a str,
    pub endorsement_key: &'a [u8],
}

/// `control ‖ idScope ‖ 0 ‖ registrationId ‖ 0 ‖ EK`, or what is wrong
/// with it.
pub fn parse_tpm_init(payload: &[u8]) -> Result<TpmInit<'_>, String> {
    let rest = tpm_payload(payload, "sasl-init")?;
    let mut parts = rest.splitn(3, |b| *b == 0);
    let scope = init_text(parts.next(), "ID scope")?;
    let registration_id = init_text(parts.next(), "registration ID")?;
    let endorsement_key = match parts.next() {
        Some(ek) if !ek.is_empty() => ek,
        _ => return Err("the TPM sasl-init carries no endorsement key".into()),
    };
    Ok(TpmInit {
        scope,
        registration_id,
        endorsement_key,
    })
}

fn init_text<'a>(part: Option<&'a [u8]>, what: &str) -> Result<&'a str, String> {
    match part.map(std::str::from_utf8) {
        Some(Ok(s)) if !s.is_empty() => Ok(s),
        Some(Ok(_)) | None => Err(format!("the TPM sasl-init carries no {what}")),
        Some(Err(_)) => Err(format!("the {what} in the TPM sasl-init is not UTF-8")),
    }
}

/// A `TPM` response's content after its control byte (the storage root
/// key, or the SAS token).
pub fn parse_tpm_response(payload: &[u8]) -> Result<&[u8], String> {
    tpm_payload(payload, "sasl-response")
}

fn tpm_payload<'a>(payload: &'a [u8], frame: &str) -> Result<&'a [u8], String> {
    match payload.split_first() {
        Some((control, rest)) if control & TPM_NONCE_SEGMENT == 0 => Ok(rest),
        Some((control, _)) => Err(format!(
            "a TPM {frame} with control byte 0x{control:02x}: only the server sends blob segments"
        )),
        None => Err(format!("an empty TPM {frame}")),
    }
}

/// The two challenges that carry an activation blob: `0x80 ‖ first half`,
/// then `0xC1 ‖ second half` (segment 1, the last), as every SDK reads them.
pub fn tpm_blob_segments(blob: &[u8]) -> Result<[Vec<u8>; 2], String> {
    let half = blob.len().div_ceil(2);
    if blob.is_empty() || half > MAX_TPM_SEGMENT {
        return Err(format!(
            "an activation blob of {} bytes does not fit in two SASL challenges",
            blob.len()
        ));
    }
    let (first, second) = blob.split_at(half);
    Ok([
        [&[TPM_NONCE_SEGMENT][..], first].concat(),
        [&[TPM_NONCE_SEGMENT | TPM_FINAL_SEGMENT | 1][..], second].concat(),
    ])
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
        | ErrorCode::ServerBusy
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
        Mechanism::Tpm => tpm_exchange(stream, engine, protocol, client_addr, &init).await,
    }
}

async fn challenge<S: AsyncWrite + Unpin>(stream: &mut S, payload: Vec<u8>) -> Result<(), String> {
    write_frame(
        stream,
        Frame::Challenge(SaslChallenge {
            challenge: Binary::from(payload),
        }),
    )
    .await
}

/// The next `sasl-response`'s payload; anything else ends the exchange
/// with `auth`.
async fn response<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<Vec<u8>, String> {
    match read_frame(stream).await? {
        Frame::Response(r) => Ok(r.response.to_vec()),
        other => {
            outcome(stream, SaslCode::Auth).await?;
            Err(format!("expected sasl-response, got {other:?}"))
        }
    }
}

/// Sends `code` and ends the exchange with `reason`.
async fn refuse<S: AsyncWrite + Unpin, T>(
    stream: &mut S,
    code: SaslCode,
    reason: String,
) -> Result<T, String> {
    outcome(stream, code).await?;
    Err(reason)
}

/// The `TPM` mechanism (§4.3): the device's keys, the engine's challenge in
/// two segments, the token signed in the TPM. A TPM the engine refuses a
/// challenge (its key is not enrolled) still gets a blob, around a key
/// nobody keeps, and `auth` after its token: the SDKs report a SASL failure
/// only once they have answered a whole challenge, and otherwise wait on it
/// until their own timeout.
async fn tpm_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    engine: &Engine,
    protocol: Protocol,
    client_addr: std::net::IpAddr,
    init: &SaslInit,
) -> Result<SaslSuccess, String> {
    let payload = init.initial_response.as_ref().map(|b| b.to_vec());
    let init = match payload.as_deref().map(parse_tpm_init) {
        Some(Ok(init)) => init,
        Some(Err(e)) => return refuse(stream, SaslCode::Auth, e).await,
        None => {
            let e = "the TPM sasl-init carries no initial response".to_owned();
            return refuse(stream, SaslCode::Auth, e).await;
        }
    };
    // 1. The keys: the storage root key comes in the first response.
    challenge(stream, vec![0]).await?;
    let first = response(stream).await?;
    let srk = match parse_tpm_response(&first) {
        Ok(srk) => srk,
        Err(e) => return refuse(stream, SaslCode::Auth, e).await,
    };
    let keys = DeviceCredential::Tpm {
        endorsement_key: STANDARD.encode(init.endorsement_key),
        storage_root_key: (!srk.is_empty()).then(|| STANDARD.encode(srk)),
        // SASL carries no certificate: over AMQP a TPM group admits a device
        // by its EK hash alone.
        endorsement_key_certificate: None,
    };
    // 2. The engine's challenge (or, refused, a decoy), in two segments.
    let (blob, refused) = match engine
        .check_device(
            init.scope,
            init.registration_id,
            &keys,
            protocol,
            Some(client_addr),
        )
        .await
    {
        Err(e) => match e.tpm_challenge.as_deref().map(|b| STANDARD.decode(b)) {
            Some(Ok(blob)) => (blob, None),
            Some(Err(d)) => {
                let reason = format!("the engine's activation blob is not base64: {d}");
                return refuse(stream, SaslCode::SysPerm, reason).await;
            }
            None if code_for(&e) == SaslCode::Auth => {
                let decoy = RsaPublic::parse(init.endorsement_key).and_then(|ek| {
                    RsaPublic::parse(srk).and_then(|srk| tpm::decoy_blob(&ek, &srk))
                });
                match decoy {
                    Ok(blob) => (blob, Some(e)),
                    Err(_) => return refuse(stream, SaslCode::Auth, refusal(&e)).await,
                }
            }
            None => return refuse(stream, code_for(&e), refusal(&e)).await,
        },
        Ok(()) => {
            let reason = "the engine accepted TPM keys without a challenge".to_owned();
            return refuse(stream, SaslCode::SysPerm, reason).await;
        }
    };
    let segments = match tpm_blob_segments(&blob) {
        Ok(s) => s,
        Err(e) => return refuse(stream, SaslCode::SysPerm, e).await,
    };
    let [first_segment, last_segment] = segments;
    challenge(stream, first_segment).await?;
    let next = response(stream).await?;
    if let Err(e) = parse_tpm_response(&next) {
        return refuse(stream, SaslCode::Auth, e).await;
    }
    challenge(stream, last_segment).await?;
    // 3. The token, signed with the key the blob carried.
    let last = response(stream).await?;
    let token = match parse_tpm_response(&last).map(std::str::from_utf8) {
        Ok(Ok(token)) if !token.is_empty() => token.to_owned(),
        Ok(_) => {
            let e = "the TPM's last sasl-response carries no UTF-8 token".to_owned();
            return refuse(stream, SaslCode::Auth, e).await;
        }
        Err(e) => return refuse(stream, SaslCode::Auth, e).await,
    };
    if let Some(e) = refused {
        return refuse(stream, SaslCode::Auth, refusal(&e)).await;
    }
    let credential = DeviceCredential::SasToken(token);
    if let Err(e) = engine
        .check_device(
            init.scope,
            init.registration_id,
            &credential,
            protocol,
            Some(client_addr),
        )
        .await
    {
        return refuse(stream, code_for(&e), refusal(&e)).await;
    }
    outcome(stream, SaslCode::Ok).await?;
    Ok(SaslSuccess {
        identity: Identity {
            scope: init.scope.to_owned(),
            registration_id: init.registration_id.to_owned(),
        },
        credential,
    })
}

fn refusal(e: &ProvisioningError) -> String {
    format!("SASL refused: {e}")
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

    #[test]
    fn tpm_payloads_split_at_their_control_byte_and_nuls() {
        assert_eq!(
            parse_tpm_init(b"\0scope\0dev-1\0\x01\x3a\0\0ek"),
            Ok(TpmInit {
                scope: "scope",
                registration_id: "dev-1",
                endorsement_key: b"\x01\x3a\0\0ek",
            })
        );
        for bad in [
            &b""[..],
            b"\0",
            b"\0scope",
            b"\0scope\0",
            b"\0scope\0id\0",
            b"\0\0id\0ek",
            b"\0sc\xffope\0id\0ek",
            b"\x80scope\0id\0ek",
        ] {
            assert!(parse_tpm_init(bad).is_err(), "{bad:02x?}");
        }
        assert_eq!(parse_tpm_response(b"\0srk"), Ok(&b"srk"[..]));
        assert_eq!(parse_tpm_response(b"\0"), Ok(&b""[..]));
        assert!(parse_tpm_response(b"").is_err());
        assert!(parse_tpm_response(b"\xc1x").is_err());
    }

    #[test]
    fn a_blob_goes_in_two_segments_marked_0x80_then_0xc1() {
        let blob: Vec<u8> = (0..=255u8).cycle().take(766).collect();
        let [first, last] = tpm_blob_segments(&blob).unwrap();
        assert_eq!((first[0], last[0]), (0x80, 0xC1));
        assert_eq!((first.len(), last.len()), (384, 384));
        assert_eq!([&first[1..], &last[1..]].concat(), blob);
        assert!(tpm_blob_segments(&[]).is_err());
        assert!(tpm_blob_segments(&[0; 2 * MAX_TPM_SEGMENT + 1]).is_err());
        assert!(tpm_blob_segments(&[0; 2 * MAX_TPM_SEGMENT]).is_ok());
    }
}
