//! Telemetry as a contract: a running `onramp serve` is made to record
//! every metric README documents, and its `/metrics` must carry each with
//! the documented type, labels and `# HELP` text, and nothing undocumented.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{HubProcess, Server, WebhookReply, value_of, wait_for};
use reqwest::Method;
use serde_json::json;

/// One row of README's metrics table.
#[derive(Debug)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
    help: String,
}

/// README's metrics table, by metric name.
fn documented_metrics() -> BTreeMap<String, Documented> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let table = readme
        .split("<!-- metrics table: checked by crates/onramp/tests/telemetry.rs -->")
        .nth(1)
        .expect("README has the metrics table");
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let unquote = |s: &str| s.trim().trim_matches('`').to_owned();
    table
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|line| {
            let c = cells(line);
            assert_eq!(c.len(), 4, "a metrics row has four cells: {line}");
            let labels = c[2]
                .split(',')
                .map(unquote)
                .filter(|l| !l.is_empty())
                .collect();
            (
                unquote(&c[0]),
                Documented {
                    kind: c[1].clone(),
                    labels,
                    help: c[3].clone(),
                },
            )
        })
        .collect()
}

/// The label names of one Prometheus sample line, without `quantile`.
fn label_names(sample: &str) -> BTreeSet<String> {
    let Some((_, rest)) = sample.split_once('{') else {
        return BTreeSet::new();
    };
    let inside = &rest[..rest.rfind('}').unwrap()];
    inside
        .split("\",")
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, _)| name.trim().to_owned())
        .filter(|name| name != "quantile")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_served_with_its_type_labels_and_help() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        &temp.path().join("data"),
        "127.0.0.1:0",
        &[
            "--latency-probe-interval-ms",
            "100",
            "--webhook-retries",
            "1",
        ],
    );
    let embedded = server.embedded_hub().await.name;
    // A second hub for a device to move to, and a linked hub that never
    // answers its latency probes; neither takes devices by allocation.
    let hub_dir = temp.path().join("hub");
    common::share_ca(&server.data_dir, &hub_dir);
    let hub = HubProcess::start(&hub_dir, None);
    server.cli_ok(&[
        "linked-hub",
        "add",
        "--companion",
        "--no-allocation",
        "--connection-string",
        &hub.connection_string,
    ]);
    let dead = format!(
        "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWtleS1mb3ItbWV0cmljcy0zMmJ5dGVz",
        common::dead_port()
    );
    server.cli_ok(&[
        "linked-hub",
        "add",
        "--no-allocation",
        "--connection-string",
        &dead,
    ]);

    // A device registers on the embedded hub, connects and sends telemetry…
    let key = server
        .enroll(
            "meter-1",
            json!({"allocationPolicy": "static", "iotHubs": [embedded]}),
        )
        .await;
    server.cli_ok(&[
        "device",
        "run",
        "--registration-id",
        "meter-1",
        "--key",
        &key,
        "--messages",
        "2",
    ]);
    // …then moves to the other hub, which removes it from the embedded one.
    let (status, v) = server.call(&server.owner_connection_string().await, Method::PUT, "enrollments/meter-1?api-version=2021-10-01", Some(json!({
                "registrationId": "meter-1",
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
                "allocationPolicy": "static",
                "iotHubs": [hub.name()],
            }))).await;
    assert_eq!(status, 200, "{v}");
    let state = server.assigned("meter-1", &key, &[]);
    assert_eq!(state["substatus"], "deviceDataMigrated", "{state}");

    // A custom allocation webhook that is busy once, then answers.
    let busy = std::sync::atomic::AtomicBool::new(true);
    let answer = json!({"iotHubHostName": embedded}).to_string();
    let (url, _) = common::start_webhook(move |_| {
        if busy.swap(false, std::sync::atomic::Ordering::SeqCst) {
            WebhookReply::Answer(503, "warming up".to_owned())
        } else {
            WebhookReply::Answer(200, answer.clone())
        }
    });
    let group_key = server.enroll_custom_group("appliances", &url).await;
    let device_key = onramp_core::sas::derive_device_key(&group_key, "oven-1").unwrap();
    let state = server.assigned("oven-1", &device_key, &[]);
    assert_eq!(state["assignedHub"], embedded.as_str());

    // The latency probes have measured the live hubs and failed on the
    // dead one, and the device that ran has left the embedded hub.
    let scraped = wait_for(
        Duration::from_secs(30),
        "latency samples, a failed probe and no connected device in /metrics",
        || {
            let m = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(server.metrics())
            });
            (m.contains("onramp_hub_latency_seconds{")
                && m.contains("onramp_hub_probe_failures_total{")
                && value_of(&m, "onramp_hub_connected_devices") == Some(0.0))
            .then_some(m)
        },
    );

    let documented = documented_metrics();
    assert_eq!(documented.len(), 19, "{documented:?}");
    for (name, doc) in &documented {
        for line in [
            format!("# HELP {name} {}", doc.help),
            format!("# TYPE {name} {}", doc.kind),
        ] {
            assert!(scraped.lines().any(|l| l == line), "{line}\n{scraped}");
        }
        let samples: Vec<&str> = scraped
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                let series = l.split([' ', '{']).next().unwrap_or_default();
                series == name
                    || (doc.kind == "summary"
                        && [format!("{name}_sum"), format!("{name}_count")]
                            .iter()
                            .any(|s| s == series))
            })
            .collect();
        assert!(!samples.is_empty(), "no sample of {name}\n{scraped}");
        for sample in samples {
            assert_eq!(label_names(sample), doc.labels, "{sample}");
        }
    }
    // Nothing is served that README does not document.
    for line in scraped.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            documented.contains_key(name),
            "{name} is not in README's metrics table"
        );
    }

    // And the counts are the scenario's.
    let dead_hub = dead
        .trim_start_matches("HostName=")
        .split(';')
        .next()
        .unwrap();
    for (series, want) in [
        ("onramp_hub_messages_total".to_owned(), 2.0),
        ("onramp_webhook_retries_total".to_owned(), 1.0),
        (
            r#"onramp_hub_cleanups_total{service="default",outcome="removed"}"#.to_owned(),
            1.0,
        ),
        (
            format!(r#"onramp_device_assignments_total{{service="default",hub="{embedded}"}}"#),
            2.0,
        ),
    ] {
        assert_eq!(
            value_of(&scraped, &series),
            Some(want),
            "{series}\n{scraped}"
        );
    }
    assert!(
        value_of(
            &scraped,
            &format!(r#"onramp_hub_probe_failures_total{{hub="{dead_hub}"}}"#)
        )
        .is_some_and(|n| n >= 1.0),
        "{scraped}"
    );
}
