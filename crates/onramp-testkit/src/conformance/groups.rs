//! Enrollment groups.

use onramp_core::ports::{Precondition, Store, StoreError};

use super::fixtures::{group, now};
use super::given_tenant;

pub async fn groups(store: &dyn Store) {
    given_tenant(store).await;
    let g = store
        .put_enrollment_group("t1", &group("Group-1"), Precondition::None, now(50))
        .await
        .expect("group");
    assert!(g.etag.is_some());
    assert_eq!(
        store
            .enrollment_group("t1", "group-1")
            .await
            .expect("get")
            .map(|g| g.attestation),
        Some(group("x").attestation)
    );
    store
        .put_enrollment_group("t1", &group("group-2"), Precondition::None, now(50))
        .await
        .expect("g2");
    let all = store
        .enrollment_groups("t1", None, 100)
        .await
        .expect("list");
    assert_eq!(all.len(), 2);
    let after = store
        .enrollment_groups("t1", Some("group-1"), 100)
        .await
        .expect("after");
    assert_eq!(after.len(), 1);
    assert!(matches!(
        store
            .put_enrollment_group(
                "t1",
                &group("group-1"),
                Precondition::IfMatch("\"stale\"".into()),
                now(60)
            )
            .await,
        Err(StoreError::PreconditionFailed(_))
    ));
    store
        .delete_enrollment_group("t1", "group-2", Precondition::None)
        .await
        .expect("delete");
    assert_eq!(
        store
            .enrollment_groups("t1", None, 100)
            .await
            .expect("list")
            .len(),
        1
    );
}
