//! Pending TPM challenges: one per registration ID, replaced by the next,
//! read back with their key, found in any case of the ID.

use onramp_core::ports::{Store, TpmChallenge};
use onramp_model::Secret;

use super::fixtures::now;
use super::given_tenant;
use super::{absent, count, found, put_at, remove};

pub async fn tpm_challenges(store: &dyn Store) {
    given_tenant(store).await;
    let challenge = TpmChallenge {
        registration_id: "Tpm-Device".into(),
        key: Secret::new("Y2hhbGxlbmdlLWtleS1vZi10aGlydHktdHdvLWJ5dGVzIQ=="),
        endorsement_key: "AToAAQALAAMAsg==".into(),
        storage_root_key: "AToAAQALAAMAcg==".into(),
        expires: now(900),
        spent_by: None,
        enrollment_group_id: None,
    };
    put_at(store, "t1", challenge.clone(), now(0)).await;
    let got = found::<TpmChallenge>(store, "t1", "tpm-device")
        .await
        .expect("found by its lower-case key");
    assert_eq!(got, challenge, "read back whole, key included");

    // The next challenge (or the spending registration) replaces it; the
    // TPM group that admitted the device is kept with it.
    let spent = TpmChallenge {
        spent_by: Some("op-1".into()),
        enrollment_group_id: Some("tpm-line".into()),
        ..challenge.clone()
    };
    put_at(store, "t1", spent.clone(), now(10)).await;
    assert_eq!(
        found::<TpmChallenge>(store, "t1", "TPM-DEVICE").await,
        Some(spent)
    );
    assert_eq!(count::<TpmChallenge>(store, "t1").await, 1);

    // Another service's device of the same ID is another challenge.
    assert!(absent::<TpmChallenge>(store, "t2", "tpm-device").await);
    remove::<TpmChallenge>(store, "t1", "Tpm-Device").await;
    assert!(absent::<TpmChallenge>(store, "t1", "tpm-device").await);
}
