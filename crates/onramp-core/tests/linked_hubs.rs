//! Linking hubs to a provisioning service, and unlinking them.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use onramp_core::linked_hubs::{LinkChanges, LinkError, LinkedHubs, NewLink, Unlink};
use onramp_core::ports::Precondition;
use onramp_core::ports::StoreExt;
use onramp_core::ports::{Placement, RegistrationRecord, Store};
use onramp_model::{DeviceRegistrationState, RegistrationStatus};
use onramp_testkit::{MemoryStore, conformance};

const CS: &str = "HostName=hub-a.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5";

async fn hubs() -> (Arc<MemoryStore>, LinkedHubs) {
    let store = Arc::new(MemoryStore::new());
    store
        .create_service(&conformance::service("default", 0xA2B3), &[])
        .await
        .unwrap();
    (store.clone(), LinkedHubs::new(store))
}

fn new_link(weight: u32) -> NewLink<'static> {
    NewLink {
        connection_string: CS,
        region: "westeurope",
        weight,
        allocate: true,
        companion: false,
    }
}

/// Asserts that `result` is the refusal of a hub that is not linked.
fn refused_as_not_linked<T>(result: Result<T, LinkError>) {
    match result {
        Err(LinkError::NotLinked { .. }) => {}
        Err(err) => panic!("refused, but not as a hub that is not linked: {err}"),
        Ok(_) => panic!("a hub that is not linked was changed"),
    }
}

#[tokio::test]
async fn links_are_checked_before_they_are_written() {
    let (store, hubs) = hubs().await;
    let err = hubs.add("default", &new_link(0)).await.unwrap_err();
    assert!(err.to_string().contains("use 1 to 1000"), "{err}");
    assert!(store.linked_hubs("default").await.unwrap().is_empty());

    hubs.add("default", &new_link(2)).await.unwrap();
    for changes in [
        LinkChanges {
            weight: Some(1001),
            ..Default::default()
        },
        LinkChanges {
            region: Some(" ".into()),
            ..Default::default()
        },
    ] {
        let err = hubs
            .update("default", "HUB-A.example.net", changes)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Invalid(_)), "{err}");
    }
    let other = LinkChanges {
        connection_string: Some(CS.replace("hub-a", "hub-b")),
        ..Default::default()
    };
    let err = hubs
        .update("default", "hub-a.example.net", other)
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::OtherHub { .. }), "{err}");
    let stored = store.linked_hubs("default").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].allocation_weight, stored[0].location.as_str()),
        (2, "westeurope")
    );
    let unknown = hubs.update("default", "hub-z.example.net", LinkChanges::default());
    refused_as_not_linked(unknown.await);
}

#[tokio::test]
async fn a_hub_with_devices_is_unlinked_only_when_asked() {
    let (store, hubs) = hubs().await;
    let link = hubs.add("default", &new_link(1)).await.unwrap();
    let mut state = DeviceRegistrationState::new("dev-01", RegistrationStatus::Assigned);
    state.assigned_hub = Some(link.name.clone());
    state.device_id = Some("dev-01".into());
    let record = RegistrationRecord {
        state,
        operation_id: "1.0.x".into(),
        enrollment_group_id: None,
        placement: Some(Placement {
            hub: link.name.clone(),
            device_id: "dev-01".into(),
            initial_hub: link.name.clone(),
        }),
    };
    store
        .put(
            "default",
            record.clone(),
            Precondition::None,
            onramp_model::UtcTime::now(),
        )
        .await
        .unwrap();
    let err = hubs
        .unlink("default", &link.name, Unlink::IfEmpty)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LinkError::HoldsDevices { devices: 1, .. }),
        "{err}"
    );
    assert_eq!(store.linked_hubs("default").await.unwrap().len(), 1);
    hubs.unlink("default", &link.name, Unlink::EvenWithDevices)
        .await
        .unwrap();
    assert!(store.linked_hubs("default").await.unwrap().is_empty());
    let again = hubs.unlink("default", &link.name, Unlink::EvenWithDevices);
    refused_as_not_linked(again.await);
}

#[tokio::test]
async fn the_embedded_hub_keeps_its_settings_and_replaces_a_link_under_an_old_name() {
    let (store, hubs) = hubs().await;
    let old = CS.replace("hub-a.example.net", "localhost:8443");
    hubs.link_embedded("default", &old).await.unwrap();
    let current = CS.replace("hub-a.example.net", "localhost:9443");
    let link = hubs.link_embedded("default", &current).await.unwrap();
    hubs.update(
        "default",
        &link.name,
        LinkChanges {
            weight: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    hubs.link_embedded("default", &current).await.unwrap();
    let stored = store.linked_hubs("default").await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].name, "localhost:9443");
    assert_eq!(stored[0].allocation_weight, 3);
    assert!(stored[0].embedded && stored[0].companion);
}
