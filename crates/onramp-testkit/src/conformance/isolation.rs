//! Services do not see each other's data.

use onramp_core::ports::Store;
use onramp_core::tenant::OWNER_POLICY;

use super::absent;
use super::fixtures::{enrollment, now, owner, service};
use super::{count, given_enrollment_pages, given_tenant, put_at};
use onramp_core::ports::StoreExt;
use onramp_model::IndividualEnrollment;

pub async fn isolation(store: &dyn Store) {
    given_tenant(store).await;
    given_enrollment_pages(store).await;
    store
        .create_service(&service("t2", 2), &[owner("b3duZXIta2V5LTI=")])
        .await
        .expect("t2");
    assert!(absent::<IndividualEnrollment>(store, "t2", "page-00").await);
    assert_eq!(count::<IndividualEnrollment>(store, "t2").await, 0);
    assert!(store.linked_hubs("t2").await.expect("hubs").is_empty());
    put_at(store, "t2", enrollment("page-00"), now(90)).await;
    assert_eq!(count::<IndividualEnrollment>(store, "t2").await, 1);
    assert_eq!(count::<IndividualEnrollment>(store, "t1").await, 25);
    assert_eq!(owners(store).await, 2);
    assert!(store.delete_service("t2").await.expect("delete"));
    assert_eq!(count::<IndividualEnrollment>(store, "t2").await, 0);
    assert_eq!(owners(store).await, 1);
    assert_eq!(store.services().await.expect("list").len(), 1);
}

/// How many services have an owner policy.
async fn owners(store: &dyn Store) -> usize {
    store
        .policies_named(OWNER_POLICY)
        .await
        .expect("policies")
        .len()
}
