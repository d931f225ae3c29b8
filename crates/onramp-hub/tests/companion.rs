//! The hub adapter against a real companion hub over HTTPS.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;
use std::time::Duration;

use onramp_core::ports::{DeviceIdentity, HubError, HubRegistry, IdentityAuth, TwinSetup};
use onramp_core::tenant::LinkedHub;
use onramp_hub::{CompanionHub, HubClient};
use onramp_model::hub::AuthenticationType;
use onramp_model::{DeviceCapabilities, Secret};
use onramp_store::Sealer;
use serde_json::json;

struct Running {
    hub: Arc<CompanionHub>,
    client: HubClient,
    link: LinkedHub,
    ca_pem: String,
    _dir: tempfile::TempDir,
    _stop: onramp_net::ShutdownTrigger,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let pki = onramp_net::pki::load_or_create(
        &dir.path().join("tls"),
        &onramp_net::pki::default_host_names(),
    )
    .unwrap();
    let tls =
        onramp_net::tls::server_config(&pki.server_chain_pem, &pki.server_key_pem, &[b"http/1.1"])
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("localhost:{}", listener.local_addr().unwrap().port());
    let sealer = Arc::new(Sealer::load_or_create(&dir.path().join("keys")).unwrap());
    let hub = CompanionHub::open(&dir.path().join("hub.db"), &host, sealer)
        .await
        .unwrap();
    let (stop, shutdown) = onramp_net::Shutdown::new();
    let services = onramp_net::Services {
        http: hub.router(),
        mqtt: Some(hub.mqtt_app()),
        mqtt_limits: Default::default(),
        amqp: None,
    };
    tokio::spawn(onramp_net::serve(
        listener,
        Arc::new(tls),
        services,
        Default::default(),
        shutdown,
    ));
    let client = HubClient::new(
        onramp_net::tls::client_config(Some(&pki.ca_pem)).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let link = LinkedHub::from_connection_string(&hub.owner_connection_string(), "local", 1, true)
        .unwrap();
    Running {
        hub,
        client,
        link,
        ca_pem: pki.ca_pem.clone(),
        _dir: dir,
        _stop: stop,
    }
}

fn identity(id: &str, twin: TwinSetup) -> DeviceIdentity {
    DeviceIdentity {
        device_id: id.into(),
        auth: IdentityAuth::SymmetricKey {
            primary: Secret::new("cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw=="),
            secondary: Secret::new("c2Vjb25kYXJ5LWtleS1mb3ItdGVzdHMtMTI="),
        },
        capabilities: DeviceCapabilities { iot_edge: false },
        twin,
    }
}

#[tokio::test]
async fn registers_a_device_with_its_initial_twin_and_updates_it_later() {
    let r = start().await;
    let initial: onramp_model::InitialTwin = serde_json::from_value(
        json!({"tags": {"site": "lab"}, "properties": {"desired": {"rate": 5}}}),
    )
    .unwrap();
    r.client
        .register_device(
            &r.link,
            &identity("dev-1", TwinSetup::Initial(initial.clone())),
        )
        .await
        .unwrap();

    let device = r
        .client
        .get_device(&r.link, "dev-1")
        .await
        .unwrap()
        .unwrap();
    let auth = device.authentication.unwrap();
    assert_eq!(auth.kind, AuthenticationType::Sas);
    assert_eq!(
        auth.symmetric_key.unwrap().primary_key.unwrap().expose(),
        "cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw=="
    );
    let twin = r.client.get_twin(&r.link, "dev-1").await.unwrap().unwrap();
    assert_eq!(twin.tags.unwrap()["site"], "lab");
    let desired = twin.properties.unwrap().desired.unwrap();
    assert_eq!(desired["rate"], 5);
    assert_eq!(desired["$version"], 2);

    // Registering again with Keep leaves the twin; with Initial it resets it.
    r.client
        .register_device(&r.link, &identity("dev-1", TwinSetup::Keep))
        .await
        .unwrap();
    let twin = r.client.get_twin(&r.link, "dev-1").await.unwrap().unwrap();
    assert_eq!(twin.properties.unwrap().desired.unwrap()["rate"], 5);
    let other: onramp_model::InitialTwin =
        serde_json::from_value(json!({"properties": {"desired": {"mode": "x"}}})).unwrap();
    r.client
        .register_device(&r.link, &identity("dev-1", TwinSetup::Initial(other)))
        .await
        .unwrap();
    let twin = r.client.get_twin(&r.link, "dev-1").await.unwrap().unwrap();
    let desired = twin.properties.unwrap().desired.unwrap();
    assert!(
        desired.get("rate").is_none() && desired["mode"] == "x",
        "{desired:?}"
    );
    assert_eq!(twin.tags.unwrap_or_default().len(), 0);

    assert!(
        r.client
            .get_device(&r.link, "nobody")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        r.hub.store().device("DEV-1").await.unwrap().is_some(),
        "device IDs are case-insensitive"
    );
}

#[tokio::test]
async fn wrong_credentials_and_unreachable_hubs_are_told_apart() {
    let r = start().await;
    let mut wrong = r.link.clone();
    wrong.connection_string = Secret::new(format!(
        "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey=d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==",
        r.hub.host_name()
    ));
    let err = r
        .client
        .register_device(&wrong, &identity("d", TwinSetup::Keep))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Unauthorized(ref m) if m.contains("401")),
        "{err:?}"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut gone = r.link.clone();
    gone.connection_string = Secret::new(format!(
        "HostName=localhost:{closed_port};SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5LWtleS1rZXkta2V5LWtleQ=="
    ));
    let err = r
        .client
        .register_device(&gone, &identity("d", TwinSetup::Keep))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Unreachable(_)), "{err:?}");
    assert!(r.hub.store().device("d").await.unwrap().is_none());
}

/// A CA certificate (DER) of a fresh development PKI.
fn new_ca(dir: &std::path::Path) -> Vec<u8> {
    let pki = onramp_net::pki::load_or_create(dir, &onramp_net::pki::default_host_names()).unwrap();
    onramp_core::x509::decode(&pki.ca_pem).unwrap()
}

#[tokio::test]
async fn a_certificate_named_again_replaces_the_one_it_named() {
    let r = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (new_ca(&dir.path().join("a")), new_ca(&dir.path().join("b")));
    assert_ne!(first, second);
    r.hub.trust_ca("factory", first.clone()).await.unwrap();
    assert_eq!(r.hub.trusted_cas(), vec![first.clone()]);
    // Re-uploaded under its name: the old certificate is trusted no more.
    r.hub.trust_ca("factory", second.clone()).await.unwrap();
    assert_eq!(r.hub.trusted_cas(), vec![second.clone()]);
    r.hub.trust_ca("other", first.clone()).await.unwrap();
    assert!(r.hub.untrust_ca("factory").await.unwrap());
    assert_eq!(r.hub.trusted_cas(), vec![first]);
    assert!(!r.hub.untrust_ca("factory").await.unwrap());
}

#[tokio::test]
async fn the_client_hands_a_removed_ca_over_again_after_its_refresh() {
    let mut r = start().await;
    r.link.companion = true;
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let thumbprint = onramp_core::x509::thumbprint(&aws_lc_rs::digest::SHA256, &ca);
    let device = |id: &str| DeviceIdentity {
        auth: IdentityAuth::CertificateAuthority { anchor: ca.clone() },
        ..identity(id, TwinSetup::Keep)
    };
    r.client
        .register_device(&r.link, &device("ca-1"))
        .await
        .unwrap();
    assert_eq!(r.hub.trusted_cas(), vec![ca.clone()]);
    // An operator removes the CA from the hub: within the refresh, the client
    // takes it as still trusted.
    assert!(r.hub.untrust_ca(&thumbprint).await.unwrap());
    r.client
        .register_device(&r.link, &device("ca-2"))
        .await
        .unwrap();
    assert!(r.hub.trusted_cas().is_empty());
    // A client whose refresh has passed hands it over again.
    let client = HubClient::new(
        onramp_net::tls::client_config(Some(&r.ca_pem)).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap()
    .with_trust_refresh(Duration::ZERO);
    client
        .register_device(&r.link, &device("ca-3"))
        .await
        .unwrap();
    client
        .register_device(&r.link, &device("ca-4"))
        .await
        .unwrap();
    assert!(r.hub.untrust_ca(&thumbprint).await.unwrap());
    client
        .register_device(&r.link, &device("ca-5"))
        .await
        .unwrap();
    assert_eq!(r.hub.trusted_cas(), vec![ca]);
}
