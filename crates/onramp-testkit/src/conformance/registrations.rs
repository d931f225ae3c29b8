//! Registration records, and the reads of one registration at once.

use onramp_core::ports::{
    GroupPage, Page, Precondition, RegistrationLookup, Store, StoreError, StoredRecord,
};

use super::fixtures::{enrollment, group, now, record, service};
use super::given_tenant;
use super::{absent, found, put_at, remove};
use onramp_core::ports::RegistrationRecord;
use onramp_core::ports::StoreExt;
use onramp_model::EnrollmentGroup;
use onramp_model::IdKey;
use onramp_model::IndividualEnrollment;

pub async fn registrations(store: &dyn Store) {
    given_tenant(store).await;
    let r = put_at(store, "t1", record("Reg-1", Some("Group-1")), now(70)).await;
    assert_eq!(r.state.created_date_time_utc, Some(now(70)));
    assert!(r.state.etag.is_some());
    let r2 = put_at(store, "t1", record("reg-1", Some("Group-1")), now(80)).await;
    assert_eq!(
        r2.state.created_date_time_utc,
        Some(now(70)),
        "created is kept"
    );
    assert_ne!(r.state.etag, r2.state.etag);
    let got = found::<RegistrationRecord>(store, "t1", "reg-1")
        .await
        .expect("found");
    assert_eq!(got.operation_id, "op-reg-1");
    assert_eq!(got.state.assigned_hub.as_deref(), Some("hub-a"));
    put_at(store, "t1", record("reg-2", Some("group-1")), now(80)).await;
    put_at(store, "t1", record("reg-3", None), now(80)).await;
    let of_group = store
        .registrations_of_group(&GroupPage::new(
            &IdKey::of("group-1"),
            Page::new("t1", None, 100),
        ))
        .await
        .expect("query");
    assert_eq!(of_group.len(), 2, "{of_group:?}");
    let page2 = store
        .registrations_of_group(&GroupPage::new(
            &IdKey::of("group-1"),
            Page::new("t1", Some(&IdKey::of("reg-1")), 100),
        ))
        .await
        .expect("query");
    assert_eq!(page2.len(), 1);
    assert!(matches!(
        store
            .delete::<RegistrationRecord>(
                "t1",
                &IdKey::of("reg-2"),
                Precondition::IfMatch("\"stale\"".into())
            )
            .await,
        Err(StoreError::PreconditionFailed(_))
    ));
    remove::<RegistrationRecord>(store, "t1", "reg-2").await;
    assert!(absent::<RegistrationRecord>(store, "t1", "reg-2").await);
}

/// The reads of one registration, asked for at once, answer what the
/// single reads answer.
pub async fn registration_inputs(store: &dyn Store) {
    given_tenant(store).await;
    // More groups than the page asked for below.
    for id in ["group-1", "group-2"] {
        put_at(store, "t1", group(id), now(50)).await;
    }
    let scope = service("t1", 1).id_scope.key();
    let unknown = service("nowhere", 77).id_scope.key();
    assert!(
        store
            .registration_inputs(&RegistrationLookup::new(
                &IdKey::of(&unknown),
                &IdKey::of("reg-1"),
                10
            ))
            .await
            .expect("read")
            .is_none()
    );
    put_at(store, "t1", enrollment("Inputs-1"), now(85)).await;
    put_at(store, "t1", record("Inputs-1", None), now(85)).await;

    // An individual enrollment: groups are not read.
    let got = store
        .registration_inputs(&RegistrationLookup::new(
            &IdKey::of(&scope),
            &IdKey::of("inputs-1"),
            10,
        ))
        .await
        .expect("read")
        .expect("service found");
    assert_eq!(got.service.name, "t1");
    same_as_single_read(store, "inputs-1", &got.enrollment).await;
    assert_eq!(
        got.enrollment
            .as_ref()
            .and_then(|e| e.attestation.as_ref())
            .and_then(|a| a.symmetric_key.as_ref())
            .and_then(|k| k.primary_key.as_ref())
            .map(|k| k.expose().to_owned()),
        Some("cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw==".to_owned()),
        "keys are unsealed"
    );
    assert_eq!(got.first_groups, None);
    same_as_single_read(store, "inputs-1", &got.previous).await;
    assert_eq!(
        got.linked_hubs,
        store.linked_hubs("t1").await.expect("list")
    );
    assert!(!got.linked_hubs.is_empty());

    // No individual enrollment: the first page of groups, at most the page asked for.
    let got = store
        .registration_inputs(&RegistrationLookup::new(
            &IdKey::of(&scope),
            &IdKey::of("device-of-a-group"),
            1,
        ))
        .await
        .expect("read")
        .expect("service found");
    assert_eq!(got.enrollment, None);
    assert_eq!(got.previous, None);
    let first = store
        .list::<EnrollmentGroup>("t1", None, 1)
        .await
        .expect("list");
    assert_eq!(first.len(), 1);
    assert_eq!(got.first_groups, Some(first));

    // What it wrote deletes cleanly.
    remove::<RegistrationRecord>(store, "t1", "inputs-1").await;
    remove::<IndividualEnrollment>(store, "t1", "inputs-1").await;
}

/// Asserts that `got`, read with the others at once, is there and is what
/// the single read of `id` in `t1` answers.
async fn same_as_single_read<T>(store: &dyn Store, id: &str, got: &Option<Box<T>>)
where
    T: StoredRecord + PartialEq + std::fmt::Debug,
{
    let single = found::<T>(store, "t1", id).await;
    assert_eq!(got.as_deref(), single.as_ref());
    assert!(got.is_some());
}
