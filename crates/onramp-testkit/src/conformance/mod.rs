//! The store conformance suite: what every `Store` must do, case by case.
//!
//! Each case starts from an empty store and sets up what it needs, so that
//! one failure names itself and leaves the other cases' verdicts alone.
//! A backend runs them all with [`store_conformance!`](crate::store_conformance).

use std::sync::Arc;

use onramp_core::ports::{Precondition, Store, StoreError, StoreExt, StoredRecord};
use onramp_model::{IdKey, UtcTime};

mod certificates;
mod challenges;
mod diagnostics;
mod enrollments;
mod fixtures;
mod groups;
mod isolation;
mod operations;
mod placements;
mod registrations;
mod tenants;

pub use certificates::certificates;
pub use challenges::tpm_challenges;
pub use diagnostics::diagnostics;
pub use enrollments::enrollments;
pub use fixtures::{enrollment, group, hub, owner, service};
pub use groups::groups;
pub use isolation::isolation;
pub use operations::{newest_registration_wins, running_operations};
pub use placements::placements_and_latencies;
pub use registrations::{registration_inputs, registrations};
pub use tenants::tenants;

/// Expands to a module `store_conformance` of `#[tokio::test]`s, one per
/// case of the suite and named after it. The argument makes a fresh, empty
/// store for each case: an `async` closure returning the store in an `Arc`,
/// or a pair of it and whatever must outlive it (a temporary directory),
/// which is dropped after the store.
///
/// The calling crate needs `tokio` (with `macros` and `rt`) among its
/// dev-dependencies; the closure may use anything the calling module names.
///
/// ```
/// use std::sync::Arc;
///
/// use onramp_testkit::MemoryStore;
///
/// onramp_testkit::store_conformance!(async || Arc::new(MemoryStore::new()));
/// # fn main() {}
/// ```
///
/// `store_conformance!(each m)` instead hands the list of cases to the
/// caller's macro `m` (as `m!(tenants, enrollments, …,)`), for a store
/// that runs them in one test.
#[macro_export]
macro_rules! store_conformance {
    (each $cases:ident) => {
        $crate::store_conformance!(@list @each $cases;);
    };
    ($fresh:expr $(,)?) => {
        $crate::store_conformance!(@list @cases $fresh;);
    };
    // The one list of cases: a case missing from it runs nowhere.
    (@list $($head:tt)*) => {
        $crate::store_conformance!($($head)*
            tenants,
            enrollments,
            groups,
            registrations,
            registration_inputs,
            placements_and_latencies,
            certificates,
            tpm_challenges,
            isolation,
            running_operations,
            newest_registration_wins,
            diagnostics,
        );
    };
    (@each $cases:ident; $($case:ident,)+) => {
        $cases!($($case,)+);
    };
    (@cases $fresh:expr; $($case:ident,)+) => {
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[tokio::test]
                async fn $case() {
                    let fresh = $fresh;
                    let subject = fresh().await;
                    $crate::conformance::$case($crate::conformance::Subject::store(&subject)).await;
                }
            )+
        }
    };
}

/// A store under test, with whatever must live as long as it.
pub trait Subject {
    fn store(&self) -> &dyn Store;
}

impl<S: Store> Subject for Arc<S> {
    fn store(&self) -> &dyn Store {
        &**self
    }
}

impl Subject for Arc<dyn Store> {
    fn store(&self) -> &dyn Store {
        &**self
    }
}

/// The store and a guard: a tuple drops its fields in order, so the guard
/// outlives the store.
impl<S: Store, G> Subject for (Arc<S>, G) {
    fn store(&self) -> &dyn Store {
        &*self.0
    }
}

/// The record of kind `T` called `id` in `service`, if there is one.
async fn found<T: StoredRecord>(store: &dyn Store, service: &str, id: &str) -> Option<T> {
    store.get::<T>(service, &IdKey::of(id)).await.expect("get")
}

/// Whether `service` holds no record of kind `T` called `id`.
async fn absent<T: StoredRecord>(store: &dyn Store, service: &str, id: &str) -> bool {
    found::<T>(store, service, id).await.is_none()
}

/// How many records of kind `T` `service` holds.
async fn count<T: StoredRecord>(store: &dyn Store, service: &str) -> usize {
    store
        .list::<T>(service, None, usize::MAX)
        .await
        .expect("list")
        .len()
}

/// Asserts that `condition` refuses writing `record` to `service` because
/// its precondition failed.
async fn refused_as_stale<T: StoredRecord>(
    store: &dyn Store,
    service: &str,
    record: T,
    condition: Precondition,
) {
    let err = refused(store, service, record, condition).await;
    assert!(matches!(err, StoreError::PreconditionFailed(_)), "{err:?}");
}

/// The error of a write that `condition` must refuse.
async fn refused<T: StoredRecord>(
    store: &dyn Store,
    service: &str,
    record: T,
    condition: Precondition,
) -> StoreError {
    match store.put(service, record, condition, UtcTime::now()).await {
        Ok(_) => panic!("a write that had to be refused was stored"),
        Err(e) => e,
    }
}

/// Deletes the record of kind `T` called `id` unconditionally.
async fn deleted<T: StoredRecord>(
    store: &dyn Store,
    service: &str,
    id: &str,
) -> Result<(), StoreError> {
    store
        .delete::<T>(service, &IdKey::of(id), Precondition::None)
        .await
}

/// Deletes the record of kind `T` called `id`, which must be there.
async fn remove<T: StoredRecord>(store: &dyn Store, service: &str, id: &str) {
    deleted::<T>(store, service, id).await.expect("delete");
}

/// Writes `record` unconditionally at the time `at`; returns it as stored.
async fn put_at<T: StoredRecord>(store: &dyn Store, service: &str, record: T, at: UtcTime) -> T {
    store
        .put(service, record, Precondition::None, at)
        .await
        .expect("put")
}

/// Service `t1` (ID scope 1) with its owner policy and one linked hub,
/// `hub-a.example.net`, much as `tenants` leaves a store.
async fn given_tenant(store: &dyn Store) {
    let seeded = async {
        store
            .create_service(&service("t1", 1), &[owner("b3duZXIta2V5LTE=")])
            .await?;
        store
            .put(
                "t1",
                hub("hub-a.example.net"),
                Precondition::None,
                UtcTime::now(),
            )
            .await
    };
    seeded.await.expect("given: service t1 and hub-a");
}

/// Enrollments `page-00` to `page-24` in `t1`.
async fn given_enrollment_pages(store: &dyn Store) {
    for i in 0..25 {
        store
            .put(
                "t1",
                (enrollment(&format!("page-{i:02}"))).clone(),
                Precondition::None,
                fixtures::now(40),
            )
            .await
            .expect("page item");
    }
}
