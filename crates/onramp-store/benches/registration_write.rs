//! The store's registration write, the one durable write of every
//! registration: `cargo bench -p onramp-store --bench registration_write`.
//! One writer at a time shows the cost of a commit; 64 at once show what
//! group commit makes of it.

#![allow(clippy::unwrap_used)] // benchmark setup

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use onramp_core::ports::Precondition;
use onramp_core::ports::StoreExt;
use onramp_core::ports::{RegistrationRecord, Store};
use onramp_model::{DeviceRegistrationState, RegistrationStatus, UtcTime};
use onramp_store::sqlite::{Durability, SqliteOptions};
use onramp_store::{Sealer, SqliteStore};
use onramp_testkit::conformance;

fn record(i: u64) -> RegistrationRecord {
    let mut state =
        DeviceRegistrationState::new(format!("device-{i:07}"), RegistrationStatus::Assigned);
    state.assigned_hub = Some("hub-a.example.net".into());
    state.device_id = Some(format!("device-{i:07}"));
    RegistrationRecord {
        state,
        operation_id: format!("1.{i:016x}.bench"),
        enrollment_group_id: Some("fleet".into()),
        placement: None,
    }
}

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, durability) in [("full", Durability::Full), ("normal", Durability::Normal)] {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(Sealer::load_or_create(&dir.path().join("keys")).unwrap());
        let store = Arc::new(
            SqliteStore::open(
                &dir.path().join("onramp.db"),
                sealer,
                SqliteOptions {
                    durability,
                    ..SqliteOptions::default()
                },
            )
            .unwrap(),
        );
        rt.block_on(store.create_service(&conformance::service("default", 1), &[]))
            .unwrap();
        let n = Arc::new(AtomicU64::new(0));
        c.bench_function(
            &format!("store: one registration write (durability {name})"),
            |b| {
                b.iter(|| {
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    rt.block_on(store.put("default", record(i), Precondition::None, UtcTime::now()))
                        .unwrap()
                })
            },
        );
        c.bench_function(
            &format!("store: 64 concurrent registration writes (durability {name})"),
            |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let mut tasks = Vec::with_capacity(64);
                        for _ in 0..64 {
                            let (store, i) = (store.clone(), n.fetch_add(1, Ordering::Relaxed));
                            tasks.push(tokio::spawn(async move {
                                store
                                    .put("default", record(i), Precondition::None, UtcTime::now())
                                    .await
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap().unwrap();
                        }
                    })
                })
            },
        );
    }
}

criterion_group!(benches, writes);
criterion_main!(benches);
