//! The service API's rules for bulk enrollment operations.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use onramp_core::admin::{Admin, EnrollmentResource};
use onramp_model::query::{BulkEnrollmentGroupOperation, BulkEnrollmentOperation, BulkMode};
use onramp_model::{EnrollmentGroup, ErrorCode, IndividualEnrollment, UtcTime};
use onramp_testkit::{ManualClock, conformance, default_service};

async fn admin() -> Admin {
    let (store, _) = default_service(0x1234).await;
    Admin::new(store, Arc::new(ManualClock::new(UtcTime::now())))
}

/// Asserts that bulk request `op` in `mode` is refused whole, as an invalid
/// argument whose message has `words`, and that `named`, its item with an ID,
/// was not stored.
async fn refused_whole<E: EnrollmentResource>(
    admin: &Admin,
    mode: BulkMode,
    op: E::BulkOperation,
    words: &str,
    named: &str,
) {
    let Err(e) = admin.bulk::<E>("default", op).await else {
        panic!("{mode:?}: a bulk request with an item without an ID was applied");
    };
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{mode:?}");
    assert!(e.message.contains(words), "{}", e.message);
    assert!(admin.get::<E>("default", named).await.is_err());
}

#[tokio::test]
async fn a_bulk_item_without_an_id_refuses_the_whole_request() {
    let admin = admin().await;
    for mode in [BulkMode::Create, BulkMode::Update, BulkMode::Delete] {
        let op = BulkEnrollmentOperation {
            mode,
            enrollments: vec![
                conformance::enrollment("bulk-1"),
                conformance::enrollment(""),
            ],
        };
        let words = "enrollments[1] has no registrationId";
        refused_whole::<IndividualEnrollment>(&admin, mode, op, words, "bulk-1").await;

        let op = BulkEnrollmentGroupOperation {
            mode,
            enrollment_groups: vec![conformance::group(" "), conformance::group("g-1")],
        };
        let words = "enrollmentGroups[0] has no enrollmentGroupId";
        refused_whole::<EnrollmentGroup>(&admin, mode, op, words, "g-1").await;
    }
    // Every item named: applied, and failures reported under their IDs.
    let op = BulkEnrollmentOperation {
        mode: BulkMode::Create,
        enrollments: vec![conformance::enrollment("bulk-1"), {
            let mut e = conformance::enrollment("bad id");
            e.registration_id = "bad id".into();
            e
        }],
    };
    let result = admin
        .bulk::<IndividualEnrollment>("default", op)
        .await
        .unwrap();
    assert!(!result.is_successful);
    assert_eq!(result.errors.len(), 1);
    assert_eq!(result.errors[0].registration_id, "bad id");
    assert!(
        admin
            .get::<IndividualEnrollment>("default", "bulk-1")
            .await
            .is_ok()
    );
}
