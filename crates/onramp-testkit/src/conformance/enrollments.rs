//! Individual enrollments: ETags, conditions, paging, deletion.

use onramp_core::ports::{Precondition, Store, StoreError};

use super::absent;
use super::fixtures::{enrollment, now};
use super::{
    deleted, found, given_enrollment_pages, given_tenant, put_at, refused, refused_as_stale,
};
use onramp_core::ports::StoreExt;
use onramp_model::IdKey;
use onramp_model::IndividualEnrollment;

pub async fn enrollments(store: &dyn Store) {
    given_tenant(store).await;
    let e = put_at(store, "t1", enrollment("Dev-1"), now(10)).await;
    let tag1 = e.etag.clone().expect("etag");
    assert_eq!(e.created_date_time_utc, Some(now(10)));
    assert_eq!(e.last_updated_date_time_utc, Some(now(10)));
    let got = found::<IndividualEnrollment>(store, "t1", "dev-1")
        .await
        .expect("found");
    assert_eq!(got.registration_id, "Dev-1", "original spelling is kept");
    assert_eq!(
        got.attestation,
        enrollment("x").attestation,
        "keys survive storage"
    );
    assert_eq!(got.etag, Some(tag1.clone()));

    // Conditional update.
    let e2 = store
        .put(
            "t1",
            enrollment("dev-1"),
            Precondition::IfMatch(tag1.as_str().into()),
            now(20),
        )
        .await
        .expect("update with etag");
    let tag2 = e2.etag.clone().expect("etag");
    assert_ne!(tag1, tag2);
    assert_eq!(e2.created_date_time_utc, Some(now(10)), "created is kept");
    assert_eq!(e2.last_updated_date_time_utc, Some(now(20)));
    let stale = Precondition::IfMatch(tag1.as_str().into());
    refused_as_stale(store, "t1", enrollment("dev-1"), stale).await;
    assert!(matches!(
        refused(store, "t1", enrollment("dev-1"), Precondition::IfNotExists).await,
        StoreError::AlreadyExists(_)
    ));
    let unknown = Precondition::IfMatch("\"x\"".into());
    refused_as_stale(store, "t1", enrollment("dev-new"), unknown).await;
    store
        .put(
            "t1",
            enrollment("dev-1"),
            Precondition::IfMatch("*".into()),
            now(30),
        )
        .await
        .expect("wildcard");

    // Paging in key order.
    given_enrollment_pages(store).await;
    let mut seen = Vec::new();
    let mut after: Option<IdKey> = None;
    loop {
        let page = store
            .list::<IndividualEnrollment>("t1", after.as_ref(), 10)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().map(|e| IdKey::of(&e.registration_id));
        seen.extend(page.into_iter().map(|e| e.registration_id));
    }
    assert_eq!(seen.len(), 26);
    let mut sorted = seen.clone();
    sorted.sort_by_key(|s| s.to_ascii_lowercase());
    assert_eq!(seen, sorted);

    // Delete.
    let current = found::<IndividualEnrollment>(store, "t1", "dev-1")
        .await
        .expect("found");
    assert!(matches!(
        store
            .delete::<IndividualEnrollment>(
                "t1",
                &IdKey::of("dev-1"),
                Precondition::IfMatch(tag1.as_str().into())
            )
            .await,
        Err(StoreError::PreconditionFailed(_))
    ));
    store
        .delete::<IndividualEnrollment>(
            "t1",
            &IdKey::of("dev-1"),
            Precondition::IfMatch(current.etag.expect("etag").as_str().into()),
        )
        .await
        .expect("delete");
    assert!(absent::<IndividualEnrollment>(store, "t1", "dev-1").await);
    assert!(matches!(
        deleted::<IndividualEnrollment>(store, "t1", "dev-1").await,
        Err(StoreError::NotFound(_))
    ));
}
