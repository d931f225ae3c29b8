//! The server's CPU cost of a TPM registration, piece by piece:
//! `cargo bench -p onramp-core --bench tpm`. A registration parses the EK and
//! SRK, builds two activation blobs (the challenge and the hub device key)
//! and verifies the device's token.

#![allow(clippy::unwrap_used)] // benchmark setup

use base64::{Engine as _, engine::general_purpose::STANDARD};
use criterion::{Criterion, criterion_group, criterion_main};
use onramp_core::sas;
use onramp_core::tpm::{self, RsaPublic};

/// Exported from swtpm with the SDKs' templates.
const EK: &[u8] = include_bytes!("../tests/data/tpm/ek.pub");
const SRK: &[u8] = include_bytes!("../tests/data/tpm/srk.pub");

fn tpm(c: &mut Criterion) {
    let ek_text = STANDARD.encode(EK);
    let srk_text = STANDARD.encode(SRK);
    c.bench_function("tpm: parse and validate an EK and SRK (base64)", |b| {
        b.iter(|| {
            let ek = RsaPublic::from_base64(std::hint::black_box(&ek_text)).unwrap();
            let srk = RsaPublic::from_base64(std::hint::black_box(&srk_text)).unwrap();
            (ek, srk)
        })
    });

    let ek = RsaPublic::parse(EK).unwrap();
    let srk = RsaPublic::parse(SRK).unwrap();
    c.bench_function("tpm: default registration ID from the EK", |b| {
        b.iter(|| std::hint::black_box(&ek).registration_id())
    });
    c.bench_function("tpm: build one activation blob (32-byte key)", |b| {
        b.iter(|| {
            let key = tpm::challenge_key().unwrap();
            tpm::activation_blob(std::hint::black_box(&ek), &srk, &key).unwrap()
        })
    });

    let key = tpm::challenge_key().unwrap();
    let resource = "0ne00TPM0A1/registrations/tpm-device-1";
    let token = sas::sign(
        resource,
        &STANDARD.encode(key),
        4_000_000_000,
        Some("registration"),
    )
    .unwrap();
    c.bench_function("tpm: verify a token signed with the TPM's key", |b| {
        b.iter(|| {
            tpm::verify_token(
                std::hint::black_box(&token),
                resource,
                &key,
                1_800_000_000,
                300,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, tpm);
criterion_main!(benches);
