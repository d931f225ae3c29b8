//! The CPU work of one registration, piece by piece, and the whole engine
//! over in-memory ports: `cargo bench -p onramp-core --bench hot_path`.

#![allow(clippy::unwrap_used)] // benchmark setup

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use onramp_core::allocate::{HubSelection, Proximity, allocate};
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::{Engine, EngineConfig, RegisterRequest};
use onramp_core::events::Protocol;
use onramp_core::ports::{Store, StoreExt, StoredRecord, SystemClock, TpmChallenge};
use onramp_core::sas;
use onramp_core::tpm::RsaPublic;
use onramp_model::{
    AllocationPolicy, AttestationMechanism, AttestationType, DeviceRegistration, IdKey,
    IndividualEnrollment, TpmAttestation,
};
use onramp_testkit::{MemoryStore, RecordingHubs, conformance, given};
use tokio::runtime::Runtime;

const GROUP_KEY: &str = "cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw==";

fn sas_verification(c: &mut Criterion) {
    let key = sas::derive_device_key(GROUP_KEY, "device-000042").unwrap();
    let token = sas::sign(
        "0ne0000A2B3/registrations/device-000042",
        &key,
        4_000_000_000,
        Some("registration"),
    )
    .unwrap();
    c.bench_function("sas: parse and verify a device token", |b| {
        b.iter(|| {
            let t = sas::parse(std::hint::black_box(&token)).unwrap();
            assert!(t.is_signed_by(&key));
        })
    });
    c.bench_function("sas: derive a group device key", |b| {
        b.iter(|| sas::derive_device_key(GROUP_KEY, std::hint::black_box("device-000042")).unwrap())
    });
}

fn allocation(c: &mut Criterion) {
    let hubs: Vec<_> = ["hub-a", "hub-b", "hub-c"]
        .iter()
        .map(|n| conformance::hub(n))
        .collect();
    let selection = HubSelection {
        policy: AllocationPolicy::Hashed,
        iot_hubs: &[],
        iot_hub_host_name: None,
    };
    c.bench_function("allocate: hashed over 3 hubs", |b| {
        b.iter(|| {
            allocate(
                selection,
                &hubs,
                std::hint::black_box("device-000042"),
                Proximity::unmeasured(),
            )
            .unwrap()
        })
    });
}

/// A runtime and an engine over an in-memory store that holds service
/// `default` (ID scope number `scope`), hub `hub-a` and `enrollment`;
/// returns them with the store and the ID scope.
fn engine_over<T: StoredRecord>(
    scope: u32,
    enrollment: T,
) -> (Runtime, Arc<MemoryStore>, String, Arc<Engine>) {
    // Timers on: a registration runs in a task the engine awaits within its
    // reply budget.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let svc = conformance::service("default", scope);
    rt.block_on(async {
        store.create_service(&svc, &[]).await.unwrap();
        given(&*store, "default", conformance::hub("hub-a")).await;
        given(&*store, "default", enrollment).await;
    });
    let engine = Arc::new(Engine::new(
        store.clone(),
        Arc::new(RecordingHubs::default()),
        Arc::new(SystemClock),
        EngineConfig::default(),
    ));
    (rt, store, svc.id_scope.to_string(), engine)
}

fn engine(c: &mut Criterion) {
    let (rt, _, scope, engine) = engine_over(0xA2B3, conformance::group("fleet"));
    let key = sas::derive_device_key(GROUP_KEY, "device-000042").unwrap();
    let token = sas::sign(
        &format!("{scope}/registrations/device-000042"),
        &key,
        4_000_000_000,
        Some("registration"),
    )
    .unwrap();
    c.bench_function("engine: register a group device (in-memory ports)", |b| {
        b.iter(|| {
            rt.block_on(engine.register(RegisterRequest {
                id_scope: scope.clone(),
                registration_id: "device-000042".into(),
                credential: DeviceCredential::SasToken(token.clone()),
                body: DeviceRegistration::default(),
                force_registration: false,
                protocol: Protocol::Internal,
                client_addr: None,
            }))
            .unwrap()
        })
    });
}

/// A TPM device's whole registration: the challenge (one activation blob,
/// the key kept), then the retry signed with that key (the token checked,
/// the challenge spent, the hub key wrapped in a second blob).
fn engine_tpm(c: &mut Criterion) {
    let ek = RsaPublic::parse(include_bytes!("../tests/data/tpm/ek.pub")).unwrap();
    let srk = RsaPublic::parse(include_bytes!("../tests/data/tpm/srk.pub")).unwrap();
    let enrollment = IndividualEnrollment {
        registration_id: "tpm-device".into(),
        attestation: Some(AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                endorsement_key: ek.to_base64(),
                storage_root_key: Some(srk.to_base64()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (rt, store, scope, engine) = engine_over(0xA2B4, enrollment);
    let request = |credential| RegisterRequest {
        id_scope: scope.clone(),
        registration_id: "tpm-device".into(),
        credential,
        body: DeviceRegistration::default(),
        force_registration: false,
        protocol: Protocol::Internal,
        client_addr: None,
    };
    let keys = DeviceCredential::Tpm {
        endorsement_key: ek.to_base64(),
        storage_root_key: Some(srk.to_base64()),
        endorsement_key_certificate: None,
    };
    let resource = format!("{scope}/registrations/tpm-device");
    c.bench_function(
        "engine: register a TPM device, challenge and retry (in-memory ports)",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let challenge = engine.register(request(keys.clone())).await.unwrap_err();
                    assert!(challenge.tpm_challenge.is_some());
                    // The device's part (opening the blob) happens in its TPM:
                    // here the key is read back from the store.
                    let kept = store
                        .get::<TpmChallenge>("default", &IdKey::of("tpm-device"))
                        .await
                        .unwrap()
                        .unwrap();
                    let token = sas::sign(
                        &resource,
                        kept.key.expose(),
                        4_000_000_000,
                        Some("registration"),
                    )
                    .unwrap();
                    engine
                        .register(request(DeviceCredential::SasToken(token)))
                        .await
                        .unwrap()
                })
            })
        },
    );
}

criterion_group!(benches, sas_verification, allocation, engine, engine_tpm);
criterion_main!(benches);
