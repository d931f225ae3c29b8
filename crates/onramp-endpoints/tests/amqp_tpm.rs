//! TPM attestation over AMQP: the SASL `TPM` mechanism served in process
//! (the engine over the testkit's store, hubs and a manual clock), a device
//! whose TPM is `SoftTpm`, the SASL frames written by hand and the links by
//! fe2o3-amqp. A success that ends with the hub key opened in the TPM, and
//! each refusal with its SASL outcome.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::{BufMut, BytesMut};
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::messaging::{Body, Outcome};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslResponse};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use onramp_core::ports::{
    GroupPage, IdentityAuth, Page, Precondition, Store, StoreExt, TpmChallenge,
};
use onramp_core::sas;
use onramp_core::tpm::device::SoftTpm;
use onramp_endpoints::EndpointConfig;
use onramp_endpoints::amqp::{AmqpLimits, DpsAmqp, register_message, status_message};
use onramp_model::{
    AttestationMechanism, AttestationType, EnrollmentGroup, IdKey, IndividualEnrollment,
    TpmAttestation, UtcTime,
};
use onramp_net::PeerCertificates;
use onramp_net::amqp::{AmqpApp, AmqpConnection};
use onramp_testkit::ek_cert::ManufacturerCa;
use onramp_testkit::given;
use onramp_testkit::tpm_device::{TpmEnrolled, tpm_enrollment};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Decoder, Encoder};

const DEVICE: &str = "tpm-amqp-1";
const WAIT: Duration = Duration::from_secs(20);

/// The TPM device's setup, with the DPS AMQP endpoint over its engine.
struct Dps(TpmEnrolled);

impl std::ops::Deref for Dps {
    type Target = TpmEnrolled;
    fn deref(&self) -> &TpmEnrolled {
        &self.0
    }
}

/// A new software TPM, enrolled as `DEVICE`.
async fn enrolled_tpm() -> (SoftTpm, Dps) {
    let tpm = SoftTpm::generate().unwrap();
    let dps = Dps(TpmEnrolled::new(0x7A12, DEVICE, tpm.endorsement_key()).await);
    (tpm, dps)
}

/// The TPM's endorsement and storage root keys, as SASL TPM carries them.
fn key_bytes(tpm: &SoftTpm) -> (Vec<u8>, Vec<u8>) {
    let ek = tpm.endorsement_key().as_bytes().to_vec();
    let srk = tpm.storage_root_key().as_bytes().to_vec();
    (ek, srk)
}

impl Dps {
    /// A connection to the DPS AMQP endpoint, served in a task of its own.
    fn connect(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let app = DpsAmqp::new(
            self.engine.clone(),
            EndpointConfig::default(),
            AmqpLimits::default(),
        );
        tokio::spawn(async move {
            app.serve(AmqpConnection {
                stream: Box::new(server),
                peer: PeerCertificates::default(),
                remote: "127.0.0.1:50000".parse().unwrap(),
                websocket: false,
                accepted_at: tokio::time::Instant::now(),
                shutdown,
            })
            .await;
            drop(stop);
        });
        client
    }

    /// A token for `id` signed with `key` (base64), as the SDKs sign it.
    fn token(&self, id: &str, key: &str) -> String {
        let expiry = UtcTime::now().unix_seconds() + 3600;
        sas::sign(&self.resource(id), key, expiry, Some("registration")).unwrap()
    }
}

async fn write_frame(stream: &mut DuplexStream, frame: Frame) {
    let mut body = BytesMut::new();
    FrameCodec {}.encode(frame, &mut body).unwrap();
    let mut out = BytesMut::new();
    out.put_u32(u32::try_from(body.len() + 4).unwrap());
    out.extend_from_slice(&body);
    stream.write_all(&out).await.unwrap();
}

/// The server's next SASL frame, or `None` when it closed the connection.
async fn read_frame(stream: &mut DuplexStream) -> Option<Frame> {
    let size = tokio::time::timeout(WAIT, stream.read_u32())
        .await
        .expect("the server answers")
        .ok()?;
    assert!(size <= 512, "a SASL frame of {size} bytes");
    let mut body = BytesMut::zeroed(size as usize - 4);
    stream.read_exact(&mut body).await.unwrap();
    FrameCodec {}.decode(&mut body).unwrap()
}

async fn respond(stream: &mut DuplexStream, payload: Vec<u8>) {
    write_frame(
        stream,
        Frame::Response(SaslResponse {
            response: Binary::from(payload),
        }),
    )
    .await;
}

/// How a SASL exchange ended.
#[derive(Debug)]
struct Ended {
    code: SaslCode,
    /// The activation blob, if both segments came.
    blob: Option<Vec<u8>>,
}

/// Opens SASL and sends `sasl-init` for `mechanism`.
async fn open_sasl(stream: &mut DuplexStream, mechanism: &str, initial: Vec<u8>, hostname: &str) {
    stream.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, b"AMQP\x03\x01\x00\x00");
    let Some(Frame::Mechanisms(offered)) = read_frame(stream).await else {
        panic!("no sasl-mechanisms")
    };
    let offered: Vec<&str> = offered
        .sasl_server_mechanisms
        .0
        .iter()
        .map(|m| m.as_str())
        .collect();
    assert_eq!(offered, ["PLAIN", "TPM"]);
    write_frame(
        stream,
        Frame::Init(SaslInit {
            mechanism: Symbol::from(mechanism),
            initial_response: Some(Binary::from(initial)),
            hostname: Some(hostname.to_owned()),
        }),
    )
    .await;
}

/// The outcome the server sends next (the connection must not just end).
async fn outcome(stream: &mut DuplexStream) -> SaslCode {
    match read_frame(stream).await {
        Some(Frame::Outcome(o)) => o.code,
        other => panic!("expected sasl-outcome, got {other:?}"),
    }
}

/// The `TPM` mechanism's initial response: scope, registration ID and
/// endorsement key, each after a NUL.
fn tpm_init(scope: &str, id: &str, ek: &[u8]) -> Vec<u8> {
    [&[0u8][..], scope.as_bytes(), &[0], id.as_bytes(), &[0], ek].concat()
}

/// The `TPM` exchange as the SDKs run it, with `ek` and `srk` as sent, and
/// `answer` turning the blob into the last response's payload.
async fn tpm_exchange(
    stream: &mut DuplexStream,
    scope: &str,
    id: &str,
    ek: &[u8],
    srk: &[u8],
    answer: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Ended {
    open_sasl(
        stream,
        "TPM",
        tpm_init(scope, id, ek),
        &format!("{scope}/registrations/{id}"),
    )
    .await;
    match read_frame(stream).await {
        Some(Frame::Challenge(c)) => assert_eq!(c.challenge.as_slice(), [0u8]),
        Some(Frame::Outcome(o)) => {
            return Ended {
                code: o.code,
                blob: None,
            };
        }
        other => panic!("expected the first challenge, got {other:?}"),
    }
    respond(stream, [&[0u8][..], srk].concat()).await;
    let first = match read_frame(stream).await {
        Some(Frame::Challenge(c)) => c.challenge.to_vec(),
        Some(Frame::Outcome(o)) => {
            return Ended {
                code: o.code,
                blob: None,
            };
        }
        other => panic!("expected the blob's first segment, got {other:?}"),
    };
    assert_eq!(first[0], 0x80, "the first segment's control byte");
    respond(stream, vec![0]).await;
    let Some(Frame::Challenge(last)) = read_frame(stream).await else {
        panic!("no second segment")
    };
    assert_eq!(last.challenge[0], 0xC1, "the last segment's control byte");
    let blob = [&first[1..], &last.challenge[1..]].concat();
    respond(stream, [&[0u8][..], &answer(&blob)].concat()).await;
    Ended {
        code: outcome(stream).await,
        blob: Some(blob),
    }
}

/// The TPM's answer: the token signed with the key the blob carried.
fn signed_by(dps: &Dps, tpm: &SoftTpm, id: &str) -> impl FnOnce(&[u8]) -> Vec<u8> {
    let resource = dps.resource(id);
    move |blob| {
        let key = tpm.open(blob).expect("the blob opens in the TPM");
        let expiry = UtcTime::now().unix_seconds() + 3600;
        sas::sign(
            &resource,
            &STANDARD.encode(key),
            expiry,
            Some("registration"),
        )
        .unwrap()
        .into_bytes()
    }
}

async fn answer(receiver: &mut Receiver) -> Json {
    let delivery = tokio::time::timeout(WAIT, receiver.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap();
    receiver.accept(&delivery).await.unwrap();
    let Body::Data(data) = &delivery.message().body else {
        panic!("not a Data section")
    };
    let bytes: Vec<u8> = data.iter().flat_map(|d| d.0.iter().copied()).collect();
    serde_json::from_slice(&bytes).unwrap()
}

/// Registers over the links of an authenticated connection; the final answer.
async fn register(dps: &Dps, stream: DuplexStream, tpm: &SoftTpm) -> Json {
    let mut conn = Connection::builder()
        .container_id("onramp-test-tpm")
        .hostname("localhost")
        .open_with_stream(stream)
        .await
        .unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let address = dps.resource(DEVICE);
    let mut receiver = Receiver::attach(&mut session, "recv", address.as_str())
        .await
        .unwrap();
    let mut sender = Sender::attach(&mut session, "send", address.as_str())
        .await
        .unwrap();
    // The Node SDK's register body repeats the TPM's keys.
    let body = serde_json::json!({
        "registrationId": DEVICE,
        "tpm": {
            "endorsementKey": tpm.endorsement_key().to_base64(),
            "storageRootKey": tpm.storage_root_key().to_base64(),
        }
    });
    let outcome = sender
        .send(register_message("r", body.to_string().into_bytes()))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let mut op = answer(&mut receiver).await;
    for n in 0..50 {
        if op["status"] != "assigning" {
            break;
        }
        let operation_id = op["operationId"].as_str().unwrap().to_owned();
        let correlation = format!("p{n}");
        sender
            .send(status_message(&correlation, &operation_id))
            .await
            .unwrap();
        op = answer(&mut receiver).await;
    }
    conn.close().await.ok();
    op
}

#[tokio::test]
async fn a_tpm_device_provisions_over_sasl_tpm_and_its_tokens_open_nothing_more() {
    let (tpm, dps) = enrolled_tpm().await;
    let (ek, srk) = key_bytes(&tpm);

    // The exchange: two segments of a real blob, the TPM's token, ok.
    let mut stream = dps.connect();
    let mut token = String::new();
    let sign = signed_by(&dps, &tpm, DEVICE);
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, |blob| {
        let t = sign(blob);
        token = String::from_utf8(t.clone()).unwrap();
        t
    })
    .await;
    assert_eq!(ended.code, SaslCode::Ok);
    let blob = ended.blob.unwrap();
    assert!((760..=800).contains(&blob.len()), "{} bytes", blob.len());

    // The links: assigned, with the hub key wrapped for this TPM.
    let op = register(&dps, stream, &tpm).await;
    assert_eq!(op["status"], "assigned", "{op}");
    let state = &op["registrationState"];
    assert_eq!(state["assignedHub"], "hub-a", "{op}");
    let wrapped = STANDARD
        .decode(state["tpm"]["authenticationKey"].as_str().unwrap())
        .unwrap();
    let hub_key = tpm.open(&wrapped).unwrap();
    let identity = dps.hubs.device("hub-a", DEVICE).unwrap();
    let IdentityAuth::SymmetricKey { primary, .. } = identity.auth else {
        panic!("not a symmetric-key identity: {:?}", identity.auth)
    };
    assert_eq!(STANDARD.encode(hub_key), primary.expose());

    // Replayed as PLAIN, the spent challenge's token opens no connection.
    let mut stream = dps.connect();
    let plain = [
        &b"\0"[..],
        dps.resource(DEVICE).as_bytes(),
        b"\0",
        token.as_bytes(),
    ]
    .concat();
    open_sasl(&mut stream, "PLAIN", plain, "localhost").await;
    assert_eq!(outcome(&mut stream).await, SaslCode::Auth);

    // Replayed as the last TPM response, it meets a new challenge: refused.
    let mut stream = dps.connect();
    let replayed = token.clone().into_bytes();
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, |_| replayed).await;
    assert_eq!(ended.code, SaslCode::Auth);
    assert!(ended.blob.is_some());
    assert_eq!(
        dps.kept_challenge().await.spent_by,
        None,
        "the new challenge is pending"
    );
}

#[tokio::test]
async fn an_unenrolled_or_malformed_tpm_and_foreign_stale_or_expired_tokens_are_refused() {
    let (tpm, dps) = enrolled_tpm().await;
    let (ek, srk) = key_bytes(&tpm);

    // Another TPM claiming the registration, and a TPM nobody enrolled: each
    // gets a blob it can open (as the SDKs need to report anything), whose
    // key vouches for nothing.
    let stranger = SoftTpm::generate().unwrap();
    let (stranger_ek, stranger_srk) = key_bytes(&stranger);
    for id in [DEVICE, "tpm-nobody"] {
        let mut stream = dps.connect();
        let sign = signed_by(&dps, &stranger, id);
        let ended = tpm_exchange(
            &mut stream,
            &dps.scope,
            id,
            &stranger_ek,
            &stranger_srk,
            sign,
        )
        .await;
        assert_eq!(ended.code, SaslCode::Auth, "{id}");
        assert!(ended.blob.is_some(), "{id}");
    }
    assert!(
        dps.store
            .get::<TpmChallenge>("default", &IdKey::of(DEVICE))
            .await
            .unwrap()
            .is_none(),
        "a refused TPM leaves no challenge"
    );

    // A malformed endorsement key: refused once the keys are in, no blob.
    let mut stream = dps.connect();
    let mut bad_ek = ek.clone();
    bad_ek.truncate(100); // its size field still says 314
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &bad_ek, &srk, |_| {
        Vec::new()
    })
    .await;
    assert_eq!(ended.code, SaslCode::Auth);
    assert!(ended.blob.is_none());

    // A token signed with a foreign key.
    let mut stream = dps.connect();
    let foreign = dps.token(DEVICE, &STANDARD.encode([7u8; 32])).into_bytes();
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, |_| foreign).await;
    assert_eq!(ended.code, SaslCode::Auth);

    // A stale key: the one the previous exchange delivered.
    let mut stream = dps.connect();
    let mut stale = None;
    tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, |blob| {
        stale = Some(STANDARD.encode(tpm.open(blob).unwrap()));
        b"not a token".to_vec()
    })
    .await;
    let stale = dps.token(DEVICE, &stale.unwrap()).into_bytes();
    let mut stream = dps.connect();
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, |_| stale).await;
    assert_eq!(ended.code, SaslCode::Auth);

    // The right key after the challenge expired.
    let mut stream = dps.connect();
    let sign = signed_by(&dps, &tpm, DEVICE);
    let clock = dps.clock.clone();
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, |blob| {
        clock.advance_seconds(16 * 60);
        sign(blob)
    })
    .await;
    assert_eq!(ended.code, SaslCode::Auth);

    // A disabled enrollment: the challenge comes, the signed token is refused.
    let mut disabled = tpm_enrollment(DEVICE, tpm.endorsement_key());
    disabled.provisioning_status = Some(onramp_model::ProvisioningStatus::Disabled);
    given(&*dps.store, "default", disabled).await;
    let mut stream = dps.connect();
    let sign = signed_by(&dps, &tpm, DEVICE);
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, sign).await;
    assert_eq!(ended.code, SaslCode::Auth);
    assert_eq!(dps.hubs.count(), 0, "no refused device reached a hub");
}

#[tokio::test]
async fn malformed_tpm_payloads_and_frames_over_512_bytes_end_the_exchange() {
    let (tpm, dps) = enrolled_tpm().await;

    // An init without a registration ID, and one that claims a blob segment.
    for init in [b"\0scope-only".to_vec(), b"\x80scope\0id\0ek".to_vec()] {
        let mut stream = dps.connect();
        open_sasl(&mut stream, "TPM", init, "localhost").await;
        assert_eq!(outcome(&mut stream).await, SaslCode::Auth);
    }

    // A TPM init frame over 512 bytes (a 600-byte key): the connection ends
    // with no outcome, before any engine work.
    let mut stream = dps.connect();
    let init = tpm_init(&dps.scope, DEVICE, &[0x41u8; 600]);
    stream.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.unwrap();
    assert!(matches!(
        read_frame(&mut stream).await,
        Some(Frame::Mechanisms(_))
    ));
    write_frame(
        &mut stream,
        Frame::Init(SaslInit {
            mechanism: Symbol::from("TPM"),
            initial_response: Some(Binary::from(init)),
            hostname: None,
        }),
    )
    .await;
    assert!(
        read_frame(&mut stream).await.is_none(),
        "the connection ends"
    );

    // A response over 512 bytes in the middle of the exchange ends it too.
    let mut stream = dps.connect();
    let init = tpm_init(&dps.scope, DEVICE, tpm.endorsement_key().as_bytes());
    open_sasl(&mut stream, "TPM", init, "localhost").await;
    assert!(matches!(
        read_frame(&mut stream).await,
        Some(Frame::Challenge(_))
    ));
    respond(&mut stream, vec![0u8; 700]).await;
    assert!(
        read_frame(&mut stream).await.is_none(),
        "the connection ends"
    );
    assert!(
        dps.store
            .get::<TpmChallenge>("default", &IdKey::of(DEVICE))
            .await
            .unwrap()
            .is_none()
    );
}

/// A TPM enrollment group (Onramp's extension) over AMQP: SASL carries no
/// EK certificate, so the group admits the TPM by its EK hash alone.
#[tokio::test]
async fn a_tpm_group_admits_a_tpm_by_its_ek_hash_over_sasl_tpm() {
    let (tpm, dps) = enrolled_tpm().await;
    dps.store
        .delete::<IndividualEnrollment>("default", &IdKey::of(DEVICE), Precondition::None)
        .await
        .unwrap();
    let maker = ManufacturerCa::new("AMQP Test TPM Manufacturer");
    let group = |hash: String| EnrollmentGroup {
        enrollment_group_id: "tpm-line".into(),
        attestation: Some(AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                manufacturer_certificates: Some(vec![maker.cert_pem.clone()]),
                allow_endorsement_key_hashes: Some(vec![hash]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (ek, srk) = key_bytes(&tpm);

    // Another TPM's hash on the list: a decoy blob (around a key nobody
    // keeps), refused after the token the TPM signs with it.
    given(&*dps.store, "default", group("00".repeat(32))).await;
    let mut stream = dps.connect();
    let sign = signed_by(&dps, &tpm, DEVICE);
    let ended = tpm_exchange(&mut stream, &dps.scope, DEVICE, &ek, &srk, sign).await;
    assert_eq!(ended.code, SaslCode::Auth);

    // Its own hash: challenged, signed, assigned under the group.
    given(
        &*dps.store,
        "default",
        group(tpm.endorsement_key().sha256_hex()),
    )
    .await;
    let mut stream = dps.connect();
    let ended = tpm_exchange(
        &mut stream,
        &dps.scope,
        DEVICE,
        &ek,
        &srk,
        signed_by(&dps, &tpm, DEVICE),
    )
    .await;
    assert_eq!(ended.code, SaslCode::Ok);
    assert_eq!(
        dps.kept_challenge().await.enrollment_group_id.as_deref(),
        Some("tpm-line")
    );
    let op = register(&dps, stream, &tpm).await;
    assert_eq!(op["status"], "assigned", "{op}");
    let by_group = dps
        .store
        .registrations_of_group(&GroupPage::new(
            &IdKey::of("tpm-line"),
            Page::new("default", None, 10),
        ))
        .await
        .unwrap();
    assert_eq!(by_group.len(), 1);
    assert!(format!("{by_group:?}").contains(DEVICE), "{by_group:?}");
}
