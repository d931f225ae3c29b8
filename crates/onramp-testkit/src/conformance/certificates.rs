//! CA certificates, and enrollments found by certificate thumbprint.

use onramp_core::ports::{Precondition, Store, StoreError};
use onramp_core::tenant::CaCertificate;
use onramp_model::{AttestationMechanism, AttestationType};

use super::fixtures::{enrollment, now};
use super::given_tenant;
use super::{absent, deleted, found, put_at, refused_as_stale, remove};
use onramp_core::ports::StoreExt;
use onramp_model::IndividualEnrollment;
use onramp_model::UtcTime;

pub async fn certificates(store: &dyn Store) {
    given_tenant(store).await;
    let ca = CaCertificate {
        name: "My-Root".into(),
        der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
        subject: "CN=My Root".into(),
        thumbprint: "AA".repeat(20),
        sha256_thumbprint: "BB".repeat(32),
        not_after: now(1000),
        is_verified: false,
        verification_code: Some("C0DE".into()),
        etag: None,
        created: now(100),
        updated: now(100),
    };
    let stored = store
        .put("t1", ca.clone(), Precondition::IfNotExists, UtcTime::now())
        .await
        .expect("put");
    let tag = stored.etag.clone().expect("etag");
    let got = found::<CaCertificate>(store, "t1", "my-root")
        .await
        .expect("found");
    assert_eq!(got.der, ca.der);
    assert_eq!(got.name, "My-Root");
    assert_eq!(got.verification_code.as_deref(), Some("C0DE"));
    let mut verified = got.clone();
    verified.is_verified = true;
    store
        .put(
            "t1",
            verified.clone(),
            Precondition::IfMatch(tag.as_str().into()),
            UtcTime::now(),
        )
        .await
        .expect("update");
    let stale = Precondition::IfMatch(tag.as_str().into());
    refused_as_stale(store, "t1", verified.clone(), stale).await;
    assert!(
        found::<CaCertificate>(store, "t1", "MY-ROOT")
            .await
            .expect("found")
            .is_verified
    );
    assert_eq!(store.ca_certificates("t1").await.expect("list").len(), 1);
    remove::<CaCertificate>(store, "t1", "my-root").await;
    assert!(absent::<CaCertificate>(store, "t1", "my-root").await);
    assert!(matches!(
        deleted::<CaCertificate>(store, "t1", "my-root").await,
        Err(StoreError::NotFound(_))
    ));

    // Enrollments are found by the thumbprint of their client certificate.
    let print = "CD".repeat(32);
    let mut revoked = enrollment("revoke-ica");
    revoked.attestation = Some(AttestationMechanism {
        kind: AttestationType::X509,
        x509: Some(onramp_model::X509Attestation {
            client_certificates: Some(onramp_model::X509Certificates {
                primary: Some(onramp_model::X509CertificateWithInfo {
                    certificate: None,
                    info: Some(onramp_model::X509CertificateInfo {
                        subject_name: "CN=ica".into(),
                        sha1_thumbprint: "EE".repeat(20),
                        sha256_thumbprint: print.clone(),
                        issuer_name: "CN=root".into(),
                        not_before_utc: now(0),
                        not_after_utc: now(1000),
                        serial_number: "01".into(),
                        version: 3,
                    }),
                }),
                secondary: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    put_at(store, "t1", revoked.clone(), now(110)).await;
    let found = store
        .enrollments_by_thumbprint("t1", &print.to_ascii_lowercase())
        .await
        .expect("by thumbprint");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].registration_id, "revoke-ica");
    assert!(
        store
            .enrollments_by_thumbprint("t2-absent", &print)
            .await
            .expect("other service")
            .is_empty()
    );
    put_at(store, "t1", enrollment("revoke-ica"), now(120)).await;
    assert!(
        store
            .enrollments_by_thumbprint("t1", &print)
            .await
            .expect("gone")
            .is_empty()
    );
    put_at(store, "t1", revoked.clone(), now(130)).await;
    remove::<IndividualEnrollment>(store, "t1", "revoke-ica").await;
    assert!(
        store
            .enrollments_by_thumbprint("t1", &print)
            .await
            .expect("deleted")
            .is_empty()
    );
}
