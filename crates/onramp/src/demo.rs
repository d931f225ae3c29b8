//! `onramp demo`: the whole flow on one machine, in one command. Three
//! companion hubs and an Onramp server start in this process on free
//! loopback ports, with everything in a temporary directory; an enrollment
//! group is created; simulated devices provision (each over its own TLS
//! connection); the distribution over hubs, the throughput and one device's
//! twin are printed; then everything stops and the directory is removed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use onramp_core::admin::{Admin, Write};
use onramp_core::linked_hubs::{LinkedHubs, NewLink};
use onramp_core::ports::{RegistrationRecord, StoreExt, SystemClock};
use onramp_model::{AttestationMechanism, AttestationType, EnrollmentGroup, IdKey, InitialTwin};

use crate::bench::{self, Fleet, Load};
use crate::cli::{DemoArgs, DeviceTarget, HubServeArgs};
use crate::config::Config;
use crate::simulator::{self, Protocol};
use crate::{hub_cmd, serve};

const HUBS: usize = 3;
const GROUP: &str = "demo-factory";

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("onramp-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    println!(
        "Onramp demo — everything lives in {} and is removed at the end.",
        temp.path().display()
    );

    let mut hubs = Vec::new();
    for i in 0..HUBS {
        let hub = hub_cmd::start(&HubServeArgs {
            data_dir: temp.path().join(format!("hub-{i}")),
            listen: "127.0.0.1:0".into(),
            mqtt_listen: "off".into(),
            host: "localhost".into(),
            limits: Default::default(),
        })
        .await?;
        println!("  companion hub {}", hub.host);
        hubs.push(hub);
    }

    let mut config = Config {
        data_dir: temp.path().join("onramp"),
        ..Config::default()
    };
    config.https.listen = "127.0.0.1:0".into();
    config.mqtt.listen = "127.0.0.1:0".into();
    config.amqp.listen = "127.0.0.1:0".into();
    config.metrics.listen = "off".into();
    config.hub.embedded = false;
    config.tls.trust = hubs.iter().map(|h| h.ca_cert.clone()).collect();
    config.allocation.latency_probe_interval_ms = 60_000;
    let server = serve::start(&config, false).await?;
    let service = server.state.service.clone();
    println!(
        "  Onramp        {} (ID scope {})",
        server.state.endpoint, server.state.id_scope
    );

    let result = provision(&args, &server, &hubs, &service).await;

    server.stop.trigger();
    for hub in &hubs {
        hub.stop.trigger();
    }
    let stopped = async {
        server.finished().await;
        for hub in hubs {
            let _ = hub.serving.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .is_err()
    {
        eprintln!("some connections did not close within 10 s; leaving them behind");
    }
    let path = temp.path().to_owned();
    temp.close()
        .with_context(|| format!("removing {}", path.display()))?;
    println!("Stopped, and removed {}.", path.display());
    result
}

async fn provision(
    args: &DemoArgs,
    server: &serve::Running,
    hubs: &[hub_cmd::RunningHub],
    service: &str,
) -> anyhow::Result<()> {
    let store = server.store.clone();
    let linked_hubs = LinkedHubs::new(store.clone());
    for hub in hubs {
        linked_hubs
            .add(
                service,
                &NewLink {
                    connection_string: &hub.connection_string,
                    region: "local",
                    weight: 1,
                    allocate: true,
                    companion: true,
                },
            )
            .await?;
    }
    let admin = Admin::new(store.clone(), Arc::new(SystemClock));
    let twin: InitialTwin = serde_json::from_value(serde_json::json!({
        "tags": {"factory": "demo", "line": 1},
        "properties": {"desired": {"telemetryIntervalSeconds": 30, "firmware": "1.0.0"}},
    }))?;
    let group = admin
        .put(
            service,
            Write {
                id: GROUP,
                body: EnrollmentGroup {
                    enrollment_group_id: GROUP.into(),
                    attestation: Some(AttestationMechanism {
                        kind: AttestationType::SymmetricKey,
                        ..Default::default()
                    }),
                    initial_twin: Some(twin),
                    ..Default::default()
                },
                if_match: None,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the enrollment group: {}", e.message))?;
    let key = group
        .attestation
        .as_ref()
        .and_then(|a| a.symmetric_key.as_ref())
        .and_then(|k| k.primary_key.as_ref())
        .map(|k| k.expose().to_owned())
        .ok_or_else(|| anyhow::anyhow!("the group has no key"))?;
    println!("  enrollment group '{GROUP}' (symmetric key; devices derive theirs from it)\n");

    let protocol = Protocol::parse(&args.protocol)?;
    let target = DeviceTarget::default().resolve(Some(&server.state), protocol)?;
    let tls = simulator::fleet_tls(&server.client_tls, protocol);
    let load = Load {
        protocol,
        reuse: false,
        address: simulator::address(&target.endpoint, protocol),
        endpoint: target.endpoint,
        id_scope: target.id_scope,
        prefix: "demo-device".into(),
        fleet: Fleet::Group { key },
        tls,
        devices: args.devices,
        concurrency: args.concurrency.max(1),
        rate: 0.0,
        label: args.protocol.clone(),
        connections: "fresh".into(),
        retry_for: std::time::Duration::ZERO,
        poll_interval: std::time::Duration::from_secs(3),
        outcomes: None,
    };
    println!(
        "Provisioning {} devices over {}, {} at a time, each over a new TLS connection:",
        args.devices, args.protocol, load.concurrency
    );
    let summary = bench::drive(&load, false).await;
    println!(
        "\n{} of {} devices assigned in {:.1} s: {:.0} registrations/s (latency p50 {:.1} ms, p99 {:.1} ms)",
        summary.assigned,
        summary.devices,
        summary.seconds,
        summary.registrations_per_second,
        summary.latency_ms.p50,
        summary.latency_ms.p99
    );
    println!("Distribution over the hubs (evenly weighted hashing):");
    for (hub, n, percent) in summary.hub_shares() {
        println!("  {hub:<24} {n:>7} devices ({percent:.1}%)");
    }
    for (code, n) in &summary.errors {
        println!("  failed with {code}: {n}");
    }

    // One device, as its hub sees it.
    let (sample, _) = load
        .fleet
        .device(&load.prefix, 0)
        .map_err(anyhow::Error::msg)?;
    if let Some(record) = store
        .get::<RegistrationRecord>(service, &IdKey::of(&sample))
        .await?
        && let Some(hub_name) = record.state.assigned_hub.as_deref()
        && let Some(link) = store
            .linked_hubs(service)
            .await?
            .into_iter()
            .find(|h| h.is_named(hub_name))
    {
        let client = onramp_hub::HubClient::new(server.client_tls.clone(), Duration::from_secs(10))
            .map_err(anyhow::Error::msg)?;
        if let Some(twin) = client.get_twin(&link, &sample).await? {
            println!("\nThe twin of {sample} on {hub_name}:");
            println!("{}", serde_json::to_string_pretty(&twin)?);
        }
    }
    if summary.assigned == 0 {
        anyhow::bail!("no device was assigned");
    }
    Ok(())
}
