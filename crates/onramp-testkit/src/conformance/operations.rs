//! Registrations running on some node (one per device, the newest stays,
//! the record removes its own), and the newest registration's record
//! winning over an older one's.

use onramp_core::ports::{
    DeviceAt, RegistrationRecord, RunningOperation, Store, StoreError, StoreExt,
};
use onramp_model::IdKey;

use super::fixtures::{now, record, service};
use super::{found, given_tenant, put_at, refused};
use onramp_core::ports::Precondition;

/// An operation ID that started at `now(seconds)`.
fn op_id(seconds: i64, tag: &str) -> String {
    format!("1.{:016x}.{tag}", now(seconds).unix_nanos())
}

fn running(registration_id: &str, seconds: i64, tag: &str) -> RunningOperation {
    RunningOperation {
        registration_id: registration_id.to_owned(),
        operation_id: op_id(seconds, tag),
        node: format!("node-{tag}"),
        started: now(seconds),
        lease_until: now(seconds + 30),
    }
}

/// A registration record written by the operation that started at `seconds`.
fn record_of(registration_id: &str, seconds: i64, tag: &str, hub: &str) -> RegistrationRecord {
    let mut r = record(registration_id, None);
    r.operation_id = op_id(seconds, tag);
    r.state.assigned_hub = Some(hub.to_owned());
    if let Some(p) = r.placement.as_mut() {
        p.hub = hub.to_owned();
    }
    r
}

/// Asserts which operation `service` holds as running for device `id`.
async fn assert_running(
    store: &dyn Store,
    service: &str,
    id: &str,
    expected: Option<&RunningOperation>,
) {
    let running = store
        .operation(&DeviceAt::new(service, &IdKey::of(id)))
        .await
        .expect("operation");
    assert_eq!(running.as_ref(), expected, "{service}/{id}");
}

/// Ends operation `operation_id` of t1's dev-1.
async fn end(store: &dyn Store, operation: &RunningOperation, what: &str) {
    store.end_operation("t1", operation).await.expect(what);
}

pub async fn running_operations(store: &dyn Store) {
    given_tenant(store).await;
    assert_running(store, "t1", "dev-1", None).await;

    // Recorded and read back under the folded key; renewed in place.
    let first = running("Dev-1", 100, "a");
    store.put_operation("t1", &first).await.expect("put");
    assert_running(store, "t1", "dev-1", Some(&first)).await;
    let mut renewed = first.clone();
    renewed.lease_until = now(160);
    store.put_operation("t1", &renewed).await.expect("renew");
    assert_running(store, "t1", "DEV-1", Some(&renewed)).await;

    // A newer operation of the device replaces it; an older one does not
    // replace the newer.
    let newer = running("dev-1", 110, "b");
    store.put_operation("t1", &newer).await.expect("put newer");
    store
        .put_operation("t1", &renewed)
        .await
        .expect("put older");
    assert_running(store, "t1", "dev-1", Some(&newer)).await;

    // Ending another operation leaves it; ending it removes it.
    end(store, &first, "end other").await;
    assert_running(store, "t1", "dev-1", Some(&newer)).await;
    end(store, &newer, "end").await;
    assert_running(store, "t1", "dev-1", None).await;
    end(store, &newer, "ending an ended operation is no error").await;

    // The record of the operation removes it in the same write; the record
    // of another operation leaves the device's running one alone.
    let third = running("dev-2", 120, "c");
    store.put_operation("t1", &third).await.expect("put");
    put_at(store, "t1", record_of("dev-2", 90, "z", "hub-a"), now(121)).await;
    assert_running(store, "t1", "dev-2", Some(&third)).await;
    put_at(store, "t1", record_of("dev-2", 120, "c", "hub-a"), now(122)).await;
    assert_running(store, "t1", "dev-2", None).await;

    // Each device and service has its own.
    store
        .put_operation("t1", &running("dev-3", 130, "d"))
        .await
        .expect("put");
    assert_running(store, "t1", "dev-4", None).await;
    assert_running(store, "t2", "dev-3", None).await;

    // Only for a service that exists; gone with its service.
    let err = store
        .put_operation("nope", &running("dev-1", 140, "e"))
        .await
        .expect_err("no such service");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(store.delete_service("t1").await.expect("delete"));
    store
        .create_service(&service("t1", 1), &[])
        .await
        .expect("again");
    assert_running(store, "t1", "dev-3", None).await;
}

pub async fn newest_registration_wins(store: &dyn Store) {
    given_tenant(store).await;
    let newer = record_of("dev-1", 200, "new", "hub-b");
    put_at(store, "t1", newer.clone(), now(205)).await;

    // An older operation's record does not replace it.
    let err = refused(
        store,
        "t1",
        record_of("dev-1", 150, "old", "hub-a"),
        Precondition::None,
    )
    .await;
    assert!(matches!(err, StoreError::Overtaken(_)), "{err:?}");
    let kept = found::<RegistrationRecord>(store, "t1", "dev-1")
        .await
        .expect("kept");
    assert_eq!(kept.operation_id, newer.operation_id);
    assert_eq!(kept.state.assigned_hub.as_deref(), Some("hub-b"));

    // The same operation may write again, and a newer one replaces it.
    put_at(store, "t1", newer.clone(), now(206)).await;
    let newest = record_of("dev-1", 300, "newest", "hub-a");
    let stored = put_at(store, "t1", newest.clone(), now(301)).await;
    assert_eq!(
        stored.state.created_date_time_utc,
        Some(now(205)),
        "created is kept"
    );
    let kept = found::<RegistrationRecord>(store, "t1", "dev-1")
        .await
        .expect("kept");
    assert_eq!(kept.operation_id, newest.operation_id);

    // Operation IDs without a start time are never refused.
    let mut legacy = record("dev-1", None);
    legacy.operation_id = "imported".into();
    put_at(store, "t1", legacy, now(302)).await;
    put_at(
        store,
        "t1",
        record_of("dev-1", 10, "late", "hub-a"),
        now(303),
    )
    .await;
    let kept = store
        .get::<RegistrationRecord>("t1", &IdKey::of("dev-1"))
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(kept.operation_id, op_id(10, "late"));
}
