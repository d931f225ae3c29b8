//! The unmodified Azure IoT SDKs (Node and Python) against `onramp serve`.
//!
//! The SDKs' transports insist on ports 443 (HTTPS, WebSockets), 8883
//! (MQTT) and 5671 (AMQP), so these tests bind them on 127.0.0.1 (root or
//! CAP_NET_BIND_SERVICE) and take turns. The SDK packages are installed by
//! `scripts/test` into tests/interop/node and tests/interop/python.
//!
//! With `ONRAMP_TEST_STORE=postgres` every server keeps its data in a
//! PostgreSQL database of its own (see `common::Server`); `scripts/test`
//! runs the suite that way too.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Server;
use onramp_core::sas;
use onramp_model::hub::AuthenticationType;
use serde_json::{Value, json};

/// Tests that bind port 443 take turns.
static PORT_443: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A well-formed key that no enrollment has.
const WRONG_KEY: &str = "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==";

/// Asserts an SDK script's output says it provisioned `id` (over `how`) to
/// the embedded hub, `localhost`, under its registration ID.
fn assert_provisioned(out: &Value, id: &str, how: &str) {
    assert_eq!(out["ok"], true, "{id} over {how}: {out}");
    assert_eq!(out["result"]["assignedHub"], "localhost", "{out}");
    assert_eq!(out["result"]["deviceId"], id, "{out}");
}

fn node_dir() -> Option<PathBuf> {
    common::interop_dir(
        "tests/interop/node",
        "node_modules/azure-iot-provisioning-device",
        "the Node SDKs",
    )
}

/// Runs a Node script; returns its last stdout line as JSON.
fn node(dir: &PathBuf, server: &Server, args: &[&str]) -> Value {
    let out = Command::new("node")
        .current_dir(dir)
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", server.ca_path())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "node {args:?} printed no JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs a Node provisioning script against the server's ID scope:
/// `{script}.js localhost {idScope} {id} {credential…}`.
fn provision(
    dir: &PathBuf,
    server: &Server,
    script: &str,
    id: &str,
    credential: &str,
    more: &[&str],
) -> Value {
    let script = format!("{script}.js");
    let scope = server.id_scope();
    let args = [
        &[script.as_str(), "localhost", &scope, id, credential][..],
        more,
    ]
    .concat();
    node(dir, server, &args)
}

/// Runs a Python SDK script against the server's ID scope and CA:
/// `{script} localhost {idScope} {args…} {ca}`; returns its last stdout
/// line as JSON.
fn python_sdk(dir: &Path, server: &Server, script: &str, args: &[&str]) -> Value {
    let out = Command::new(dir.join(".venv/bin/python"))
        .current_dir(dir)
        .args([script, "localhost", &server.id_scope()])
        .args(args)
        .arg(server.ca_path())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "{script} {args:?} printed no JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn node_sdks_provision_devices_and_manage_enrollments() {
    let Some(dir) = node_dir() else { return };
    let (_port, server) = start_on_sdk_ports().await;
    assert_eq!(server.endpoint(), "localhost");
    let cs = server.owner_connection_string().await;

    // The service SDK creates the enrollments (the service generates the keys).
    let setup = node(&dir, &server, &["service_sdk.js", "setup", &cs]);
    assert_eq!(setup["ok"], true, "{setup}");
    let keys = &setup["result"];
    let key = |k: &str| common::text(&keys[k]);

    // (a) an individual enrollment, (b) two devices of one group with derived keys.
    let mut devices = vec![(
        "node-ind-1".to_owned(),
        key("individualKey"),
        key("individualSecondaryKey"),
        "lab-1",
        5,
    )];
    for id in ["node-grp-dev-1", "node-grp-dev-2"] {
        devices.push((
            id.to_owned(),
            sas::derive_device_key(&key("groupKey"), id).unwrap(),
            sas::derive_device_key(&key("groupSecondaryKey"), id).unwrap(),
            "line-7",
            30,
        ));
    }
    let hub = server.embedded_hub().await;
    let hub_client = server.hub_client();
    for (id, primary, secondary, site, rate) in &devices {
        let out = provision(
            &dir,
            &server,
            "provision_http",
            id,
            primary,
            &[r#"{"modelId":"dtmi:onramp:test;1"}"#],
        );
        assert_provisioned(&out, id, "HTTPS");

        // The hub's REST API shows the device with the right keys and its initial twin.
        let device = hub_client
            .get_device(&hub, id)
            .await
            .unwrap()
            .expect("device in the hub");
        let auth = device.authentication.unwrap();
        assert_eq!(auth.kind, AuthenticationType::Sas);
        let hub_keys = auth.symmetric_key.unwrap();
        assert_eq!(hub_keys.primary_key.unwrap().expose(), primary);
        assert_eq!(hub_keys.secondary_key.unwrap().expose(), secondary);
        let twin = hub_client.get_twin(&hub, id).await.unwrap().expect("twin");
        assert_eq!(twin.tags.unwrap()["site"], *site);
        let desired = twin.properties.unwrap().desired.unwrap();
        assert_eq!(desired["telemetryRate"], *rate);
        assert_eq!(desired["nested"]["mode"], "eco");
    }

    // A wrong key is refused with 401 and the SDK reports it.
    let out = provision(
        &dir,
        &server,
        "provision_http",
        "node-ind-1",
        WRONG_KEY,
        &[],
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["error"]["name"], "UnauthorizedError", "{out}");

    // The service SDK: create, read, update with ETags, stale ETags refused, paging, bulk, delete.
    let manage = node(&dir, &server, &["service_sdk.js", "manage", &cs]);
    assert_eq!(manage["ok"], true, "{manage}");
    assert_eq!(manage["result"]["staleEnrollmentError"], "InvalidEtagError");
    assert!(manage["result"]["enrollmentPages"].as_u64().unwrap() >= 3);

    // Registration states of the group, paged one by one, and a delete.
    let regs = node(
        &dir,
        &server,
        &["service_sdk.js", "registrations", &cs, "node-grp-1"],
    );
    assert_eq!(regs["ok"], true, "{regs}");
    assert_eq!(
        regs["result"]["registrations"].as_array().unwrap().len(),
        2,
        "{regs}"
    );
}

/// `onramp serve` on the ports the SDKs insist on, which the test holds
/// until it drops the guard.
async fn start_on_sdk_ports() -> (tokio::sync::MutexGuard<'static, ()>, Server) {
    start_on_sdk_ports_with("").await
}

/// [`start_on_sdk_ports`] with `config` as the configuration file.
async fn start_on_sdk_ports_with(config: &str) -> (tokio::sync::MutexGuard<'static, ()>, Server) {
    let port = PORT_443.lock().await;
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let config_file = temp.path().join("onramp.toml");
    std::fs::write(&config_file, config).unwrap();
    let args = vec![
        "--mqtt-listen",
        "127.0.0.1:8883",
        "--amqp-listen",
        "127.0.0.1:5671",
        "--config",
        config_file.to_str().unwrap(),
    ];
    let mut server = Server::start_in(&dir, "127.0.0.1:443", &args);
    server.keep(temp);
    (port, server)
}

fn python_dir() -> Option<PathBuf> {
    common::interop_dir("tests/interop/python", ".venv/bin/python", "the Python SDK")
}

/// A script that reports its progress as JSON lines on stdout.
struct Script {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    what: String,
}

impl Script {
    fn start(mut command: tokio::process::Command, what: &str) -> Script {
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        Script {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
            what: what.to_owned(),
        }
    }

    /// The next JSON line, within 60 s.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no output within 60 s", self.what))
            .unwrap();
        let Some(line) = line else {
            let out = self.child.wait_with_output_ref().await;
            panic!("{}: ended without output; stderr: {out}", self.what);
        };
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("{}: not JSON: {line}", self.what))
    }

    async fn stage(&mut self, name: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["stage"], name, "{}: {v}", self.what);
        v
    }
}

trait WaitOutput {
    async fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOutput for tokio::process::Child {
    async fn wait_with_output_ref(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut err = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut err).await;
        }
        err
    }
}

/// The initial twin every enrollment of these tests carries.
fn initial_twin() -> Value {
    serde_json::json!({"tags": {"site": "lab-3"}, "properties": {"desired": {"telemetryRate": 5, "mode": {"eco": true}}}})
}

/// An individual enrollment and a group, both with the initial twin; the
/// devices to provision: the individual over MQTT and over MQTT/WebSockets,
/// and a device of the group (`{unit}-1`, `{unit}-2`) over each.
async fn mqtt_devices(
    server: &Server,
    individual: &str,
    group: &str,
    unit: &str,
) -> [(String, String, &'static str); 4] {
    let twin = serde_json::json!({"initialTwin": initial_twin()});
    let individual_key = server.enroll(individual, twin.clone()).await;
    let group_key = server.enroll_group(group, twin).await;
    let unit = |n: u32| {
        let id = format!("{unit}-{n}");
        let key = sas::derive_device_key(&group_key, &id).unwrap();
        (id, key)
    };
    let ((unit_1, key_1), (unit_2, key_2)) = (unit(1), unit(2));
    [
        (individual.to_owned(), individual_key.clone(), "mqtt"),
        (individual.to_owned(), individual_key, "ws"),
        (unit_1, key_1, "mqtt"),
        (unit_2, key_2, "ws"),
    ]
}

fn without_version(mut desired: Value) -> Value {
    if let Some(map) = desired.as_object_mut() {
        map.retain(|k, _| !k.starts_with('$'));
    }
    desired
}

/// A device script on its hub: it first sees the enrollment's initial twin
/// and says `ready`; then a desired-property change through the hub's REST
/// API must reach the device, and its telemetry and reported properties must
/// be visible through the hub.
async fn hub_scenario(
    server: &Server,
    command: tokio::process::Command,
    transport: &str,
    device_id: &str,
    sdk: &str,
) {
    let earlier = server.hub_messages(device_id).len();
    let hub = server.embedded_hub().await;
    let hub_client = server.hub_client();
    // On its first visit the device finds its enrollment's initial twin;
    // later, what the last visit's updates left.
    let want_desired = if earlier == 0 {
        initial_twin()["properties"]["desired"].clone()
    } else {
        let twin = hub_client.get_twin(&hub, device_id).await.unwrap().unwrap();
        serde_json::to_value(twin.properties.unwrap().desired.unwrap()).unwrap()
    };
    let mut script = Script::start(command, &format!("{sdk} hub device over {transport}"));
    let twin = script.stage("twin").await;
    assert_eq!(
        without_version(twin["desired"].clone()),
        without_version(want_desired),
        "{twin}"
    );
    script.stage("ready").await;
    let hub_cs = hub.connection_string.expose().to_owned();
    // The SDKs subscribe to desired-property updates in the background (IoT
    // Hub only pushes to subscribed devices), so an update made before the
    // subscription lands is not pushed. Update again each second until one arrives.
    let mut sent = std::collections::HashMap::new();
    let desired = 'update: {
        for rate in 10..40 {
            let (status, twin) = server
                .call(
                    &hub_cs,
                    reqwest::Method::PATCH,
                    &format!("twins/{device_id}?api-version=2021-04-12"),
                    Some(serde_json::json!({"properties": {"desired": {"telemetryRate": rate}}})),
                )
                .await;
            assert_eq!(status, 200, "{twin}");
            sent.insert(rate, twin["properties"]["desired"]["$version"].clone());
            if let Ok(line) =
                tokio::time::timeout(std::time::Duration::from_secs(1), script.next()).await
            {
                break 'update line;
            }
        }
        panic!(
            "{}: no desired-property update reached the device",
            script.what
        );
    };
    assert_eq!(desired["stage"], "desired", "{desired}");
    let rate = desired["patch"]["telemetryRate"]
        .as_i64()
        .unwrap_or_else(|| panic!("{desired}"));
    assert_eq!(
        desired["patch"]["$version"], sent[&rate],
        "the patch carries the version of the update: {desired}"
    );

    // Reported properties through the REST API.
    let twin = hub_client.get_twin(&hub, device_id).await.unwrap().unwrap();
    let reported = twin.properties.unwrap().reported.unwrap();
    assert_eq!(
        reported["firmware"],
        format!("{sdk}-1.0").as_str(),
        "{reported:?}"
    );
    assert_eq!(reported["telemetry"]["sent"], 3);

    // Telemetry stored and counted by the hub: three more messages.
    let messages = server.hub_messages(device_id);
    assert_eq!(messages.len(), earlier + 3, "{messages:?}");
    for (i, m) in messages[earlier..].iter().enumerate() {
        let body: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["seq"], i);
        assert_eq!(body["sdk"], sdk);
        assert_eq!(
            m["properties"]["source"],
            format!("{sdk}-sdk").as_str(),
            "{m}"
        );
    }
}

#[tokio::test]
async fn node_sdks_provision_over_mqtt_and_use_the_hub() {
    let Some(dir) = node_dir() else { return };
    let (_port, server) = start_on_sdk_ports().await;
    let devices = mqtt_devices(&server, "node-mqtt-ind", "node-mqtt-grp", "node-grp-unit").await;
    for (id, key, transport) in &devices {
        let out = provision(&dir, &server, "provision_mqtt", id, key, &[transport]);
        assert_provisioned(&out, id, transport);
    }

    // A wrong key is refused at CONNECT.
    let out = provision(
        &dir,
        &server,
        "provision_mqtt",
        "node-mqtt-ind",
        WRONG_KEY,
        &["mqtt"],
    );
    assert_eq!(out["ok"], false, "{out}");
    // CONNACK "not authorized" (MQTT return code 5), not any other failure.
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Not authorized")),
        "{out}"
    );

    // The devices on their hub, over MQTT and over MQTT/WebSockets: twin,
    // telemetry, reported properties, desired updates.
    for (id, key, transport) in [&devices[0], &devices[3]] {
        let mut command = tokio::process::Command::new("node");
        command
            .current_dir(&dir)
            .args(["hub_device.js", "localhost", id, key, transport])
            .env("NODE_EXTRA_CA_CERTS", server.ca_path());
        hub_scenario(&server, command, transport, id, "node").await;
    }
}

/// The Node SDK provisions over `transport` (`amqp` or `ws`): a device of an
/// individual enrollment and one of a group, each assigned to the embedded
/// hub under its registration ID; a wrong key is refused by SASL. Then the
/// individual device uses its hub over AMQP (or AMQP over WebSockets).
async fn amqp_provisioning(transport: &str) {
    let Some(dir) = common::interop_dir(
        "tests/interop/node",
        "node_modules/azure-iot-provisioning-device-amqp",
        "the Node SDK's AMQP transport",
    ) else {
        return;
    };
    let (_port, server) = start_on_sdk_ports().await;
    let individual = format!("node-amqp-{transport}-ind");
    let twin = serde_json::json!({"initialTwin": initial_twin()});
    let individual_key = server.enroll(&individual, twin.clone()).await;
    let group_key = server
        .enroll_group(&format!("node-amqp-{transport}-grp"), twin)
        .await;
    let unit = format!("node-amqp-{transport}-unit-1");
    let unit_key = sas::derive_device_key(&group_key, &unit).unwrap();
    for (id, key) in [(&individual, &individual_key), (&unit, &unit_key)] {
        let out = provision(&dir, &server, "provision_amqp", id, key, &[transport]);
        assert_provisioned(&out, id, &format!("AMQP ({transport})"));
    }
    let out = provision(
        &dir,
        &server,
        "provision_amqp",
        &individual,
        WRONG_KEY,
        &[transport],
    );
    assert_eq!(
        out["ok"], false,
        "a wrong key over AMQP ({transport}): {out}"
    );

    // The individual device on its hub over the same transport
    // (azure-iot-device-amqp): twin, telemetry, reported, desired.
    let hub_transport = if transport == "ws" { "amqpws" } else { "amqp" };
    let mut command = tokio::process::Command::new("node");
    command
        .current_dir(&dir)
        .args([
            "hub_device.js",
            "localhost",
            &individual,
            &individual_key,
            hub_transport,
        ])
        .env("NODE_EXTRA_CA_CERTS", server.ca_path());
    hub_scenario(&server, command, hub_transport, &individual, "node").await;
}

#[tokio::test]
async fn node_sdk_provisions_over_amqp() {
    amqp_provisioning("amqp").await;
}

#[tokio::test]
async fn node_sdk_provisions_over_amqp_websockets() {
    amqp_provisioning("ws").await;
}

#[tokio::test]
async fn python_sdk_provisions_over_mqtt_and_uses_the_hub() {
    let Some(dir) = python_dir() else { return };
    let (_port, server) = start_on_sdk_ports().await;
    let python = dir.join(".venv/bin/python");
    let ca = server.ca_path();
    let devices = mqtt_devices(&server, "py-ind", "py-grp", "py-grp-unit").await;
    for (id, key, transport) in &devices {
        let v = python_sdk(&dir, &server, "provision.py", &[id, key, transport]);
        assert_eq!(v["ok"], true, "{id} over {transport}: {v}");
        assert_eq!(v["status"], "assigned");
        assert_eq!(v["assignedHub"], "localhost");
        assert_eq!(v["deviceId"], id.as_str());
    }

    for (id, key, transport) in [&devices[0], &devices[3]] {
        let mut command = tokio::process::Command::new(&python);
        command
            .current_dir(&dir)
            .args(["hub_device.py", "localhost", id, key, transport])
            .arg(&ca);
        hub_scenario(&server, command, transport, id, "python").await;
    }
}

/// Throttled by Onramp (a device over its registrations per minute hears
/// 429 with Retry-After on its MQTT response topic), the Node and Python
/// SDKs wait and register again, and succeed once the budget has refilled.
#[tokio::test]
async fn throttled_sdks_wait_for_retry_after_and_succeed() {
    let (Some(node_dir), Some(python_dir)) = (node_dir(), python_dir()) else {
        return;
    };
    let (_port, server) =
        start_on_sdk_ports_with("[throttle]\ndevice_registrations_per_minute = 2\n").await;
    let mut devices = Vec::new();
    for id in ["node-throttled", "py-throttled"] {
        let key = server.enroll(id, json!({})).await;
        // The device's two registrations of this minute, spent beforehand.
        for _ in 0..2 {
            let (status, _, op) = server.register(id, &key, "?api-version=2021-06-01").await;
            assert_eq!((status, &op["status"]), (202, &json!("assigned")), "{op}");
        }
        let (status, headers, body) = server.register(id, &key, "?api-version=2021-06-01").await;
        assert_eq!(
            (status, &body["errorCode"]),
            (429, &json!(429001)),
            "{body}"
        );
        assert!(headers.contains_key("retry-after"), "{headers:?}");
        devices.push((id, key));
    }
    let started = std::time::Instant::now();
    let (node, python) = std::thread::scope(|s| {
        let (node_id, node_key) = &devices[0];
        let (py_id, py_key) = &devices[1];
        let node = s.spawn(|| {
            provision(
                &node_dir,
                &server,
                "provision_mqtt",
                node_id,
                node_key,
                &["mqtt"],
            )
        });
        let python = s.spawn(|| {
            python_sdk(
                &python_dir,
                &server,
                "provision.py",
                &[py_id, py_key, "mqtt"],
            )
        });
        (node.join().unwrap(), python.join().unwrap())
    });
    assert_eq!(node["ok"], true, "{node}");
    assert_eq!(node["result"]["deviceId"], "node-throttled", "{node}");
    assert_eq!(python["ok"], true, "{python}");
    assert_eq!(python["status"], "assigned", "{python}");
    // Neither got through before its budget refilled (a token every 30 s).
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let throttled = server.stderr().matches("Throttled").count();
    assert!(throttled >= 2, "{throttled} throttled answers in the log");
}

/// Three small PKIs: a group on a root, a group on an intermediate, a group
/// on a verified CA reference; and a self-signed device for an individual
/// enrollment. Returns the folder of the devices' files and (registration
/// ID, chain file, key file) per device.
async fn x509_fleet(
    server: &Server,
    prefix: &str,
) -> (tempfile::TempDir, Vec<(String, PathBuf, PathBuf)>) {
    use onramp_net::pki::dev_certs::{Issued, Validity};
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();
    let cs = server.owner_connection_string().await;
    let days = Validity::days(30);
    let write = |name: &str, device: &Issued, intermediates: &[&Issued]| {
        let chain = dir.join(format!("{name}.chain.pem"));
        let key = dir.join(format!("{name}.key.pem"));
        let mut pem = device.cert_pem.clone();
        for i in intermediates {
            pem.push_str(&i.cert_pem);
        }
        std::fs::write(&chain, pem).unwrap();
        std::fs::write(&key, &device.key_pem).unwrap();
        (name.to_owned(), chain, key)
    };
    let put = |path: String, body: Value| {
        let cs = cs.clone();
        async move {
            let (status, v) = server
                .call(
                    &cs,
                    reqwest::Method::PUT,
                    &format!("{path}?api-version=2021-10-01"),
                    Some(body),
                )
                .await;
            assert_eq!(status, 200, "{path}: {v}");
            v
        }
    };
    let group = |id: String, x509: Value| {
        put(
            format!("enrollmentGroups/{id}"),
            serde_json::json!({"attestation": {"type": "x509", "x509": x509}, "initialTwin": initial_twin()}),
        )
    };

    // A root and its intermediate; a group whose signing certificate is one of them.
    let pki = |letter: &str| {
        let root = Issued::root(&format!("{prefix} Root {letter}"), days).unwrap();
        let ica = root
            .intermediate(&format!("{prefix} ICA {letter}"), days)
            .unwrap();
        (root, ica)
    };
    let signed_by = |id: String, signer: &Issued| {
        group(
            id,
            serde_json::json!({"signingCertificates": {"primary": {"certificate": signer.cert_pem}}}),
        )
    };
    let (root_a, ica_a) = pki("A");
    signed_by(format!("{prefix}-by-root"), &root_a).await;
    let (_, ica_b) = pki("B");
    signed_by(format!("{prefix}-by-ica"), &ica_b).await;

    // A CA reference counts once its proof of possession is done.
    let root_c = Issued::root(&format!("{prefix} Root C"), days).unwrap();
    let ca_name = format!("{prefix}-root-c");
    put(
        format!("certificates/{ca_name}"),
        serde_json::json!({"certificate": root_c.cert_pem}),
    )
    .await;
    let post = |action: &str, body: Option<Value>| {
        let path = format!("certificates/{ca_name}/{action}?api-version=2021-10-01");
        let cs = &cs;
        async move { server.call(cs, reqwest::Method::POST, &path, body).await }
    };
    let (_, code) = post("generateVerificationCode", None).await;
    let code = common::text(&code["properties"]["verificationCode"]);
    let proof = root_c.device(&code, days).unwrap();
    let (status, v) = post(
        "verify",
        Some(serde_json::json!({"certificate": proof.cert_pem})),
    )
    .await;
    common::assert_ca_verified(status, &v, true);
    group(
        format!("{prefix}-by-ca"),
        serde_json::json!({"caReferences": {"primary": ca_name}}),
    )
    .await;

    let individual = Issued::self_signed_device(&format!("{prefix}-ind"), days).unwrap();
    put(
        format!("enrollments/{prefix}-ind"),
        serde_json::json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": individual.cert_pem}}}}, "initialTwin": initial_twin()}),
    )
    .await;

    // A device of `issuer`, whose chain holds the issuer when it is an intermediate.
    let device = |name: &str, issuer: &Issued, intermediate: bool| {
        let id = format!("{prefix}-{name}");
        let chain: &[&Issued] = if intermediate { &[issuer] } else { &[] };
        write(&id, &issuer.device(&id, days).unwrap(), chain)
    };
    let devices = vec![
        write(&format!("{prefix}-ind"), &individual, &[]),
        device("a1", &ica_a, true),
        device("b1", &ica_b, true),
        device("c1", &root_c, false),
    ];
    (files, devices)
}

#[tokio::test]
async fn node_sdk_provisions_x509_devices_and_they_reach_their_hub() {
    let Some(dir) = node_dir() else { return };
    let (_port, server) = start_on_sdk_ports().await;
    let (_pki, devices) = x509_fleet(&server, "nodex").await;
    for (id, chain, key) in &devices {
        for transport in ["http", "mqtt", "amqp", "amqpws"] {
            let out = provision(
                &dir,
                &server,
                "provision_x509",
                id,
                chain.to_str().unwrap(),
                &[key.to_str().unwrap(), transport],
            );
            assert_provisioned(&out, id, transport);
        }
        // The same device on its hub, with the same certificate, over
        // each device transport (twin, telemetry, reported, desired).
        for transport in ["mqtt", "amqp", "amqpws"] {
            let mut command = tokio::process::Command::new("node");
            command
                .current_dir(&dir)
                .args(["hub_device.js", "localhost", id, "x509", transport])
                .arg(chain)
                .arg(key)
                .env("NODE_EXTRA_CA_CERTS", server.ca_path());
            hub_scenario(&server, command, transport, id, "node").await;
        }
    }
    // A device of another (unenrolled) PKI is refused.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = onramp_net::pki::dev_certs::Issued::self_signed_device(
        "nodex-stranger",
        onramp_net::pki::dev_certs::Validity::days(30),
    )
    .unwrap();
    let (chain, key) = (
        stranger_dir.path().join("s.pem"),
        stranger_dir.path().join("s.key"),
    );
    std::fs::write(&chain, &stranger.cert_pem).unwrap();
    std::fs::write(&key, &stranger.key_pem).unwrap();
    let out = provision(
        &dir,
        &server,
        "provision_x509",
        "nodex-stranger",
        chain.to_str().unwrap(),
        &[key.to_str().unwrap(), "http"],
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["error"]["statusCode"], 401, "{out}");
}

#[tokio::test]
async fn python_sdk_provisions_x509_devices_and_they_reach_their_hub() {
    let Some(dir) = python_dir() else { return };
    let (_port, server) = start_on_sdk_ports().await;
    let (_pki, devices) = x509_fleet(&server, "pyx").await;
    for (id, chain, key) in devices {
        let (chain, key) = (chain.to_str().unwrap(), key.to_str().unwrap());
        let v = python_sdk(&dir, &server, "x509_device.py", &[&id, chain, key]);
        assert_eq!(v["ok"], true, "{id}: {v}");
        assert_eq!(v["deviceId"], id.as_str());
        assert_eq!(
            without_version(v["desired"].clone()),
            initial_twin()["properties"]["desired"],
            "{v}"
        );
    }
}

#[tokio::test]
async fn sdk_payloads_reach_the_webhook_and_its_payload_reaches_the_sdks() {
    let (Some(node_dir), Some(py_dir)) = (node_dir(), python_dir()) else {
        return;
    };
    let (_port, server) = start_on_sdk_ports().await;
    let hub = server.embedded_hub().await.name;
    // The webhook echoes the device's payload back inside its own.
    let (url, seen) = common::start_webhook(move |request| {
        let payload = request["deviceRuntimeContext"]["payload"].clone();
        common::WebhookReply::Answer(
            200,
            serde_json::json!({"iotHubHostName": hub, "payload": {"echo": payload, "greeting": "welcome"}})
                .to_string(),
        )
    });
    let group_key = server
        .enroll_group(
            "custom-sdk",
            serde_json::json!({
                "allocationPolicy": "custom",
                "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
            }),
        )
        .await;
    let key = |id: &str| sas::derive_device_key(&group_key, id).unwrap();

    // Node over HTTPS.
    let out = provision(
        &node_dir,
        &server,
        "provision_http",
        "node-custom-1",
        &key("node-custom-1"),
        &[r#"{"model":"toaster"}"#],
    );
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(
        out["result"]["payload"],
        serde_json::json!({"echo": {"model": "toaster"}, "greeting": "welcome"}),
        "{out}"
    );

    // Python over MQTT (its script sends a modelId payload).
    let v = python_sdk(
        &py_dir,
        &server,
        "provision.py",
        &["py-custom-1", &key("py-custom-1"), "mqtt"],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["payload"]["greeting"], "welcome", "{v}");
    assert_eq!(v["payload"]["echo"]["modelId"], "dtmi:onramp:test;1", "{v}");

    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0]["deviceRuntimeContext"]["registrationId"],
        "node-custom-1"
    );
    assert_eq!(
        requests[1]["deviceRuntimeContext"]["payload"]["modelId"],
        "dtmi:onramp:test;1"
    );
}

/// The Node SDK's TPM support (azure-iot-security-tpm over tss.js) with a
/// software TPM behind `onramp_testkit::swtpm`'s simulator shim: the device
/// provisions over HTTPS through the TPM challenge, then signs its hub
/// tokens in the TPM with the key the assignment wrapped for it.
#[tokio::test]
async fn node_sdk_provisions_a_tpm_device_over_https_and_it_reaches_its_hub() {
    let Some(refused) = node_tpm_device_reaches_its_hub("http").await else {
        return;
    };
    // Whatever the refusal, the SDK reports only that the first request was
    // not answered with a challenge.
    assert_eq!(
        refused["error"]["name"], "InvalidOperationError",
        "{refused}"
    );
}

/// The same device over AMQP: the challenge is the SASL `TPM` exchange, the
/// register message and polls follow on the links.
#[tokio::test]
async fn node_sdk_provisions_a_tpm_device_over_amqp_and_it_reaches_its_hub() {
    node_tpm_device_reaches_its_hub("amqp").await;
}

/// And over AMQP inside a WebSocket on port 443.
#[tokio::test]
async fn node_sdk_provisions_a_tpm_device_over_amqp_websockets_and_it_reaches_its_hub() {
    node_tpm_device_reaches_its_hub("amqpws").await;
}

/// A TPM device of the Node SDK provisions over `transport` (`http`, `amqp`,
/// `amqpws`), reads its twin and sends telemetry to its hub over MQTT with
/// TPM-signed tokens, provisions again, and is refused once its enrollment
/// is gone: the refusal's JSON, or `None` when the SDK or swtpm is missing.
async fn node_tpm_device_reaches_its_hub(transport: &str) -> Option<Value> {
    use onramp_testkit::swtpm::{self, Swtpm};
    let dir = common::interop_dir(
        "tests/interop/node",
        "node_modules/azure-iot-security-tpm",
        "the Node SDK's TPM support",
    )?;
    if !swtpm::tools_installed() {
        return None;
    }
    let (_port, server) = start_on_sdk_ports().await;
    let tpm = Swtpm::start();
    let (ek, _srk) = tpm.make_key_files();

    // The enrollment takes the registration ID the SDK derives from the EK.
    let (ek, twin) = (ek.to_str().unwrap(), initial_twin().to_string());
    let created = server.cli_json(&[
        "enrollment",
        "create",
        "--tpm-ek",
        ek,
        "--initial-twin",
        &twin,
    ]);
    let id = common::text(&created["registrationId"]);

    // tpm2-tools are done with the TPM: the device's SDK takes it over.
    let shim = tpm.simulator_shim().await;
    let out = node_tpm_device(&dir, &server, shim.port(), transport).await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["registrationId"], id.as_str(), "{out}");
    let result = &out["result"];
    assert_eq!(result["status"], "assigned", "{out}");
    assert_eq!(result["assignedHub"], "localhost", "{out}");
    assert_eq!(result["deviceId"], id.as_str(), "{out}");

    // The twin the device read is the enrollment's initial one.
    assert_eq!(
        without_version(out["desired"].clone()),
        initial_twin()["properties"]["desired"],
        "{out}"
    );
    let hub = server.embedded_hub().await;
    let twin = server
        .hub_client()
        .get_twin(&hub, &id)
        .await
        .unwrap()
        .expect("twin");
    assert_eq!(twin.tags.unwrap()["site"], "lab-3");

    // The hub stored its telemetry.
    let messages = server.hub_messages(&id);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let body: Value = serde_json::from_str(messages[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["attestation"], "tpm", "{body}");
    assert_eq!(messages[0]["properties"]["source"], "node-tpm");

    // The device starts again: a new challenge, the same hub identity.
    let again = node_tpm_device(&dir, &server, shim.port(), transport).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["result"], out["result"], "{again}");
    let messages = server.cli_ok(&["hub", "messages", "--device", &id]);
    assert_eq!(messages.lines().count(), 2, "{messages}");

    // Once its enrollment is gone the SDK reports a failure, and does not
    // hang (node_tpm_device allows it 90 s; the script itself gives up
    // after 60 s, reported as stage "provision" too, so the time is checked).
    server.cli_ok(&["enrollment", "delete", &id]);
    let started = std::time::Instant::now();
    let refused = node_tpm_device(&dir, &server, shim.port(), transport).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["stage"], "provision", "{refused}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the refusal took {:?}: {refused}",
        started.elapsed()
    );
    Some(refused)
}

/// Runs provision_tpm.js with the TPM behind the simulator shim on
/// `tpm_port`; returns its last stdout line as JSON. It runs on the tokio
/// runtime, which keeps serving the shim meanwhile.
async fn node_tpm_device(dir: &Path, server: &Server, tpm_port: u16, transport: &str) -> Value {
    let run = tokio::process::Command::new("node")
        .current_dir(dir)
        .args([
            "provision_tpm.js",
            "localhost",
            &server.id_scope(),
            "127.0.0.1",
        ])
        .arg(tpm_port.to_string())
        .arg(transport)
        .env("NODE_EXTRA_CA_CERTS", server.ca_path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), run)
        .await
        .expect("provision_tpm.js ends within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "provision_tpm.js printed no JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
