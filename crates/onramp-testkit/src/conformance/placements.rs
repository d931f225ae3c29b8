//! Where devices live, and hub latencies.

use onramp_core::ports::{HubLatencySample, Placement, Store};
use onramp_model::RegistrationStatus;

use super::fixtures::{now, record};
use super::found;
use super::given_tenant;
use super::put_at;
use super::remove;
use onramp_core::ports::RegistrationRecord;

pub async fn placements_and_latencies(store: &dyn Store) {
    given_tenant(store).await;
    // Records carry the placement beside the state, also when a failed
    // re-registration leaves the state without a hub.
    let mut moved = record("mover", None);
    moved.placement = Some(Placement {
        hub: "HUB-B".into(),
        device_id: "mover".into(),
        initial_hub: "hub-a".into(),
    });
    moved.state.assigned_hub = Some("HUB-B".into());
    put_at(store, "t1", moved.clone(), now(90)).await;
    let on_a_before = store
        .count_devices_on_hub("t1", "hub-a")
        .await
        .expect("count");
    let mut failed = record("stuck", None);
    failed.state.status = RegistrationStatus::Failed;
    failed.state.assigned_hub = None;
    failed.state.error_code = Some(400214);
    put_at(store, "t1", failed.clone(), now(90)).await;
    let got = found::<RegistrationRecord>(store, "t1", "mover")
        .await
        .expect("found");
    assert_eq!(got.placement, moved.placement);
    assert_eq!(
        store
            .count_devices_on_hub("t1", "hub-b")
            .await
            .expect("count"),
        1
    );
    // "stuck" failed but its device still lives on hub-a.
    let on_a = store
        .count_devices_on_hub("t1", "Hub-A")
        .await
        .expect("count");
    assert_eq!(on_a, on_a_before + 1);
    assert_eq!(
        store
            .count_devices_on_hub("t2", "hub-b")
            .await
            .expect("count"),
        0,
        "other tenants' devices are not counted"
    );
    remove::<RegistrationRecord>(store, "t1", "mover").await;
    assert_eq!(
        store
            .count_devices_on_hub("t1", "hub-b")
            .await
            .expect("count"),
        0
    );

    let sample = |node: &str, hub: &str, ms: Option<f64>| HubLatencySample {
        node: node.into(),
        hub: hub.into(),
        latency_ms: ms,
        error: ms.is_none().then(|| "timed out".to_owned()),
        measured: now(100),
    };
    store
        .record_hub_latency(&sample("node-1", "hub-a", Some(1.5)))
        .await
        .expect("record");
    store
        .record_hub_latency(&sample("node-1", "HUB-A", Some(2.5)))
        .await
        .expect("record");
    store
        .record_hub_latency(&sample("node-2", "hub-a", None))
        .await
        .expect("record");
    let mut all = store.hub_latencies().await.expect("list");
    all.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(all.len(), 2, "one row per node and hub: {all:?}");
    assert_eq!(all[0].latency_ms, Some(2.5));
    assert_eq!(all[1].error.as_deref(), Some("timed out"));
}
