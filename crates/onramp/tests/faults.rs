//! Faults under load against one `onramp serve` on SQLite, each with its
//! figures printed (attempted, assigned, lost) and asserted:
//! - the server SIGKILLed in the middle of the load and started again on
//!   the same data directory: every device that heard `assigned` has its
//!   record and its hub identity, no operation is left running, and every
//!   device of the fleet ends assigned with exactly one identity;
//! - the companion hub (`onramp hub serve`, behind a scriptable fault
//!   proxy) refusing connections, then answering 500, then 429: devices
//!   hear a failed registration they retry (500002), no record claims an
//!   identity the hub lacks, and they are assigned once the hub is back;
//! - the data directory's file system full (a small tmpfs): devices hear
//!   503 with Retry-After or a failed registration they retry, the store
//!   stays whole (`PRAGMA integrity_check`), and everything succeeds once
//!   there is room again;
//! - the server's wall clock jumping back an hour and forward two while it
//!   runs (libfaketime): registrations, the throttle, tokens and measured
//!   durations behave;
//! - the server's log unwritable (stderr on /dev/full, as on a full disk):
//!   every request is answered as before, none loses its connection.
//!
//! The fleet is `common::fleet`, as in `scale_out.rs`.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fleet::{Fleet, pause};
use common::{HubProcess, Server, assert_no_running_operation, share_ca};
use onramp_core::ports::{RegistrationRecord, StoreExt};
use onramp_model::RegistrationStatus;
use serde_json::json;

/// A fleet of the enrollment group `group` of `server`, through its endpoint.
async fn fleet_of(server: &Server, group: &str) -> Arc<Fleet> {
    let group_key = server.enroll_group(group, json!({})).await;
    Fleet::new(
        server.http(),
        format!("https://{}", server.endpoint()),
        server.id_scope(),
        group_key,
    )
}

/// Once the load is over: one assigned record per device of the fleet,
/// naming its own device, no running operation left, and the hub holding
/// exactly the fleet's identities: nothing lost, duplicated or half-written.
async fn assert_whole(server: &Server, ids: &BTreeSet<String>, identities: Vec<String>) {
    let store = server.any_store().await;
    let records: Vec<RegistrationRecord> = store.list("default", None, 100_000).await.unwrap();
    let mut seen = BTreeSet::new();
    for r in &records {
        let id = &r.state.registration_id;
        assert!(seen.insert(id.clone()), "two records of {id}");
        assert_eq!(r.state.status, RegistrationStatus::Assigned, "{id}: {r:?}");
        assert_eq!(r.state.device_id.as_deref(), Some(id.as_str()), "{id}");
        assert_no_running_operation(&*store, id).await;
    }
    assert_eq!(&seen, ids, "one record per device");
    let unique: BTreeSet<String> = identities.iter().cloned().collect();
    assert_eq!(unique.len(), identities.len(), "one identity per device");
    assert_eq!(
        &unique, ids,
        "the hub holds exactly the devices' identities"
    );
}

/// The identities of the hub `onramp serve` embeds.
async fn embedded_identities(server: &Server) -> Vec<String> {
    let hub = server.embedded_hub().await;
    let (status, v) = server
        .get(
            hub.connection_string.expose(),
            "devices?api-version=2021-04-12",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| common::text(&d["deviceId"]))
        .collect()
}

/// SIGKILL: no drain, no goodbye.
fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_loses_no_assigned_device() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let first = Server::start_in(&dir, "127.0.0.1:0", &[]);
    let listen = format!("127.0.0.1:{}", first.port());
    let fleet = fleet_of(&first, "kill-one").await;
    let pid = first.pid();
    let server = Arc::new(Mutex::new(Some(first)));
    let devices = 240;
    let (restarted, marked) = (server.clone(), fleet.clone());
    let ids = fleet
        .run("sk", devices, 16, devices / 3, || async move {
            sigkill(pid);
            marked.mark_fault();
            // The killed server's lock and port are free once it is gone.
            tokio::task::block_in_place(|| {
                let old = restarted.lock().unwrap().take();
                // The dead server's handle goes only once the new one runs:
                // on PostgreSQL the harness drops a directory's database
                // with the last server of that directory.
                let again = Server::start_in(&dir, &listen, &[]);
                drop(old);
                *restarted.lock().unwrap() = Some(again);
            });
        })
        .await;
    let server = server.lock().unwrap().take().unwrap();
    let t = &fleet.tally;
    assert!(
        t.after_retry.load(Ordering::SeqCst) > 0,
        "no device was caught by the kill: the fault came at no load"
    );
    assert_whole(&server, &ids, embedded_identities(&server).await).await;
    println!(
        "SIGKILL under load: attempted {devices}, assigned {}, lost 0",
        t.assigned.load(Ordering::SeqCst)
    );
}

/// What the fault proxy does with a new connection, and with the bytes of
/// those it relays.
const PASS: u8 = 0;
const REFUSE: u8 = 1;
const ANSWER_500: u8 = 2;
const ANSWER_429: u8 = 3;

/// A TCP proxy in front of a hub that a test switches between passing
/// through, refusing connections, and answering every request itself with
/// 500 or 429 (over TLS, with the hub's own certificate). Switching away
/// from passing through cuts the connections it relays, so pooled
/// connections see the fault too.
struct FaultProxy {
    port: u16,
    mode: Arc<AtomicU8>,
}

impl FaultProxy {
    fn bind() -> (FaultProxy, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        (
            FaultProxy {
                port,
                mode: Arc::new(AtomicU8::new(PASS)),
            },
            listener,
        )
    }

    fn forward(
        &self,
        listener: std::net::TcpListener,
        upstream: std::net::SocketAddr,
        hub_tls: &Path,
    ) {
        let chain = std::fs::read_to_string(hub_tls.join("server.pem")).unwrap();
        let key = std::fs::read_to_string(hub_tls.join("server.key")).unwrap();
        let tls = Arc::new(onramp_net::tls::server_config(&chain, &key, &[b"http/1.1"]).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let mode = self.mode.clone();
        common::accept_each(listener, move |inbound| {
            let (mode, acceptor) = (mode.clone(), acceptor.clone());
            async move {
                match mode.load(Ordering::SeqCst) {
                    PASS => relay(inbound, upstream, mode).await,
                    REFUSE => drop(inbound),
                    status => answer(inbound, acceptor, status).await,
                }
            }
        });
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// Relays both ways while the proxy passes through.
async fn relay(
    inbound: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    mode: Arc<AtomicU8>,
) {
    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    tokio::join!(pipe(ri, wo, mode.clone()), pipe(ro, wi, mode));
}

/// One direction of [`relay`]: ends once the proxy stops passing through.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if mode.load(Ordering::SeqCst) != PASS || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Answers the first request of a connection with 500 or 429, as IoT Hub's
/// errors look, and closes it.
async fn answer(inbound: tokio::net::TcpStream, acceptor: tokio_rustls::TlsAcceptor, mode: u8) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tls) = acceptor.accept(inbound).await else {
        return;
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let (status, code, extra) = match mode {
        ANSWER_429 => (
            "429 Too Many Requests",
            "ThrottlingException",
            "retry-after: 1\r\n",
        ),
        _ => ("500 Internal Server Error", "ServerError", ""),
    };
    let body = json!({"Message": format!("ErrorCode:{code};injected by the test's fault proxy")})
        .to_string();
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(reply.as_bytes()).await;
    let _ = tls.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_companion_hub_down_or_failing_under_load_loses_nothing() {
    let server = Server::start_with(&["--embedded-hub", "false"]);
    let hub_dir = server.data_dir.parent().unwrap().join("hub");
    share_ca(&server.data_dir, &hub_dir);
    let (proxy, listener) = FaultProxy::bind();
    let hub = HubProcess::start(&hub_dir, Some(&format!("localhost:{}", proxy.port)));
    proxy.forward(listener, hub.listen, &hub_dir.join("tls"));
    server.cli_ok(&[
        "linked-hub",
        "add",
        "--companion",
        "--connection-string",
        &hub.connection_string,
    ]);
    let fleet = fleet_of(&server, "hub-faults").await;
    let devices = 200;
    let ids = fleet
        .run("hf", devices, 12, devices / 4, || async {
            fleet.mark_fault();
            for mode in [REFUSE, ANSWER_500, ANSWER_429] {
                proxy.set(mode);
                // Each fault lasts until devices have met it.
                let before = fleet.tally.hub_failures.load(Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(20);
                while fleet.tally.hub_failures.load(Ordering::SeqCst) < before + 5 {
                    assert!(
                        Instant::now() < deadline,
                        "no device met fault {mode}: {:?}",
                        fleet.tally.errors.lock().unwrap()
                    );
                    pause(Duration::from_millis(20)).await;
                }
                // Meanwhile no assigned record names an identity the hub lacks.
                assert_no_phantom(&server, &hub).await;
            }
            proxy.set(PASS);
        })
        .await;
    let t = &fleet.tally;
    assert!(t.hub_failures.load(Ordering::SeqCst) >= 15);
    assert_whole(&server, &ids, hub.device_ids().await).await;
    println!(
        "companion hub refusing, 500, 429 under load: attempted {devices}, assigned {}, hub failures retried {}, lost 0",
        t.assigned.load(Ordering::SeqCst),
        t.hub_failures.load(Ordering::SeqCst)
    );
}

/// Every assigned record in the store names an identity the hub has.
async fn assert_no_phantom(server: &Server, hub: &HubProcess) {
    let store = server.any_store().await;
    let records: Vec<RegistrationRecord> = store.list("default", None, 100_000).await.unwrap();
    let identities: BTreeSet<String> = hub.device_ids().await.into_iter().collect();
    for r in records {
        let state = &r.state;
        if state.status == RegistrationStatus::Assigned {
            let device = state.device_id.clone().unwrap();
            assert!(
                identities.contains(&device),
                "the record of {} names {device}, which the hub does not have",
                state.registration_id
            );
        }
    }
}

/// A tmpfs mounted for a test, unmounted when it ends.
struct Mounted(std::path::PathBuf);

impl Mounted {
    /// Mounts a tmpfs of `size` on `dir`; None when this machine refuses.
    fn tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs (needs root and a kernel that allows it): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mounted(dir.to_owned()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_with_errors_devices_retry_and_recovers() {
    if common::sqlite_only("a full file system under the embedded store's data directory") {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let mnt = temp.path().join("small");
    let Some(_mounted) = Mounted::tmpfs(&mnt, "32m") else {
        return;
    };
    let server = Server::start_in(&mnt.join("data"), "127.0.0.1:0", &[]);
    let fleet = fleet_of(&server, "disk-full").await;
    let filler = mnt.join("filler");
    let devices = 160;
    let service_answer = Mutex::new(None);
    let ids = fleet
        .run("df", devices, 8, devices / 5, || async {
            let filled = fill(&filler);
            fleet.mark_fault();
            let t = &fleet.tally;
            let met = || {
                t.unavailable.load(Ordering::SeqCst) + t.hub_failures.load(Ordering::SeqCst)
            };
            let before = met();
            let deadline = Instant::now() + Duration::from_secs(30);
            while met() < before + 5 {
                assert!(
                    Instant::now() < deadline,
                    "no device met the full disk ({filled} bytes of filler)"
                );
                // More filler as the store's files grab what frees up.
                fill(&mnt.join(format!("filler-{}", met())));
                pause(Duration::from_millis(20)).await;
            }
            // The service API says so too.
            let (status, body) = server
                .owner_call(
                    reqwest::Method::PUT,
                    "enrollments/df-late?api-version=2021-10-01",
                    Some(json!({"registrationId": "df-late", "attestation": {"type": "symmetricKey"}})),
                )
                .await;
            *service_answer.lock().unwrap() = Some((status, body));
            for entry in std::fs::read_dir(&mnt).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap().to_string_lossy().starts_with("filler") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        })
        .await;
    let t = &fleet.tally;
    let (status, body) = service_answer.lock().unwrap().take().unwrap();
    println!("service API on a full disk: {status} {body}");
    assert!(
        status == 503 && body["errorCode"].as_u64().is_some_and(|c| c / 1000 == 503),
        "a full disk is a 503 with an Azure error: {status} {body}"
    );
    assert!(common::text(&body["message"]).len() > 10, "{body}");
    // The store is whole, and holds exactly what devices were told.
    let conn = rusqlite::Connection::open(server.data_dir.join("onramp.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_whole(&server, &ids, embedded_identities(&server).await).await;
    println!(
        "full disk under load: attempted {devices}, assigned {}, 503s {}, hub failures {}, lost 0",
        t.assigned.load(Ordering::SeqCst),
        t.unavailable.load(Ordering::SeqCst),
        t.hub_failures.load(Ordering::SeqCst)
    );
}

/// A register call with a token signed for ten minutes of a clock two
/// hours ahead of the test's.
async fn register_two_hours_ahead(
    server: &Server,
    id: &str,
    key: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let token = server.device_token(id, key, common::unix_now() + 2 * 3600 + 600);
    let body = json!({ "registrationId": id }).to_string().into_bytes();
    server
        .register_raw(
            &server.id_scope(),
            id,
            "?api-version=2021-06-01",
            Some(&token),
            body,
        )
        .await
}

/// Debian's libfaketime, which the test preloads into `onramp serve`.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The server's wall clock jumps back an hour, then forward two, while it
/// runs (libfaketime reading its offset from a file on every call; the
/// monotonic clock is left alone, as a real NTP step leaves it): a device
/// registers again after the jump back (its new operation is not taken for
/// an older one); the registration throttle, on the monotonic clock, is
/// neither emptied nor refilled by the jumps; a token is judged by the
/// server's clock of the moment; the latency measured stays sane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_jumping_under_a_running_server() {
    if !Path::new(LIBFAKETIME).exists() {
        eprintln!(
            "skipped: {LIBFAKETIME} is missing (the faketime package; scripts/test installs it)"
        );
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let offset = temp.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let config = temp.path().join("onramp.toml");
    std::fs::write(&config, "[throttle]\ndevice_registrations_per_minute = 2\n").unwrap();
    let preload = format!("LD_PRELOAD={LIBFAKETIME}");
    let file = format!("FAKETIME_TIMESTAMP_FILE={}", offset.display());
    let server = Server::start_wrapped(
        &temp.path().join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[
            "env",
            &preload,
            &file,
            "FAKETIME_NO_CACHE=1",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
        ],
    );
    const API: &str = "?api-version=2021-06-01";
    let key = server.enroll("clock-1", json!({})).await;
    let (status, _, op) = server.register("clock-1", &key, API).await;
    assert!(status == 200 || status == 202, "{status} {op}");
    assert_eq!(op["status"], "assigned", "{op}");

    // An hour back: the device registers again and is assigned.
    std::fs::write(&offset, "-1h\n").unwrap();
    let (status, _, op) = server.register("clock-1", &key, API).await;
    assert_eq!(
        op["status"], "assigned",
        "after the jump back: {status} {op}"
    );
    let record = server.cli_json(&["registration", "show", "clock-1"]);
    assert_eq!(record["status"], "assigned", "{record}");

    // Its budget of two a minute is spent, whatever the wall clock says.
    let (status, headers, op) = server.register("clock-1", &key, API).await;
    assert_eq!(status, 429, "{op}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "Retry-After {wait}");

    // Two hours forward: still spent (a wall jump refills no bucket). (The
    // test's service token is signed by its own clock: enroll first.)
    let other = server.enroll("clock-2", json!({})).await;
    std::fs::write(&offset, "+2h\n").unwrap();
    let (status, _, op) = register_two_hours_ahead(&server, "clock-1", &key).await;
    assert_eq!(status, 429, "a jump forward refilled the bucket: {op}");
    // A token is judged by the server's clock of the moment: one signed for
    // ten minutes of the device's clock has expired; one for ten minutes
    // of the server's is good.
    let (status, _, op) = server.register("clock-2", &other, API).await;
    assert_eq!(status, 401, "{op}");
    let (status, _, op) = register_two_hours_ahead(&server, "clock-2", &other).await;
    assert!(status == 200 || status == 202, "{status} {op}");
    assert_eq!(op["status"], "assigned", "{op}");

    // Durations are measured on the monotonic clock: none is negative or
    // hours long.
    let metrics = server.metrics().await;
    let total = |suffix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("onramp_registration_duration_seconds_{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (sum, count) = (total("sum"), total("count"));
    assert!(count >= 3.0, "{metrics}");
    assert!(
        (0.0..count * 10.0).contains(&sum),
        "durations: sum {sum} of {count}"
    );
    println!(
        "wall clock -1 h then +2 h under onramp serve: 3 registrations assigned, 2 throttled, 1 stale token refused; duration sum {sum:.3} s over {count}"
    );
}

/// Runs the rest of its arguments with stderr on /dev/full, where every
/// write fails with ENOSPC as a log file's does on a full disk.
const STDERR_ON_DEV_FULL: [&str; 4] = ["sh", "-c", "exec \"$@\" 2>/dev/full", "sh"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_stops_no_request() {
    // The tests' servers log connections at debug and refusals at info:
    // every request writes (and fails to write) lines.
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_wrapped(data.path(), "127.0.0.1:0", &[], &STDERR_ON_DEV_FULL);
    const API: &str = "?api-version=2021-06-01";
    let mut answered = 0;
    for i in 0..10 {
        let id = format!("unlogged-{i}");
        let key = server.enroll(&id, json!({})).await;
        let (status, _, op) = server.register(&id, &key, API).await;
        assert!(status == 200 || status == 202, "{status} {op}");
        assert_eq!(op["status"], "assigned", "{op}");
        // A wrong key is logged as a refusal, and refused.
        let wrong = onramp_core::sas::derive_device_key(&key, "another device").unwrap();
        let (status, _, op) = server.register(&id, &wrong, API).await;
        assert_eq!(status, 401, "{op}");
        answered += 2;
    }
    let record = server.cli_json(&["registration", "show", "unlogged-3"]);
    assert_eq!(record["status"], "assigned", "{record}");
    println!("stderr on /dev/full: {answered} registrations answered, then a service call");
}
