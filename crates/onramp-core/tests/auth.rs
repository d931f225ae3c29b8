//! Service API authentication against the access policies of a store.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use onramp_core::auth::{ServiceRequest, authenticate};
use onramp_core::ports::Store;
use onramp_core::sas;
use onramp_model::ErrorCode;
use onramp_testkit::{MemoryStore, conformance};

const KEY: &str = "b3duZXI=";

#[tokio::test]
async fn a_token_covers_only_the_paths_under_its_resource() {
    let store = MemoryStore::new();
    store
        .create_service(
            &conformance::service("default", 0x1234),
            &[conformance::owner(KEY)],
        )
        .await
        .unwrap();
    let hosts = vec!["dps.example.net".to_owned()];
    let call = |resource: &str, path: &'static str| {
        let token = sas::sign(
            resource,
            KEY,
            2_000_000_000,
            Some("provisioningserviceowner"),
        )
        .unwrap();
        let (store, hosts) = (&store, &hosts);
        async move {
            authenticate(
                store,
                &ServiceRequest {
                    authorization: Some(&token),
                    host_names: hosts,
                    request_path: path,
                    now_unix: 1_900_000_000,
                    skew_seconds: 300,
                },
            )
            .await
        }
    };
    for (resource, path) in [
        ("dps.example.net", "/enrollments/dev-1"),
        ("DPS.EXAMPLE.NET:443", "/registrations/dev-1"),
        ("dps.example.net/enrollments", "/enrollments/dev-1"),
        ("dps.example.net/enrollments/dev-1", "/enrollments/dev-1"),
    ] {
        let caller = call(resource, path).await;
        assert!(caller.is_ok(), "{resource} on {path}: {caller:?}");
    }
    for (resource, path) in [
        ("dps.example.net/enrollmentGroups", "/enrollments/dev-1"),
        ("dps.example.net/devices", "/enrollments/dev-1"),
        ("dps.example.net/enrollments", "/enrollmentsX/dev-1"),
        ("dps.example.net/enrollments", "/enrollmentGroups/g-1"),
        ("other.example.net", "/enrollments/dev-1"),
    ] {
        let e = call(resource, path).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized, "{resource} on {path}");
        assert!(e.message.contains(resource), "{}", e.message);
    }
}
