//! JSON from outside: register bodies from devices, enrollments, groups,
//! bulk operations and query specifications from operators (decoded and
//! then checked by the service rules), and allocation answers from custom
//! webhooks (decoded and checked against the hubs offered). Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_core::ports::WebhookTarget;
use onramp_core::tenant::LinkedHub;
use onramp_core::{custom, validate};
use onramp_model::allocation::AllocationResponse;
use onramp_model::query::{BulkEnrollmentGroupOperation, BulkEnrollmentOperation, QuerySpecification};
use onramp_model::{DeviceRegistration, EnrollmentGroup, IndividualEnrollment};

fuzz_target!(|data: &[u8]| {
    let hub = LinkedHub::from_connection_string(
        "HostName=hub.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWtleS1mb3ItZnV6emluZy0zMmI=",
        "local",
        1,
        true,
    )
    .expect("a valid connection string");
    let hubs = [hub];
    let ctx = validate::Context {
        linked_hubs: &hubs,
        service_webhook: true,
        existing_attestation: None,
    };

    let _ = serde_json::from_slice::<DeviceRegistration>(data);
    if let Ok(e) = serde_json::from_slice::<IndividualEnrollment>(data) {
        let id = e.registration_id.clone();
        let _ = validate::enrollment(&id, e, &ctx);
    }
    if let Ok(g) = serde_json::from_slice::<EnrollmentGroup>(data) {
        let id = g.enrollment_group_id.clone();
        let _ = validate::enrollment(&id, g, &ctx);
    }
    let _ = serde_json::from_slice::<BulkEnrollmentOperation>(data);
    let _ = serde_json::from_slice::<BulkEnrollmentGroupOperation>(data);
    let _ = serde_json::from_slice::<QuerySpecification>(data);
    if let Ok(answer) = serde_json::from_slice::<AllocationResponse>(data) {
        let target = WebhookTarget {
            url: "https://fn.example.net/api/allocate?code=s3cret".into(),
            api_version: "2021-10-01".into(),
        };
        let offered: Vec<&LinkedHub> = hubs.iter().collect();
        let _ = custom::chosen_hub(&target, &answer, &offered);
    }
});
