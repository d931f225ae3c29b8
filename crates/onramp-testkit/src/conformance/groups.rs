//! Enrollment groups.

use onramp_core::ports::{Precondition, Store};

use super::fixtures::{group, now};
use super::remove;
use super::{count, found, given_tenant, put_at, refused_as_stale};
use onramp_core::ports::StoreExt;
use onramp_model::EnrollmentGroup;
use onramp_model::IdKey;

pub async fn groups(store: &dyn Store) {
    given_tenant(store).await;
    let g = put_at(store, "t1", group("Group-1"), now(50)).await;
    assert!(g.etag.is_some());
    assert_eq!(
        found::<EnrollmentGroup>(store, "t1", "group-1")
            .await
            .map(|g| g.attestation),
        Some(group("x").attestation)
    );
    put_at(store, "t1", group("group-2"), now(50)).await;
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
    let stale = Precondition::IfMatch("\"stale\"".into());
    refused_as_stale(store, "t1", group("group-1"), stale).await;
    remove::<EnrollmentGroup>(store, "t1", "group-2").await;
    assert_eq!(count::<EnrollmentGroup>(store, "t1").await, 1);
}
