//! Enrollment groups.

use onramp_core::ports::{Precondition, Store, StoreError};

use super::fixtures::{group, now};
use super::remove;
use super::{count, found, given_tenant, refused};
use onramp_core::ports::StoreExt;
use onramp_model::EnrollmentGroup;
use onramp_model::IdKey;

pub async fn groups(store: &dyn Store) {
    given_tenant(store).await;
    let g = store
        .put("t1", group("Group-1"), Precondition::None, now(50))
        .await
        .expect("group");
    assert!(g.etag.is_some());
    assert_eq!(
        found::<EnrollmentGroup>(store, "t1", "group-1")
            .await
            .map(|g| g.attestation),
        Some(group("x").attestation)
    );
    store
        .put("t1", group("group-2"), Precondition::None, now(50))
        .await
        .expect("g2");
    let all = store
        .list::<EnrollmentGroup>("t1", None, 100)
        .await
        .expect("list");
    assert_eq!(all.len(), 2);
    let after = store
        .list::<EnrollmentGroup>("t1", Some(&IdKey::of("group-1")), 100)
        .await
        .expect("after");
    assert_eq!(after.len(), 1);
    assert!(matches!(
        refused(
            store,
            "t1",
            group("group-1"),
            Precondition::IfMatch("\"stale\"".into())
        )
        .await,
        StoreError::PreconditionFailed(_)
    ));
    remove::<EnrollmentGroup>(store, "t1", "group-2").await;
    assert_eq!(count::<EnrollmentGroup>(store, "t1").await, 1);
}
