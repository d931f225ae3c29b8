//! Master keys that rotate while the server runs: `onramp keys rotate`
//! re-seals every secret of a store of 100,000 enrollments under a new key
//! while devices register, every sealed value is then read back under that
//! key, and the old key retires; a rotation killed half-way leaves every
//! secret readable and continues when run again.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, onramp, wait_for};
use onramp_core::ports::{Precondition, PutRecord, Record, RecordAt, RecordKind};
use onramp_model::{IdKey, Secret, UtcTime};
use onramp_store::seal::sealed_key_id;
use serde_json::json;

/// Every sealed value of the deployment's databases, counted by the key ID
/// its envelope names, read from the databases themselves (not through
/// Onramp): the store's tables in SQLite's file or in PostgreSQL, the
/// embedded hub's in its file.
fn sealed_key_ids(server: &Server) -> BTreeMap<String, usize> {
    let columns = [
        ("onramp.db", "policies", "keys_sealed"),
        ("onramp.db", "linked_hubs", "connection_sealed"),
        ("onramp.db", "enrollments", "keys_sealed"),
        ("onramp.db", "enrollment_groups", "keys_sealed"),
        ("onramp.db", "tpm_challenges", "keys_sealed"),
        ("hub.db", "hub_policies", "keys_sealed"),
        ("hub.db", "devices", "keys_sealed"),
    ];
    let mut ids = BTreeMap::new();
    for (file, table, column) in columns {
        let sql = format!("SELECT {column} FROM {table} WHERE {column} IS NOT NULL");
        let values = match &server.store_url {
            Some(url) if file == "onramp.db" => postgres_values(url, &sql),
            _ => sqlite_values(&server.data_dir.join(file), &sql),
        };
        for value in values {
            let id = sealed_key_id(&value).unwrap_or("not sealed").to_owned();
            *ids.entry(id).or_default() += 1;
        }
    }
    ids
}

fn sqlite_values(file: &Path, sql: &str) -> Vec<Vec<u8>> {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The values `sql` selects in the PostgreSQL database `url` (from a
/// multi-threaded test runtime).
fn postgres_values(url: &str, sql: &str) -> Vec<Vec<u8>> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter().map(|r| r.get(0)).collect()
        })
    })
}

fn active_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("keys/active"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `n` symmetric-key enrollments written straight into the store beside the
/// running server, many at a time (the writer commits them in groups).
async fn bulk_enroll(server: &Server, n: usize) {
    let store = server.any_store().await;
    let now = UtcTime::now();
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = store.clone();
        pending.spawn(async move {
            let e = onramp_testkit::conformance::enrollment(&format!("bulk-{i:06}"));
            let put = PutRecord {
                record: Record::Enrollment(Box::new(e)),
                condition: Precondition::None,
                now,
            };
            store.put_record("default", put).await.unwrap();
        });
        if pending.len() >= 512 {
            pending.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = pending.join_next().await {
        done.unwrap();
    }
}

/// Devices registering over HTTPS until told to stop: how many were
/// assigned, and every answer that was not a success.
struct Load {
    stop: Arc<AtomicBool>,
    assigned: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    async fn start(server: &Arc<Server>, devices: usize) -> Load {
        let mut keys = Vec::new();
        for i in 0..devices {
            let id = format!("live-{i}");
            keys.push((id.clone(), server.enroll(&id, json!({})).await));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let assigned = Arc::new(AtomicUsize::new(0));
        let task = {
            let (server, stop, assigned) = (server.clone(), stop.clone(), assigned.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for (id, key) in &keys {
                        match register_until_done(&server, id, key).await {
                            Ok(()) => {
                                assigned.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.push(e),
                        }
                    }
                }
                failures
            })
        };
        Load {
            stop,
            assigned,
            task,
        }
    }

    fn assigned(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.assigned.load(Ordering::Relaxed), failures)
    }
}

/// Registers `id` and polls its operation until it is assigned (or fails).
async fn register_until_done(server: &Server, id: &str, key: &str) -> Result<(), String> {
    let (status, _, op) = server.register(id, key, "?api-version=2021-06-01").await;
    let mut op = op;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match (status, op["status"].as_str()) {
            (200 | 202, Some("assigned")) => return Ok(()),
            (200 | 202, Some("assigning")) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let token = server.device_token(id, key, common::unix_now() + 600);
                let operation = op["operationId"].as_str().unwrap_or_default();
                let path = format!(
                    "{}/registrations/{id}/operations/{operation}?api-version=2021-06-01",
                    server.id_scope()
                );
                let (s, _, body) = common::answer(
                    server
                        .http()
                        .get(server.url(&path))
                        .header("Authorization", token),
                )
                .await;
                if s != 200 && s != 202 {
                    return Err(format!("{id}: poll answered {s}: {body}"));
                }
                op = body;
            }
            _ => return Err(format!("{id}: {status} {op}")),
        }
    }
}

fn cli_in(server: &Server, args: &[&str]) -> std::process::Command {
    let mut cmd = onramp();
    cmd.args(args)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .env_remove("ONRAMP_CONFIG")
        .env_remove("ONRAMP_MASTER_KEY")
        .stdin(Stdio::null());
    if let Some(url) = &server.store_url {
        cmd.env("ONRAMP_STORE_URL", url);
    }
    cmd
}

async fn run_cli(server: &Arc<Server>, args: &[&str]) -> std::process::Output {
    let mut cmd = cli_in(server, args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running server with `n` bulk enrollments and one device (`device`)
/// provisioned, so the companion hub holds a sealed key too: the server,
/// the device's key and the active master key's ID.
async fn deployment_of(n: usize, device: &str) -> (Arc<Server>, String, String) {
    let server = Arc::new(Server::start("127.0.0.1:0"));
    let key = server.enroll(device, json!({})).await;
    server.assigned(device, &key, &[]);
    bulk_enroll(&server, n).await;
    let old = active_key(&server.data_dir);
    (server, key, old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_of_100k_enrollments_rotates_while_devices_register() {
    let (server, hub_key, old) = deployment_of(100_000, "hub-dev").await;
    let before = sealed_key_ids(&server);
    assert_eq!(before.keys().collect::<Vec<_>>(), vec![&old], "{before:?}");
    assert!(before[&old] > 100_000, "{before:?}");

    let load = Load::start(&server, 8).await;
    wait_for(Duration::from_secs(60), "devices registering", || {
        (load.assigned() > 0).then_some(())
    });
    let during_before = load.assigned();
    let out = run_cli(&server, &["keys", "rotate"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let during = load.assigned() - during_before;
    let (assigned, failures) = load.finish().await;
    eprintln!("rotation: {}", text(&out).trim());
    eprintln!(
        "registrations: {assigned} assigned ({during} during the rotation), {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed registrations: {failures:#?}");
    assert!(during > 0, "devices registered while the keys rotated");

    // Every sealed value in both databases names the new key.
    let new = active_key(&server.data_dir);
    assert_ne!(new, old);
    let after = sealed_key_ids(&server);
    assert_eq!(after.keys().collect::<Vec<_>>(), vec![&new], "{after:?}");
    assert!(after[&new] >= before[&old], "{before:?} → {after:?}");

    // The list agrees; the old key retires; the active one cannot.
    let listed = text(&run_cli(&server, &["keys", "list", "--output", "json"]).await);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let row = |id: &str| common::row(&listed, "key", id);
    assert_eq!(row(&old)["secrets"], 0, "{listed}");
    assert_eq!(row(&new)["status"], "active", "{listed}");
    let out = run_cli(&server, &["keys", "retire", &new]).await;
    assert!(
        !out.status.success() && text(&out).contains("active"),
        "{}",
        text(&out)
    );
    let out = run_cli(&server, &["keys", "retire", &old]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!server.data_dir.join(format!("keys/{old}.key")).exists());

    // The running server and a restarted one (the new key alone) still read every secret.
    register_until_done(&server, "hub-dev", &hub_key)
        .await
        .unwrap();
    let data_dir = server.data_dir.clone();
    let mut server = Arc::into_inner(server).unwrap();
    server.stop();
    let restarted = Server::start_in(&data_dir, "127.0.0.1:0", &[]);
    register_until_done(&restarted, "hub-dev", &hub_key)
        .await
        .unwrap();
    let bulk = restarted
        .any_store()
        .await
        .record(&RecordAt::new(
            "default",
            RecordKind::Enrollment,
            &IdKey::of("bulk-099999"),
        ))
        .await
        .unwrap();
    let Some(Record::Enrollment(bulk)) = bulk else {
        panic!("bulk-099999 is gone")
    };
    let keys = bulk.attestation.unwrap().symmetric_key.unwrap();
    assert_eq!(
        keys.primary_key,
        Some(Secret::new("cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw=="))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_killed_half_way_leaves_every_secret_readable_and_continues() {
    let (server, key, old) = deployment_of(20_000, "steady").await;

    // Small batches with a rest between them, so the kill lands mid-way.
    let mut rotation = cli_in(
        &server,
        &["keys", "rotate", "--batch-size", "100", "--pause-ms", "20"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let new = wait_for(Duration::from_secs(120), "a rotation half done", || {
        let new = active_key(&server.data_dir);
        let ids = sealed_key_ids(&server);
        (new != old
            && ids.get(&new).copied().unwrap_or(0) > 1_000
            && ids.get(&old).copied().unwrap_or(0) > 1_000)
            .then_some(new)
    });
    rotation.kill().unwrap();
    rotation.wait().unwrap();
    let half = sealed_key_ids(&server);
    assert!(half[&old] > 0 && half[&new] > 0, "{half:?}");

    // Both keys' secrets open: the device registers, the list shows both.
    register_until_done(&server, "steady", &key).await.unwrap();
    let listed = text(&run_cli(&server, &["keys", "list"]).await);
    assert!(listed.contains(&old) && listed.contains(&new), "{listed}");
    // The old key is refused retirement, naming what it still seals.
    let out = run_cli(&server, &["keys", "retire", &old]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("still sealed under master key"), "{said}");

    // Run again: it continues to the same key rather than adding a third.
    let out = run_cli(&server, &["keys", "rotate"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("continuing the rotation"),
        "{}",
        text(&out)
    );
    assert_eq!(active_key(&server.data_dir), new);
    let keys_in_ring = std::fs::read_dir(server.data_dir.join("keys"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "key")
        })
        .count();
    assert_eq!(keys_in_ring, 2);
    let done = sealed_key_ids(&server);
    assert_eq!(done.keys().collect::<Vec<_>>(), vec![&new], "{done:?}");
    assert!(
        run_cli(&server, &["keys", "retire", &old])
            .await
            .status
            .success()
    );
    register_until_done(&server, "steady", &key).await.unwrap();
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the server's HTTPS port, and the certificate it was shown.
async fn tls_connection(server: &Server) -> (Tls, Vec<u8>) {
    tls_connection_trusting(server, server.tls()).await
}

/// As [`tls_connection`], trusting what `client` trusts.
async fn tls_connection_trusting(
    server: &Server,
    client: Arc<rustls::ClientConfig>,
) -> (Tls, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, leaf)
}

/// `GET /health` on a kept-alive connection; true once a 200 comes back.
async fn healthy(tls: &mut Tls) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            return false;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(15).any(|w| w == b"HTTP/1.1 200 OK") {
            return true;
        }
    }
    false
}

fn leaf_on_disk(data_dir: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(data_dir.join("tls/server.pem")).unwrap();
    onramp_net::tls::certs_from_pem(&pem).unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_development_certificate_near_its_expiry_is_renewed_on_sighup_without_dropping_connections()
 {
    use onramp_net::pki::dev_certs::{Issued, Validity};
    let server = Server::start("127.0.0.1:0");
    let (mut before, first) = tls_connection(&server).await;
    assert!(healthy(&mut before).await);

    // The certificate on disk now expires in 10 days (issued by the same CA).
    let tls_dir = server.data_dir.join("tls");
    let ca = Issued::from_pem(
        &std::fs::read_to_string(tls_dir.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(tls_dir.join("ca.key")).unwrap(),
    )
    .unwrap();
    let expiring = ca.device("localhost", Validity::days(10)).unwrap();
    std::fs::write(tls_dir.join("server.pem"), &expiring.cert_pem).unwrap();
    std::fs::write(tls_dir.join("server.key"), &expiring.key_pem).unwrap();

    // SIGHUP: the server looks, re-issues, and new handshakes get the new one.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut renewed = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while renewed.is_none() && Instant::now() < deadline {
        let (mut fresh, leaf) = tls_connection(&server).await;
        if leaf != first {
            assert!(healthy(&mut fresh).await);
            renewed = Some(leaf);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let renewed = renewed.expect("a new certificate within 30 s of SIGHUP");
    assert_ne!(
        renewed, expiring.cert_der,
        "the expiring certificate is not served"
    );
    assert_eq!(
        renewed,
        leaf_on_disk(&server.data_dir),
        "the renewed one is kept on disk"
    );

    // The connection made before the reload goes on, with the old certificate.
    assert!(healthy(&mut before).await);
    assert_eq!(
        before.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        first.as_slice()
    );
}

#[tokio::test]
async fn a_configured_certificate_is_read_again_on_sighup_without_dropping_connections() {
    let temp = tempfile::tempdir().unwrap();
    let names = onramp_net::pki::default_host_names();
    let one = onramp_net::pki::load_or_create(&temp.path().join("one"), &names).unwrap();
    let two = onramp_net::pki::load_or_create(&temp.path().join("two"), &names).unwrap();
    let (cert, key) = (
        temp.path().join("server.pem"),
        temp.path().join("server.key"),
    );
    std::fs::write(&cert, &one.server_chain_pem).unwrap();
    std::fs::write(&key, &one.server_key_pem).unwrap();
    let config = temp.path().join("onramp.toml");
    std::fs::write(&config, format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n")).unwrap();
    let server = Server::start_in(
        &temp.path().join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    let trust = format!("{}{}", one.ca_pem, two.ca_pem);
    let client = Arc::new(onramp_net::tls::client_config(Some(&trust)).unwrap());
    let connect = || tls_connection_trusting(&server, client.clone());
    let leaf_of = |pem: &str| onramp_net::tls::certs_from_pem(pem).unwrap()[0].to_vec();
    let (mut before, first) = connect().await;
    assert_eq!(first, leaf_of(&one.server_chain_pem));
    assert!(healthy(&mut before).await);

    // A key that does not match the certificate is refused; the old one stays.
    std::fs::write(&cert, &two.server_chain_pem).unwrap();
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    wait_for(Duration::from_secs(30), "the refusal logged", || {
        server.stderr().contains("not reloaded").then_some(())
    });
    assert_eq!(connect().await.1, first);

    // The operator's new pair, then SIGHUP: new handshakes see it.
    std::fs::write(&key, &two.server_key_pem).unwrap();
    hup();
    let wanted = leaf_of(&two.server_chain_pem);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fresh = loop {
        let (tls, leaf) = connect().await;
        if leaf == wanted {
            break tls;
        }
        assert!(Instant::now() < deadline, "the new certificate within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(healthy(&mut fresh).await);
    // The connection made before goes on.
    assert!(healthy(&mut before).await);
}
