//! The service API's rules for bulk enrollment operations.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;

use onramp_core::admin::Admin;
use onramp_core::ports::Store;
use onramp_model::query::{BulkEnrollmentGroupOperation, BulkEnrollmentOperation, BulkMode};
use onramp_model::{EnrollmentGroup, ErrorCode, IndividualEnrollment, UtcTime};
use onramp_testkit::{ManualClock, MemoryStore, conformance};

async fn admin() -> Admin {
    let store = Arc::new(MemoryStore::new());
    store
        .create_service(
            &conformance::service("default", 0x1234),
            &[conformance::owner("b3duZXI=")],
        )
        .await
        .unwrap();
    Admin::new(store, Arc::new(ManualClock::new(UtcTime::now())))
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
        let e = admin
            .bulk::<IndividualEnrollment>("default", op)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{mode:?}");
        assert!(
            e.message.contains("enrollments[1] has no registrationId"),
            "{}",
            e.message
        );
        assert!(
            admin
                .get::<IndividualEnrollment>("default", "bulk-1")
                .await
                .is_err()
        );

        let op = BulkEnrollmentGroupOperation {
            mode,
            enrollment_groups: vec![conformance::group(" "), conformance::group("g-1")],
        };
        let e = admin
            .bulk::<EnrollmentGroup>("default", op)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{mode:?}");
        assert!(
            e.message
                .contains("enrollmentGroups[0] has no enrollmentGroupId"),
            "{}",
            e.message
        );
        assert!(
            admin
                .get::<EnrollmentGroup>("default", "g-1")
                .await
                .is_err()
        );
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
