//! Diagnostic entries: kept per service, read newest first by device,
//! outcome and time, bounded by `top`, and pruned by age and by count.

use std::time::Duration;

use onramp_core::ports::{DiagnosticEntry, DiagnosticsQuery, Outcome, Retention, Step, Store};
use onramp_model::{AttestationType, IdKey};

use super::fixtures::{now, owner, service};
use super::given_tenant;

/// An entry of `service` for `device` at `now(seconds)`.
fn entry(service: &str, device: &str, seconds: i64, outcome: Outcome) -> DiagnosticEntry {
    let assigned = outcome == Outcome::Assigned;
    DiagnosticEntry {
        time: now(seconds),
        service: service.to_owned(),
        registration_id: device.to_owned(),
        protocol: "https".to_owned(),
        client_address: Some("127.0.0.1".to_owned()),
        attestation: Some(AttestationType::SymmetricKey),
        enrollment: Some(format!("individual:{device}")),
        step: if assigned { Step::Done } else { Step::Attest },
        outcome,
        error_code: (!assigned).then_some(401_002),
        message: format!("{} at {seconds}", outcome.as_str()),
        duration_ms: 3,
        operation_id: assigned.then(|| format!("op-{seconds}")),
        assigned_hub: assigned.then(|| "hub-a.example.net".to_owned()),
        device_id: assigned.then(|| device.to_owned()),
    }
}

fn all() -> DiagnosticsQuery {
    DiagnosticsQuery {
        registration: None,
        outcome: None,
        since: None,
        top: 1000,
    }
}

async fn read(store: &dyn Store, service: &str, query: DiagnosticsQuery) -> Vec<DiagnosticEntry> {
    store
        .diagnostics(service, &query)
        .await
        .expect("diagnostics")
}

/// The times (seconds) of entries, as `now(seconds)` made them.
fn seconds(entries: &[DiagnosticEntry]) -> Vec<i64> {
    entries
        .iter()
        .map(|e| e.time.unix_seconds() - now(0).unix_seconds())
        .collect()
}

/// How many entries a prune at `now(40)` removes, keeping `max_age`
/// seconds and `max_entries` per service.
async fn pruned(store: &dyn Store, max_age: u64, max_entries: u64) -> u64 {
    let retention = Retention {
        max_age: Duration::from_secs(max_age),
        max_entries_per_service: max_entries,
    };
    store
        .prune_diagnostics(retention, now(40))
        .await
        .expect("prune")
}

pub async fn diagnostics(store: &dyn Store) {
    given_tenant(store).await;
    store
        .create_service(&service("t2", 2), &[owner("b3duZXIta2V5LTI=")])
        .await
        .expect("service t2");
    assert!(read(store, "t1", all()).await.is_empty());

    // Two batches, the second holding an entry of a service that does not
    // exist: the rest is still written.
    let first = vec![
        entry("t1", "Dev-1", 10, Outcome::Refused),
        entry("t1", "dev-2", 20, Outcome::Assigned),
        entry("t2", "dev-1", 15, Outcome::Failed),
    ];
    store.add_diagnostics(&first).await.expect("add");
    let second = vec![
        entry("nowhere", "dev-1", 25, Outcome::Refused),
        entry("t1", "dev-1", 30, Outcome::Assigned),
        entry("t1", "dev-3", 30, Outcome::Refused),
    ];
    store.add_diagnostics(&second).await.expect("add");

    // Newest first (at one time, the one written last first), each
    // service its own, read back whole.
    let t1 = read(store, "t1", all()).await;
    assert_eq!(seconds(&t1), [30, 30, 20, 10]);
    assert_eq!(t1[0], second[2]);
    assert_eq!(t1[1], second[1]);
    assert_eq!(t1[3], first[0]);
    assert_eq!(read(store, "t2", all()).await, [first[2].clone()]);
    assert!(read(store, "nowhere", all()).await.is_empty());

    // By device, whatever the spelling; by outcome; since a time; at most top.
    let dev1 = DiagnosticsQuery {
        registration: Some(IdKey::of("DEV-1")),
        ..all()
    };
    let found = read(store, "t1", dev1.clone()).await;
    assert_eq!(seconds(&found), [30, 10]);
    assert!(
        found
            .iter()
            .all(|e| e.registration_id.eq_ignore_ascii_case("dev-1"))
    );
    let refused = DiagnosticsQuery {
        outcome: Some(Outcome::Refused),
        ..all()
    };
    assert_eq!(seconds(&read(store, "t1", refused.clone()).await), [30, 10]);
    let refused_dev1 = DiagnosticsQuery {
        outcome: Some(Outcome::Refused),
        ..dev1.clone()
    };
    assert_eq!(seconds(&read(store, "t1", refused_dev1).await), [10]);
    let since = DiagnosticsQuery {
        since: Some(now(20)),
        ..all()
    };
    assert_eq!(seconds(&read(store, "t1", since).await), [30, 30, 20]);
    let top = DiagnosticsQuery { top: 2, ..all() };
    assert_eq!(seconds(&read(store, "t1", top).await), [30, 30]);

    // Pruned by age: entries older than the retention at `now(40)` go.
    let removed = pruned(store, 24, 1000).await;
    assert_eq!(removed, 2, "t1's entry at 10 and t2's at 15");
    assert_eq!(seconds(&read(store, "t1", all()).await), [30, 30, 20]);
    assert!(read(store, "t2", all()).await.is_empty());

    // Pruned by count: each service keeps its newest.
    let more: Vec<DiagnosticEntry> = (0..5)
        .map(|i| entry("t2", &format!("dev-{i}"), 31 + i, Outcome::Refused))
        .collect();
    store.add_diagnostics(&more).await.expect("add");
    assert_eq!(pruned(store, 3600, 2).await, 1 + 3);
    assert_eq!(seconds(&read(store, "t1", all()).await), [30, 30]);
    assert_eq!(seconds(&read(store, "t2", all()).await), [35, 34]);
    assert_eq!(pruned(store, 3600, 2).await, 0, "nothing more");

    // A deleted service's entries go with it.
    assert!(store.delete_service("t2").await.expect("delete t2"));
    store
        .create_service(&service("t2", 2), &[owner("b3duZXIta2V5LTI=")])
        .await
        .expect("t2 again");
    assert!(read(store, "t2", all()).await.is_empty());
}
