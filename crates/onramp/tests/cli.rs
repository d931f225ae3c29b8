//! The operator's command line against a running server: one `--output`
//! switch for every command that prints records, and enrollments moved in
//! and out in JSON Lines and CSV.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use base64::Engine;
use common::Server;
use onramp_net::pki::dev_certs::{Issued, Validity};
use serde_json::{Value, json};

/// The lines of a command's table, split into cells (cells hold no
/// double spaces in these tests).
fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn every_command_that_prints_records_takes_one_output_switch() {
    let server = Server::start("127.0.0.1:0");
    let key = server
        .enroll("out-1", json!({"deviceId": "out-device"}))
        .await;
    server.assigned("out-1", &key, &[]);
    server.cli_json(&["group", "create", "out-g"]);
    let hub = server.embedded_hub().await.name;

    // Tables: a header, then a row per record, each column aligned.
    let listed = server.cli_ok(&["enrollment", "list", "--output", "table"]);
    let rows = table(&listed);
    assert_eq!(
        rows[0],
        [
            "REGISTRATION ID",
            "DEVICE ID",
            "ATTESTATION",
            "STATUS",
            "ALLOCATION",
            "HUBS",
            "ETAG",
            "UPDATED"
        ],
        "{listed}"
    );
    assert_eq!(
        rows[1][..4],
        ["out-1", "out-device", "symmetricKey", "enabled"]
    );
    let header = listed.lines().next().unwrap();
    let row = listed.lines().nth(1).unwrap();
    assert_eq!(
        header.find("ATTESTATION"),
        row.find("symmetricKey"),
        "{listed}"
    );

    let groups = table(&server.cli_ok(&["group", "list", "-o", "table"]));
    assert_eq!(groups[0][0], "GROUP ID");
    assert_eq!(groups[1][0], "out-g");
    let registrations = table(&server.cli_ok(&["registration", "show", "out-1", "-o", "table"]));
    assert!(
        registrations.contains(&vec!["status".to_owned(), "assigned".to_owned()]),
        "{registrations:?}"
    );
    assert!(
        registrations.contains(&vec!["assignedHub".to_owned(), hub.clone()]),
        "{registrations:?}"
    );
    let shown = table(&server.cli_ok(&["enrollment", "show", "out-1", "-o", "table"]));
    assert!(
        shown.contains(&vec![
            "attestation.type".to_owned(),
            "symmetricKey".to_owned()
        ]),
        "{shown:?}"
    );
    let policies = table(&server.cli_ok(&["policy", "list"]));
    assert_eq!(policies[0], ["NAME", "RIGHTS"]);
    let services = table(&server.cli_ok(&["service", "list"]));
    assert_eq!(
        services[0],
        ["NAME", "ID SCOPE", "ALLOCATION POLICY", "LINKED HUBS"]
    );
    assert_eq!(services[1][..2], ["default", server.id_scope().as_str()]);

    let temp = tempfile::tempdir().unwrap();
    let pem = temp.path().join("root.pem");
    let root = Issued::root("Listed Root", Validity::days(30)).unwrap();
    std::fs::write(&pem, root.cert_pem).unwrap();
    server.cli_ok(&["cert", "upload", "listed", "--file", pem.to_str().unwrap()]);
    let certificates = table(&server.cli_ok(&["cert", "list", "-o", "table"]));
    assert_eq!(certificates[0][..3], ["NAME", "SUBJECT", "VERIFIED"]);
    assert_eq!(certificates[1][0], "listed");
    assert!(
        certificates[1][1].contains("Listed Root"),
        "{certificates:?}"
    );

    // JSON: the service API's records whole, the deployment's as records.
    let listed = server.cli_json(&["enrollment", "list", "-o", "json"]);
    assert_eq!(listed[0]["attestation"]["type"], "symmetricKey");
    let hubs = server.cli_json(&["linked-hub", "list", "--output", "json"]);
    assert_eq!(hubs[0]["name"], hub.as_str());
    assert_eq!(hubs[0]["devices"], 1);
    let services = server.cli_json(&["service", "list", "-o", "json"]);
    assert_eq!(services[0]["idScope"], server.id_scope().as_str());
    let service = server.cli_json(&["service", "show", "--keys", "-o", "json"]);
    let owner = server.owner_connection_string().await;
    assert_eq!(
        service["policies"][0]["primaryConnectionString"],
        owner.as_str(),
        "{service}"
    );
    let companion = server.cli_json(&["hub", "show", "--keys", "-o", "json"]);
    assert_eq!(
        companion["hostName"],
        server.endpoint().as_str(),
        "{companion}"
    );
    assert!(
        common::text(&companion["policies"][0]["connectionString"]).starts_with("HostName="),
        "{companion}"
    );
    let limits = server.cli_json(&["limits", "-o", "json"]);
    assert!(limits.as_array().is_some_and(|l| !l.is_empty()), "{limits}");
    let keys = server.cli_json(&["keys", "list", "-o", "json"]);
    assert_eq!(keys[0]["status"], "active", "{keys}");

    // YAML.
    let yaml = server.cli_ok(&["enrollment", "show", "out-1", "--output", "yaml"]);
    assert!(yaml.contains("registrationId: out-1\n"), "{yaml}");
    assert!(
        yaml.contains("attestation:\n") && yaml.contains("\n  type: symmetricKey\n"),
        "{yaml}"
    );
    let yaml = server.cli_ok(&["registration", "list", "--group-id", "out-g", "-o", "yaml"]);
    assert_eq!(yaml.trim(), "[]", "no device of the group registered");
    let yaml = server.cli_ok(&["linked-hub", "show", &hub, "-o", "yaml"]);
    assert!(yaml.contains("kind: embedded"), "{yaml}");

    // An unknown format is refused, naming the ones there are.
    let out = server.cli(&["enrollment", "list", "--output", "xml"]);
    common::assert_failed_saying(&out, "table, json, yaml");
}

/// `onramp enrollment export --keys --file FILE`.
fn export_with_keys(server: &Server, file: &Path) {
    server.cli_ok(&[
        "enrollment",
        "export",
        "--keys",
        "--file",
        file.to_str().unwrap(),
    ]);
}

/// `onramp enrollment import FILE ARGS…`: whether it succeeded, and what
/// it said.
fn import(server: &Server, file: &Path, args: &[&str]) -> (bool, String) {
    let out = server.cli(&[&["enrollment", "import", file.to_str().unwrap()], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr)
}

/// A key of 32 bytes, different for each `n`.
fn key(n: u64, salt: u8) -> String {
    let mut bytes = [salt; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Individual enrollment `n` of a fleet, every member the service API
/// accepts from a client set, varied from one record to the next.
fn fleet_record(n: u64, hub: &str) -> Value {
    let mut record = json!({
        "registrationId": format!("fleet-{n:06}"),
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": key(n, 1), "secondaryKey": key(n, 2)},
        },
        "capabilities": {"iotEdge": n.is_multiple_of(3)},
        "initialTwin": {
            "tags": {"line": format!("line-{}", n % 17), "unit": n},
            "properties": {"desired": {"interval": n % 60}},
        },
        "provisioningStatus": if n.is_multiple_of(5) { "disabled" } else { "enabled" },
        "reprovisionPolicy": {"updateHubAssignment": n.is_multiple_of(2), "migrateDeviceData": n % 4 < 2},
    });
    if n % 2 == 1 {
        record["deviceId"] = format!("fleet-device-{n}").into();
    }
    match n % 4 {
        0 => {
            record["allocationPolicy"] = "hashed".into();
            record["iotHubs"] = json!([hub]);
        }
        1 => {
            record["allocationPolicy"] = "static".into();
            record["iotHubs"] = json!([hub]);
        }
        2 => {
            record["allocationPolicy"] = "custom".into();
            record["customAllocationDefinition"] = json!({
                "webhookUrl": format!("https://allocator.example/allocate?code=k{n}"),
                "apiVersion": "2021-10-01",
            });
        }
        _ => {}
    }
    record
}

/// What a record says that the client set: without the members the
/// service owns.
fn set_by_client(record: &Value) -> Value {
    let mut record = record.clone();
    for owned in [
        "etag",
        "createdDateTimeUtc",
        "lastUpdatedDateTimeUtc",
        "registrationState",
    ] {
        record.as_object_mut().unwrap().remove(owned);
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_enrollments_import_from_json_lines_and_export_whole() {
    round_trip(&Server::start("127.0.0.1:0"), 100_000).await;
}

/// The same on PostgreSQL, whose store takes a bulk call's writes over
/// several connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollments_import_and_export_whole_on_postgresql() {
    let Some(db) = onramp_testkit::postgres::TestDatabase::create().await else {
        return;
    };
    let server = Server::start_with(&["--store-url", db.url()]);
    round_trip(&server, 5_000).await;
}

/// Imports a fleet of `fleet` varied enrollments from JSON Lines, exports
/// them with their keys, finds every member as it went, and imports the
/// export again (every ID skipped).
async fn round_trip(server: &Server, fleet: u64) {
    let hub = server.embedded_hub().await.name;
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("fleet.jsonl");
    let records: Vec<Value> = (0..fleet).map(|n| fleet_record(n, &hub)).collect();
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&file, text).unwrap();

    // With its progress bar (drawn only on a terminal; here it stays quiet).
    let started = Instant::now();
    let (ok, stderr) = import(server, &file, &["--batch", "1000"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "imported {fleet} enrollments, skipped 0 that exist, rejected 0"
        )),
        "{stderr}"
    );
    let imported = started.elapsed();

    let started = Instant::now();
    let exported = temp.path().join("exported.jsonl");
    export_with_keys(server, &exported);
    let exported_in = started.elapsed();
    let mut back: Vec<Value> = std::fs::read_to_string(&exported)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    back.sort_by(|a, b| {
        a["registrationId"]
            .as_str()
            .cmp(&b["registrationId"].as_str())
    });
    assert_eq!(back.len(), records.len());
    for (sent, got) in records.iter().zip(&back) {
        assert!(
            got["etag"].is_string() && got["createdDateTimeUtc"].is_string(),
            "{got}"
        );
        assert_eq!(
            &set_by_client(got),
            sent,
            "every member comes back as it went"
        );
    }
    eprintln!(
        "{fleet} enrollments: imported in {imported:?}, exported with keys in {exported_in:?}"
    );

    // Imported again, nothing changes: every ID is skipped.
    let (ok, stderr) = import(server, &exported, &["--batch", "5000", "--quiet"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "imported 0 enrollments, skipped {fleet} that exist"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn csv_round_trips_and_refused_rows_are_reported_by_line_id_and_reason() {
    let server = Server::start("127.0.0.1:0");
    let twin = r#"{"tags":{"site":"north, \"B\""}}"#;
    for id in ["csv-1", "csv-2"] {
        server.cli_json(&["enrollment", "create", id, "--initial-twin", twin, "--edge"]);
    }
    server.cli_json(&["group", "create", "csv-g", "--allocation-policy", "hashed"]);
    let temp = tempfile::tempdir().unwrap();

    // Exported with keys to CSV (the format follows the extension), a
    // column per member.
    let file = temp.path().join("enrollments.csv");
    export_with_keys(&server, &file);
    let csv = std::fs::read_to_string(&file).unwrap();
    assert!(csv.starts_with("registrationId,"), "{csv}");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let before: Vec<Value> = ["csv-1", "csv-2"]
        .iter()
        .map(|id| set_by_client(&server.cli_json(&["enrollment", "show", id, "--keys"])))
        .collect();

    // Deleted and imported again from the CSV: the same records, keys included.
    for id in ["csv-1", "csv-2"] {
        server.cli_ok(&["enrollment", "delete", id]);
    }
    let (ok, stderr) = import(&server, &file, &["--quiet"]);
    assert!(ok, "{stderr}");
    for (id, was) in ["csv-1", "csv-2"].iter().zip(&before) {
        let now = set_by_client(&server.cli_json(&["enrollment", "show", id, "--keys"]));
        assert_eq!(&now, was);
    }

    // Groups alike, to standard output with --format.
    let groups = server.cli_ok(&["group", "export", "--format", "csv"]);
    assert!(
        groups.starts_with("enrollmentGroupId,") && groups.contains("csv-g"),
        "{groups}"
    );

    // A file with rows the service refuses: each is reported with its line,
    // its ID and the service's reason; the good rows are created all the same.
    let bad = temp.path().join("bad.csv");
    std::fs::write(
        &bad,
        "registrationId,attestation,provisioningStatus\n\
         csv-3,\"{\"\"type\"\":\"\"symmetricKey\"\"}\",enabled\n\
         bad id!,\"{\"\"type\"\":\"\"symmetricKey\"\"}\",enabled\n\
         csv-4,\"{\"\"type\"\":\"\"symmetricKey\"\"}\",sideways\n\
         ,\"{\"\"type\"\":\"\"symmetricKey\"\"}\",enabled\n\
         csv-5,\"{\"\"type\"\":\"\"symmetricKey\"\"}\",enabled\n\
         csv-1,\"{\"\"type\"\":\"\"symmetricKey\"\"}\",enabled\n",
    )
    .unwrap();
    let report = temp.path().join("refused.jsonl");
    let (ok, stderr) = import(
        &server,
        &bad,
        &["--report", report.to_str().unwrap(), "--quiet"],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("imported 2 enrollments, skipped 1 that exist, rejected 3"),
        "{stderr}"
    );
    let refused: Vec<Value> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = refused
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5], "{refused:?}");
    assert_eq!(refused[0]["id"], "bad id!");
    assert!(refused[0]["errorCode"].as_u64().is_some(), "{refused:?}");
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap()
            .contains("registration ID 'bad id!'"),
        "{refused:?}"
    );
    assert_eq!(refused[1]["id"], "csv-4");
    assert!(
        refused[1]["message"]
            .as_str()
            .unwrap()
            .contains("provisioningStatus"),
        "{refused:?}"
    );
    assert!(
        refused[2]["message"]
            .as_str()
            .unwrap()
            .contains("registrationId"),
        "{refused:?}"
    );
    for id in ["csv-3", "csv-5"] {
        assert_eq!(
            server.cli_json(&["enrollment", "show", id])["registrationId"],
            *id
        );
    }
}

#[tokio::test]
async fn enrollments_export_and_import_as_json_lines_resumably() {
    let server = Server::start("127.0.0.1:0");
    let twin = r#"{"tags":{"line":"7"}}"#;
    let mut keys = BTreeMap::new();
    for id in ["exp-1", "exp-2", "exp-3"] {
        let created = server.cli_json(&["enrollment", "create", id, "--initial-twin", twin]);
        keys.insert(
            id,
            common::text(&created["attestation"]["symmetricKey"]["primaryKey"]),
        );
    }
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("enrollments.jsonl");
    export_with_keys(&server, &file);
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported.lines().count(), 3, "{exported}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "exported keys are the owner's alone");
    }

    // One is lost; importing again brings it back, with its key and twin,
    // and skips the two that exist (an interrupted import just runs again).
    server.cli_ok(&["enrollment", "delete", "exp-2"]);
    let (ok, stderr) = import(&server, &file, &["--batch", "2", "--quiet"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("imported 1 enrollments, skipped 2 that exist, rejected 0"),
        "{stderr}"
    );
    let back = server.cli_json(&["enrollment", "show", "exp-2", "--keys"]);
    assert_eq!(
        back["attestation"]["symmetricKey"]["primaryKey"],
        keys["exp-2"].as_str()
    );
    assert_eq!(back["initialTwin"]["tags"]["line"], "7");

    // Lines that are not records, or records the service refuses, are
    // reported, with the line or the ID and the reason.
    let bad = temp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "not json\n{\"deviceId\":\"x\"}\n{\"registrationId\":\"bad id!\",\"attestation\":{\"type\":\"symmetricKey\"}}\n{\"registrationId\":\"exp-4\",\"attestation\":{\"type\":\"symmetricKey\"}}\n",
    )
    .unwrap();
    let (ok, _) = import(&server, &bad, &["--quiet"]);
    assert!(!ok);
    let report = std::fs::read_to_string(temp.path().join("bad.rejected.jsonl")).unwrap();
    assert_eq!(report.lines().count(), 3, "{report}");
    assert!(report.contains("bad id!"), "{report}");
    assert_eq!(
        server.cli_json(&["enrollment", "show", "exp-4"])["registrationId"],
        "exp-4"
    );
}

#[tokio::test]
async fn an_import_the_service_throttles_waits_as_it_is_told_and_finishes() {
    // 60 calls at once, then one a second.
    let server = Server::with_config("[throttle]\nservice_api_requests_per_minute = 60\n");
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("slow.jsonl");
    let lines: String = (0..63)
        .map(|n| format!("{{\"registrationId\":\"slow-{n}\",\"attestation\":{{\"type\":\"symmetricKey\"}}}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let (ok, stderr) = import(&server, &file, &["--batch", "1", "--quiet"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("HTTP 429): waiting 1 s"), "{stderr}");
    assert!(
        stderr.contains("imported 63 enrollments, skipped 0 that exist, rejected 0"),
        "{stderr}"
    );
}
