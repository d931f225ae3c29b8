//! The data directory around a server's life: one server per directory, a
//! failed start that leaves no trace, the CLI against a stopped server,
//! private files whatever the umask, development CAs that a client can trust
//! side by side, and the companion hub's connection string.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{HubProcess, Server, onramp, token_for, wait_for};
use serde_json::{Value, json};

/// Runs `cmd` to its end and returns whether it succeeded, its stdout and
/// its stderr. A command that should refuse must not run on: after 60 s it
/// is killed and the test fails.
fn run_to_end(mut cmd: Command) -> (bool, String, String) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .env_remove("ONRAMP_CONFIG")
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let read = |f: &tempfile::NamedTempFile| std::fs::read_to_string(f.path()).unwrap_or_default();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} was still running after 60 s\nstdout: {}\nstderr: {}",
                read(&out),
                read(&err)
            );
        }
        // A condition poll, not a sleep for luck: the loop ends as soon as the child does.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), read(&out), read(&err))
}

/// `onramp ARGS` under `umask 000`, the most permissive there is.
fn onramp_with_open_umask(args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_onramp"))
        .args(args);
    cmd
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every path under `dir` (itself included): its mode and, for a file, its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
            all.insert(path, (mode, None));
        } else {
            all.insert(path.clone(), (mode, Some(std::fs::read(&path).unwrap())));
        }
    }
    all
}

/// The paths under `dir` that someone other than their owner may read or
/// enter: directories must be 0700 and files 0600.
fn not_private(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .into_iter()
        .filter(|(_, (mode, bytes))| *mode != if bytes.is_some() { 0o600 } else { 0o700 })
        .map(|(path, (mode, _))| format!("{} is {mode:o}", path.display()))
        .collect()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `onramp serve` on free loopback ports, without the metrics listener.
const SERVE: [&str; 9] = [
    "serve",
    "--amqp-listen",
    "127.0.0.1:0",
    "--https-listen",
    "127.0.0.1:0",
    "--mqtt-listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "off",
];

/// `serve` and `hub serve` on `dir`, each on free ports.
fn servers_on(dir: &Path) -> Vec<(&'static str, Command)> {
    let mut serve = onramp();
    serve.args(SERVE).arg("--data-dir").arg(dir);
    vec![
        ("onramp serve", serve),
        ("onramp hub serve", common::hub_serve(dir)),
    ]
}

/// Every server started on `dir`, which process `pid` serves, stops and
/// says which process holds it.
fn assert_refused_on(dir: &Path, pid: u32, whose: &str) {
    for (what, cmd) in servers_on(dir) {
        let (ok, _, stderr) = run_to_end(cmd);
        assert!(!ok, "{what} started on {whose} data directory in use");
        assert!(
            stderr.contains(&format!("this data directory is served by process {pid}")),
            "{what}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused_to_a_second_server() {
    let server = Server::start("127.0.0.1:0");
    let dir = server.data_dir.clone();
    let state = std::fs::read(dir.join("serve.json")).unwrap();
    let embedded = server.embedded_hub().await.name;

    assert_refused_on(&dir, server.pid(), "a");
    assert_eq!(
        std::fs::read(dir.join("serve.json")).unwrap(),
        state,
        "the running server's serve.json is untouched"
    );
    assert_eq!(server.embedded_hub().await.name, embedded);
    // The running server still provisions onto its own embedded hub.
    let key = server.enroll("still-served", json!({})).await;
    let assigned = server.assigned("still-served", &key, &[]);
    assert_eq!(assigned["assignedHub"], embedded.as_str(), "{assigned}");

    // A companion hub's data directory is held the same way.
    let temp = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&temp.path().join("hub"), None);
    assert_refused_on(&hub.dir, hub.pid(), "a hub's");
    assert!(hub.device_ids().await.is_empty(), "the hub still answers");
}

/// `onramp serve` on these HTTPS and MQTT addresses (AMQP on a free port,
/// no metrics listener), then `extra`.
fn serve_on<'a>(https: &'a str, mqtt: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--amqp-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
    ];
    args.extend_from_slice(extra);
    args.extend(["--https-listen", https, "--mqtt-listen", mqtt]);
    args
}

#[tokio::test]
async fn a_failed_start_changes_nothing_on_disk() {
    let temp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().map(|a| (busy, a.to_string())).unwrap();
    let missing_cert = temp.path().join("onramp.toml");
    std::fs::write(
        &missing_cert,
        "[tls]\ncert = \"/nonexistent/server.pem\"\nkey = \"/nonexistent/server.key\"\n",
    )
    .unwrap();

    // Nothing is created where nothing was.
    let fresh = temp.path().join("fresh");
    let attempts: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "HTTPS port in use",
            serve_on(&busy.1, "127.0.0.1:0", &[]),
            "cannot listen on",
        ),
        (
            "MQTT port in use",
            serve_on("127.0.0.1:0", &busy.1, &[]),
            "cannot listen for MQTT",
        ),
        (
            "certificate missing",
            serve_on(
                "127.0.0.1:0",
                "127.0.0.1:0",
                &["--config", missing_cert.to_str().unwrap()],
            ),
            "/nonexistent/server.pem",
        ),
        (
            "hub port in use",
            vec!["hub", "serve", "--listen", &busy.1, "--mqtt-listen", "off"],
            "cannot listen on",
        ),
    ];
    // An attempt on `dir` fails and says why.
    let fails_on = |dir: &Path, (what, args, says): &(&str, Vec<&str>, &str)| {
        let mut cmd = onramp();
        cmd.args(args).arg("--data-dir").arg(dir);
        let (ok, _, stderr) = run_to_end(cmd);
        assert!(!ok, "{what}");
        assert!(stderr.contains(says), "{what}: {stderr}");
    };
    for attempt in &attempts {
        fails_on(&fresh, attempt);
        assert!(
            !fresh.exists(),
            "{}: the failed start created {}",
            attempt.0,
            fresh.display()
        );
    }

    // A stopped deployment is left exactly as it was.
    let dir = temp.path().join("data");
    let mut server = Server::start_in(&dir, "127.0.0.1:0", &[]);
    server.stop();
    let before = snapshot(&dir);
    for attempt in &attempts {
        fails_on(&dir, attempt);
        let what = attempt.0;
        let after = snapshot(&dir);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{what}: the failed start added or removed files"
        );
        for (path, was) in &before {
            assert!(
                after[path] == *was,
                "{what}: the failed start changed {}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn the_cli_against_a_stopped_server_says_nothing_answers_at_its_endpoint() {
    let mut server = Server::start("127.0.0.1:0");
    let endpoint = server.endpoint();
    let mqtt = server.mqtt_endpoint();
    assert!(endpoint.starts_with("localhost:"), "{endpoint}");
    let key = server.enroll("stopped-1", json!({})).await;
    let owner = server.owner_connection_string().await;
    server.stop();

    let provision = [
        "device",
        "provision",
        "--registration-id",
        "stopped-1",
        "--key",
        &key,
    ];
    let over_websockets = [&provision[..], &["--protocol", "mqtt-ws"]].concat();
    let https_commands: [&[&str]; 6] = [
        &["enrollment", "list"],
        &["enrollment", "show", "stopped-1"],
        &["group", "list"],
        &["cert", "list"],
        &provision,
        &over_websockets,
    ];
    let dir = server.data_dir.display().to_string();
    for args in https_commands {
        let out = server.cli(args);
        let stderr = stderr_of(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(&format!("no Onramp is answering at {endpoint}"))
                && stderr.contains(&format!("onramp serve --data-dir {dir}")),
            "{args:?}: {stderr}"
        );
    }
    let out = server.cli(&[&provision[..], &["--protocol", "mqtt"]].concat());
    assert!(
        stderr_of(&out).contains(&format!("no Onramp is answering at {mqtt}")),
        "{}",
        stderr_of(&out)
    );

    // Connection strings name the port the deployment answers on.
    let out = server.cli(&["service", "show", "--keys"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains(&owner), "{}", stdout_of(&out));
    assert!(
        owner.starts_with(&format!("HostName={endpoint};")),
        "{owner}"
    );
}

#[tokio::test]
async fn files_under_the_data_directory_are_private_whatever_the_umask() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let log = |name: &str| std::fs::File::create(temp.path().join(name)).unwrap();
    let mut cmd =
        onramp_with_open_umask(&[&SERVE[..], &["--data-dir", dir.to_str().unwrap()]].concat());
    let mut child = Killed(
        cmd.env_remove("ONRAMP_CONFIG")
            .stdout(log("serve.stdout"))
            .stderr(log("serve.stderr"))
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    wait_for(Duration::from_secs(60), "serve.json", || {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "onramp serve exited: {}",
            std::fs::read_to_string(temp.path().join("serve.stderr")).unwrap_or_default()
        );
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("serve.json")).ok()?).ok()?;
        (state["pid"].as_u64() == Some(u64::from(pid))).then_some(())
    });

    // Commands that write to both stores, under the same umask.
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", dir.to_str().unwrap()]);
        let out = onramp_with_open_umask(&all)
            .env_remove("ONRAMP_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        stdout_of(&out)
    };
    let created: Value =
        serde_json::from_str(&cli(&["enrollment", "create", "private-1"])).unwrap();
    let key = common::text(&created["attestation"]["symmetricKey"]["primaryKey"]);
    cli(&[
        "device",
        "provision",
        "--registration-id",
        "private-1",
        "--key",
        &key,
    ]);
    cli(&[
        "service",
        "add-policy",
        "reader",
        "--rights",
        "EnrollmentRead",
    ]);
    for wal in ["onramp.db-wal", "onramp.db-shm", "hub.db-wal", "hub.db-shm"] {
        assert!(dir.join(wal).exists(), "{wal} exists while the server runs");
    }
    assert_eq!(not_private(&dir), Vec::<String>::new(), "while serving");

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = wait_for(Duration::from_secs(30), "onramp serve to exit", || {
        child.0.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    assert_eq!(not_private(&dir), Vec::<String>::new(), "after a stop");

    // A companion hub of its own, and a store made by an admin command.
    let hub_dir = temp.path().join("hub");
    let hub_args = [
        &common::HUB_SERVE[..],
        &["--data-dir", hub_dir.to_str().unwrap()],
    ]
    .concat();
    let mut hub = onramp_with_open_umask(&hub_args);
    let hub = Killed(
        hub.stdout(log("hub.stdout"))
            .stderr(log("hub.stderr"))
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(60), "the hub's summary", || {
        std::fs::read_to_string(temp.path().join("hub.stdout"))
            .ok()
            .filter(|s| s.contains("Connection string"))
    });
    assert_eq!(not_private(&hub_dir), Vec::<String>::new(), "hub serve");
    drop(hub);
    let admin_dir = temp.path().join("admin");
    let out = onramp_with_open_umask(&["service", "create", "other", "--data-dir"])
        .arg(&admin_dir)
        .env_remove("ONRAMP_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        not_private(&admin_dir),
        Vec::<String>::new(),
        "service create"
    );
}

/// `python3`, when this machine has it (its `ssl` module is OpenSSL).
fn python3() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("python3");
    }
    common::missing("python3, for the OpenSSL client,");
    None
}

#[tokio::test]
async fn one_client_trusts_two_development_cas_at_once() {
    let server = Server::start("127.0.0.1:0");
    let temp = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&temp.path().join("hub"), None);
    let hub_ca = std::fs::read_to_string(hub.dir.join("tls/ca.pem")).unwrap();
    let subject = |pem: &str| onramp_core::x509::info(pem).unwrap().subject_name;
    assert_ne!(
        subject(&server.ca_pem),
        subject(&hub_ca),
        "each CA has its own name"
    );
    let bundle = format!("{}{}", server.ca_pem, hub_ca);

    // rustls, as Onramp's own clients and the Rust SDKs use it.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(onramp_net::tls::client_config(Some(&bundle)).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let health = client.get(server.url("health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let devices = client
        .get(format!(
            "https://{}/devices?api-version=2021-04-12",
            hub.name()
        ))
        .header("Authorization", token_for(&hub.connection_string))
        .send()
        .await
        .unwrap();
    assert_eq!(devices.status(), 200);

    // OpenSSL, as Python's and Node's SDKs use it: it picks an issuer by
    // name and key identifier, so two CAs of one name broke one of them.
    let Some(python) = python3() else { return };
    let bundle_path = temp.path().join("both-cas.pem");
    std::fs::write(&bundle_path, &bundle).unwrap();
    let script = r#"
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
for port in sys.argv[2:]:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            print(port, tls.version())
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&bundle_path)
        .arg(server.port().to_string())
        .arg(hub.listen.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
}

/// The connection string `onramp hub show --keys` prints.
fn shown_connection_string(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr_of(out));
    stdout_of(out)
        .split_whitespace()
        .find(|w| w.starts_with("HostName="))
        .unwrap_or_else(|| panic!("no connection string in {}", stdout_of(out)))
        .to_owned()
}

#[tokio::test]
async fn hub_show_gives_a_connection_string_that_opens_the_hub_api() {
    let mut server = Server::start("127.0.0.1:0");
    let out = server.cli(&["hub", "show"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(text.contains(&server.endpoint()), "{text}");
    assert!(text.contains("iothubowner"), "{text}");
    assert!(
        !text.contains("SharedAccessKey="),
        "keys only when asked: {text}"
    );

    let cs = shown_connection_string(&server.cli(&["hub", "show", "--keys"]));
    assert!(
        cs.starts_with(&format!("HostName={};", server.endpoint())),
        "{cs}"
    );
    let key = server.enroll("hub-show-1", json!({})).await;
    server.assigned("hub-show-1", &key, &[]);
    let resp = server
        .http()
        .get(server.url("devices?api-version=2021-04-12"))
        .header("Authorization", token_for(&cs))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let devices: Value = resp.json().await.unwrap();
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["deviceId"] == "hub-show-1"),
        "{devices}"
    );

    // The data directory is enough: the same string with the server stopped.
    server.stop();
    let again = shown_connection_string(&server.cli(&["hub", "show", "--keys"]));
    assert_eq!(again, cs);

    // A hub run on its own, by its data directory.
    let temp = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&temp.path().join("hub"), None);
    let out = onramp()
        .args(["hub", "show", "--keys", "--data-dir"])
        .arg(&hub.dir)
        .env_remove("ONRAMP_CONFIG")
        .output()
        .unwrap();
    assert_eq!(shown_connection_string(&out), hub.connection_string);
}

#[test]
fn the_test_pki_keeps_keys_private_and_does_not_overwrite_them() {
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("pki/root");
    let create = |extra: &[&str]| {
        let mut cmd = onramp();
        cmd.args(["cert", "create-root", "--cn", "Test Root", "--out"])
            .arg(&out)
            .args(extra);
        run_to_end(cmd)
    };
    let (ok, _, stderr) = create(&[]);
    assert!(ok, "{stderr}");
    let key = temp.path().join("pki/root.key.pem");
    let first = std::fs::read(&key).unwrap();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is the owner's alone");

    let (ok, _, stderr) = create(&[]);
    assert!(!ok, "a second create-root replaced the key");
    assert!(
        stderr.contains("already exist") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), first, "the key is kept");

    let (ok, _, stderr) = create(&["--force"]);
    assert!(ok, "{stderr}");
    assert_ne!(std::fs::read(&key).unwrap(), first, "--force replaces it");
}

#[tokio::test]
async fn a_backup_taken_while_devices_register_restores_into_a_working_deployment() {
    if common::sqlite_only(
        "onramp store backup copies the embedded store (PostgreSQL has its own tools)",
    ) {
        return;
    }
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("kept-1", json!({})).await;
    server.assigned("kept-1", &key, &[]);
    let temp = tempfile::tempdir().unwrap();
    let backup = temp.path().join("backup");

    // Devices keep registering while the copy is taken.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let assigned = std::sync::Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, assigned, key) = (stop.clone(), assigned.clone(), key.clone());
        let data_dir = server.data_dir.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = onramp()
                    .args([
                        "device",
                        "provision",
                        "--registration-id",
                        "kept-1",
                        "--key",
                        &key,
                    ])
                    .arg("--force")
                    .arg("--data-dir")
                    .arg(&data_dir)
                    .output()
                    .unwrap();
                if out.status.success() {
                    assigned.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    wait_for(Duration::from_secs(30), "a registration under load", || {
        (assigned.load(Ordering::Relaxed) > 0).then_some(())
    });
    server.cli_ok(&["store", "backup", backup.to_str().unwrap()]);
    let during = assigned.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(
        during > 0,
        "devices were registering when the backup was taken"
    );
    #[cfg(unix)]
    for file in ["onramp.db", "keys"] {
        let mode = std::fs::metadata(backup.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is the owner's alone");
    }
    // A second backup into the same folder needs --force.
    let out = server.cli(&["store", "backup", backup.to_str().unwrap()]);
    assert!(!out.status.success());
    // Restoring over a running deployment is refused.
    let out = server.cli(&["store", "restore", backup.to_str().unwrap(), "--force"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("stop it first"),
        "{}",
        stderr_of(&out)
    );

    // Restored into a new data directory, it serves the same enrollment,
    // unseals its key, and knows the device's registration.
    let restored = temp.path().join("restored");
    let out = onramp()
        .args(["store", "restore", backup.to_str().unwrap(), "--data-dir"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let again = Server::start_in(&restored, "127.0.0.1:0", &[]);
    let shown: Value =
        serde_json::from_str(&again.cli_ok(&["enrollment", "show", "kept-1", "--keys"])).unwrap();
    assert_eq!(
        shown["attestation"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );
    let record: Value =
        serde_json::from_str(&again.cli_ok(&["registration", "show", "kept-1"])).unwrap();
    assert_eq!(record["status"], "assigned");
    assert_eq!(again.assigned("kept-1", &key, &[])["status"], "assigned");
}
