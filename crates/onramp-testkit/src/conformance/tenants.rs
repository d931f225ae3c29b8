//! Services, their policies and linked hubs.

use onramp_core::ports::{Store, StoreError};
use onramp_core::tenant::OWNER_POLICY;
use onramp_model::AllocationPolicy;

use super::deleted;
use super::fixtures::{hub, owner, service};
use super::refused;
use super::remove;
use crate::given;
use onramp_core::ports::Precondition;
use onramp_core::ports::StoreExt;
use onramp_core::tenant::LinkedHub;
use onramp_model::IdKey;

pub async fn tenants(store: &dyn Store) {
    let svc = service("t1", 1);
    store
        .create_service(&svc, &[owner("b3duZXIta2V5LTE=")])
        .await
        .expect("create");
    assert!(matches!(
        store.create_service(&svc, &[]).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(
        matches!(
            store
                .create_service(&service("t1-other-name", 1), &[])
                .await,
            Err(StoreError::AlreadyExists(_)),
        ),
        "ID scopes are unique"
    );
    assert_eq!(store.service("t1").await.expect("get"), Some(svc.clone()));
    assert_eq!(
        store
            .service_by_scope(&IdKey::of(&svc.id_scope.key()))
            .await
            .expect("by scope"),
        Some(svc.clone())
    );
    assert_eq!(
        store
            .service_by_scope(&IdKey::of("0ne99999999"))
            .await
            .expect("none"),
        None
    );
    let policies = store.policies("t1").await.expect("policies");
    assert_eq!(policies, vec![owner("b3duZXIta2V5LTE=")]);
    let named = store.policies_named(OWNER_POLICY).await.expect("named");
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].0, "t1");
    // A second policy comes and goes; names are case-sensitive.
    let mut reader = owner("cmVhZGVyLWtleQ==");
    reader.name = "reader".into();
    store.put_policy("t1", &reader).await.expect("put policy");
    assert_eq!(store.policies("t1").await.expect("policies").len(), 2);
    assert!(!store.delete_policy("t1", "Reader").await.expect("delete"));
    assert!(store.delete_policy("t1", "reader").await.expect("delete"));
    assert!(
        !store
            .delete_policy("t1", "reader")
            .await
            .expect("delete again")
    );
    assert_eq!(
        store.policies("t1").await.expect("policies"),
        vec![owner("b3duZXIta2V5LTE=")]
    );

    given(store, "t1", hub("Hub-A.example.net")).await;
    given(store, "t1", hub("hub-b.example.net")).await;
    let mut updated = hub("hub-a.example.net");
    updated.allocation_weight = 5;
    given(store, "t1", updated.clone()).await;
    let hubs = store.linked_hubs("t1").await.expect("hubs");
    assert_eq!(
        hubs.len(),
        2,
        "hub names are case-insensitive keys: {hubs:?}"
    );
    assert!(hubs.iter().any(|h| h.allocation_weight == 5));
    remove::<LinkedHub>(store, "t1", "HUB-B.example.net").await;
    assert!(matches!(
        deleted::<LinkedHub>(store, "t1", "hub-b.example.net").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        refused(store, "nope", hub("h"), Precondition::None).await,
        StoreError::NotFound(_)
    ));

    let mut changed = svc.clone();
    changed.allocation_policy = AllocationPolicy::Static;
    store.update_service(&changed).await.expect("update");
    assert_eq!(
        store
            .service("t1")
            .await
            .expect("get")
            .map(|s| s.allocation_policy),
        Some(AllocationPolicy::Static)
    );
    store.update_service(&svc).await.expect("restore");
}
