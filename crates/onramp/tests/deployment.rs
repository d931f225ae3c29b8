//! The data directory around a server's life: private files whatever the
//! umask, and development CAs that a client can trust side by side.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{HubProcess, Server, token_for, wait_for};
use serde_json::Value;

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

#[tokio::test]
async fn files_under_the_data_directory_are_private_whatever_the_umask() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let log = |name: &str| std::fs::File::create(temp.path().join(name)).unwrap();
    let mut cmd = onramp_with_open_umask(&[
        "serve",
        "--https-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
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
    let key = created["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
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
    let mut hub = onramp_with_open_umask(&[
        "hub",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "off",
        "--data-dir",
        hub_dir.to_str().unwrap(),
    ]);
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
    assert!(
        std::env::var("ONRAMP_REQUIRE_INTEROP").is_err(),
        "python3 is not installed"
    );
    eprintln!("skipping the OpenSSL client: python3 is not installed");
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
