//! Scale-out under faults, in the layout of docs/scale-out.md, started here:
//! three `onramp serve` nodes on one PostgreSQL behind HAProxy (TCP mode, so
//! TLS goes through to the nodes; health checks on `/health`), and the
//! companion hub as a process of its own (`onramp hub serve`).
//!
//! `onramp bench` (a fresh TLS connection for every device, no session
//! resumption, each device retrying as an SDK does for up to two minutes)
//! registers a fleet through HAProxy while the test
//! - SIGKILLs one node: the load goes on through the other two, devices
//!   whose node died succeed on retry;
//! - restarts PostgreSQL (a private cluster of the test's own, stopped as
//!   by a crash): registrations in the window hear 503 with `Retry-After`
//!   and an Azure error body, and succeed once it is back.
//!
//! Either way, once the load is over, every device has exactly one
//! registration record (assigned, naming its own device on the hub), no
//! running operation is left, and the hub holds exactly one identity per
//! device and none other: nothing lost, duplicated or half-written. The
//! devices' fates come from the bench's outcomes file (`--outcomes`, every
//! answer a device heard); the figures (attempted, assigned at the first
//! try, assigned after a retry, lost) are printed (`--nocapture`).
//!
//! Skipped without PostgreSQL, HAProxy or (for the restart) Debian's
//! `initdb`, unless `ONRAMP_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{HubProcess, Server, assert_no_running_operation, dead_port, share_ca};
use onramp_core::ports::{RegistrationRecord, StoreExt};
use onramp_model::RegistrationStatus;
use onramp_store::{PgStore, Sealer};
use onramp_testkit::postgres::TestDatabase;
use serde_json::{Value, json};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const HAPROXY: &str = "haproxy";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn required() -> bool {
    std::env::var("ONRAMP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// False (with a message) when `what` is missing and not required.
fn present(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(
            !required(),
            "ONRAMP_REQUIRE_POSTGRES=1 but {what} is missing"
        );
        eprintln!("skipped: {what} is missing (scripts/test installs it)");
    }
    ok
}

fn haproxy_installed() -> bool {
    let version = Command::new(HAPROXY).arg("-v").output();
    version.is_ok_and(|o| o.status.success())
}

/// A child process killed with the guard.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The deployment of docs/scale-out.md on loopback.
struct Deployment {
    nodes: Vec<Server>,
    hub: HubProcess,
    _haproxy: Guard,
    /// Where devices connect: HAProxy's frontend.
    front: SocketAddr,
    store_url: String,
    keys: PathBuf,
    ca_pem: String,
    id_scope: String,
    _temp: tempfile::TempDir,
}

/// The configuration file of one node (as docs/scale-out.md gives it).
fn node_config(name: &str, store_url: &str, hub_connection_string: &str) -> String {
    format!(
        "[node]\nname = \"{name}\"\nregion = \"local\"\n\n\
         [store]\nurl = \"{store_url}\"\n\n\
         [hub]\nembedded = false\n\n\
         [[linked_hubs]]\nconnection_string = \"{hub_connection_string}\"\nlocation = \"local\"\n"
    )
}

/// HAProxy in TCP mode in front of `nodes`: TLS passes through, a health
/// check is `GET /health` over TLS, a connection the chosen node refuses is
/// sent to another.
fn haproxy_config(front: SocketAddr, nodes: &[(&str, u16)]) -> String {
    let mut cfg = format!(
        "global\n    maxconn 2048\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 3\n    option redispatch\n\n\
         frontend dps\n    bind {front}\n    default_backend onramp\n\n\
         backend onramp\n    balance roundrobin\n    option httpchk\n    \
         http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost\n    \
         http-check expect status 200\n    \
         default-server check check-ssl verify none inter 500ms fall 2 rise 2\n"
    );
    for (name, port) in nodes {
        cfg.push_str(&format!("    server {name} 127.0.0.1:{port}\n"));
    }
    cfg
}

impl Deployment {
    /// Starts the hub, three nodes on `store_url` sharing the hub's
    /// development CA and one master key ring, and HAProxy before them.
    async fn start(store_url: &str) -> Deployment {
        let temp = tempfile::tempdir().unwrap();
        let hub_dir = temp.path().join("hub");
        let hub = HubProcess::start(&hub_dir, None);
        let keys = temp.path().join("keys");
        Sealer::load_or_create(&keys).unwrap();
        let mut nodes = Vec::new();
        for name in NODES {
            let dir = temp.path().join(name);
            copy_dir(&keys, &dir.join("keys"));
            share_ca(&hub_dir, &dir);
            let config = temp.path().join(format!("{name}.toml"));
            std::fs::write(
                &config,
                node_config(name, store_url, &hub.connection_string),
            )
            .unwrap();
            let config = config.to_str().unwrap();
            nodes.push(Server::start_in(
                &dir,
                "127.0.0.1:0",
                &["--config", config, "--store-url", store_url],
            ));
        }
        let front: SocketAddr = format!("127.0.0.1:{}", dead_port()).parse().unwrap();
        let ports: Vec<_> = NODES
            .iter()
            .zip(&nodes)
            .map(|(n, s)| (*n, s.port()))
            .collect();
        let cfg = temp.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(front, &ports)).unwrap();
        let log = std::fs::File::create(temp.path().join("haproxy.log")).unwrap();
        let haproxy = Guard(
            Command::new(HAPROXY)
                .arg("-f")
                .arg(&cfg)
                .arg("-db")
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
        let deployment = Deployment {
            id_scope: nodes[0].id_scope(),
            ca_pem: nodes[0].ca_pem.clone(),
            nodes,
            hub,
            _haproxy: haproxy,
            front,
            store_url: store_url.to_owned(),
            keys,
            _temp: temp,
        };
        deployment.wait_for_front().await;
        deployment
    }

    /// Waits (up to 30 s) until `/health` answers through HAProxy.
    async fn wait_for_front(&self) {
        let client = self.client();
        let url = format!("https://{}/health", self.front);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "HAProxy never answered /health");
            // A condition poll: ends as soon as HAProxy answers.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An HTTPS client that opens a fresh TLS connection (no resumption)
    /// for every request, as a fleet of devices does.
    fn client(&self) -> reqwest::Client {
        let mut tls = onramp_net::tls::client_config(Some(&self.ca_pem)).unwrap();
        tls.resumption = rustls::client::Resumption::disabled();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    async fn store(&self) -> PgStore {
        let sealer = Arc::new(Sealer::load_or_create(&self.keys).unwrap());
        PgStore::open(&self.store_url, sealer, Default::default())
            .await
            .unwrap()
    }

    /// SIGKILLs node `i`: no drain, no goodbye.
    fn kill(&self, i: usize) {
        let status = Command::new("kill")
            .args(["-KILL", &self.nodes[i].pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Every device of `ids` has exactly one registration record, assigned,
    /// naming its own device on the hub, and no running operation; the hub
    /// holds exactly one identity per device and no other.
    async fn assert_whole(&self, ids: &BTreeSet<String>) {
        let store = self.store().await;
        let records: Vec<RegistrationRecord> = store.list("default", None, 100_000).await.unwrap();
        let mut seen = BTreeSet::new();
        let hub_name = self.hub.name();
        for r in &records {
            let id = &r.state.registration_id;
            assert!(seen.insert(id.clone()), "two records of {id}");
            assert!(
                ids.contains(id),
                "a record of a device that never registered: {id}"
            );
            assert_eq!(r.state.status, RegistrationStatus::Assigned, "{id}: {r:?}");
            assert_eq!(r.state.device_id.as_deref(), Some(id.as_str()), "{id}");
            assert_eq!(
                r.state.assigned_hub.as_deref(),
                Some(hub_name.as_str()),
                "{id}"
            );
            assert_no_running_operation(&store, id).await;
        }
        assert_eq!(&seen, ids, "one record per device");
        let identities: Vec<String> = self.hub.device_ids().await;
        let unique: BTreeSet<String> = identities.iter().cloned().collect();
        assert_eq!(unique.len(), identities.len(), "one identity per device");
        assert_eq!(
            &unique, ids,
            "the hub holds exactly the devices' identities"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// How long a device keeps trying before the test calls it lost.
const DEVICE_DEADLINE_SECONDS: &str = "120";

/// `onramp bench` through HAProxy: devices of one symmetric-key group, a
/// fresh TLS connection each (no session resumption), trying as SDKs do
/// (`--retry-for`: a 503 waited out for its `Retry-After`, `assigning`
/// polled through whichever node HAProxy picks, a broken connection or an
/// operation no node knows registered again). Every answer a device hears
/// lands in its outcomes file as it hears it.
struct Bench {
    child: tokio::process::Child,
    outcomes: PathBuf,
    devices: u64,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start(d: &Deployment, group: &str, devices: u64, concurrency: u64) -> Bench {
        let group_key = d.nodes[0].enroll_group(group, json!({})).await;
        let dir = tempfile::tempdir().unwrap();
        let outcomes = dir.path().join("outcomes.jsonl");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_onramp"))
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--endpoint", &d.front.to_string(), "--scope", &d.id_scope])
            .arg("--ca")
            .arg(d.nodes[0].ca_path())
            .args(["--group-key", &group_key, "--prefix", group])
            .args(["--devices", &devices.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--connections", "fresh", "--json"])
            .args(["--retry-for", DEVICE_DEADLINE_SECONDS])
            // Polls come sooner than the advised 3 s, to keep the test short.
            .args(["--poll-interval-ms", "100"])
            .arg("--outcomes")
            .arg(&outcomes)
            .env_remove("ONRAMP_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Bench {
            child,
            outcomes,
            devices,
            _dir: dir,
        }
    }

    /// The answers heard so far, oldest first (a line being written is left out).
    fn heard(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.outcomes).unwrap_or_default();
        let Some((whole, _)) = text.rsplit_once('\n') else {
            return Vec::new();
        };
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (up to 120 s) until `enough` holds of the answers heard.
    async fn wait_for(&mut self, what: &str, enough: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let heard = self.heard();
            if enough(&heard) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("onramp bench ended ({status}) before {what}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                Tally::of(&heard, 0)
            );
            // A condition poll on the load's progress.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` devices are assigned.
    async fn wait_for_assigned(&mut self, n: u64) {
        let what = format!("{n} assigned devices");
        self.wait_for(&what, |heard| {
            Tally::of(heard, 0).assigned.len() as u64 >= n
        })
        .await;
    }

    /// Waits for the bench to end (every device assigned or out of time)
    /// and sums up what the devices heard, the fault at Unix ms `fault`.
    async fn finish(self, prefix: &str, fault: u64) -> Tally {
        let out = tokio::time::timeout(Duration::from_secs(300), self.child.wait_with_output())
            .await
            .expect("onramp bench ended within 300 s")
            .unwrap();
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "onramp bench: {summary}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&self.outcomes).unwrap();
        let heard: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let t = Tally::of(&heard, fault);
        println!(
            "scale-out ({prefix}): attempted {}, assigned {} ({} at the first try, {} after a retry; {} started after the fault), lost {}; 503s {}; failed requests by kind: {:?}; onramp bench: {}",
            self.devices,
            t.assigned.len(),
            t.first_try,
            t.after_retry,
            t.started_after_fault,
            t.lost.len(),
            t.unavailable,
            t.errors,
            summary.trim()
        );
        assert!(t.lost.is_empty(), "devices lost: {:?}", t.lost);
        assert!(
            t.bad_503.is_empty(),
            "503s without Retry-After or an Azure error body: {:?}",
            t.bad_503
        );
        assert_eq!(
            t.assigned.len() as u64,
            self.devices,
            "every device ended assigned: {t:?}"
        );
        t
    }
}

/// What the devices of a bench run heard (its outcomes file).
#[derive(Debug, Default)]
struct Tally {
    /// The devices assigned.
    assigned: BTreeSet<String>,
    /// Devices assigned at their first request.
    first_try: u64,
    /// Devices assigned after at least one failed request.
    after_retry: u64,
    /// Devices assigned that began after the fault.
    started_after_fault: u64,
    /// The devices that ended without being assigned, with their last answer.
    lost: Vec<Value>,
    /// 503 answers.
    unavailable: u64,
    /// 503 answers without `Retry-After` or an Azure error body.
    bad_503: Vec<Value>,
    /// Failed requests by kind: connection errors, statuses.
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn of(heard: &[Value], fault: u64) -> Tally {
        let mut t = Tally::default();
        for h in heard {
            let id = h["registrationId"].as_str().unwrap().to_owned();
            if h["status"] == 503 {
                t.unavailable += 1;
                let azure = h["errorCode"].as_u64().is_some_and(|c| c / 1000 == 503)
                    && h["message"].is_string();
                if h["retryAfter"].as_u64().is_none() || !azure {
                    t.bad_503.push(h.clone());
                }
            }
            if h["outcome"] == "retry" {
                let kind = match h["status"].as_u64() {
                    Some(status) => format!("{status} {}", h["errorCode"]),
                    None => "connection".into(),
                };
                *t.errors.entry(kind).or_default() += 1;
            }
            if h["final"] != true {
                continue;
            }
            if h["outcome"] != "assigned" {
                t.lost.push(h.clone());
                continue;
            }
            assert!(t.assigned.insert(id.clone()), "{id} was assigned twice");
            if h["failures"] == 0 {
                t.first_try += 1;
            } else {
                t.after_retry += 1;
            }
            if h["started"].as_u64().unwrap() > fault {
                t.started_after_fault += 1;
            }
        }
        t
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One node is SIGKILLed in the middle of the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing() {
    if !present(haproxy_installed(), "HAProxy (the haproxy package)") {
        return;
    }
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut d = Deployment::start(db.url()).await;
    let devices = 300;
    let mut bench = Bench::start(&d, "kill", devices, 16).await;
    bench.wait_for_assigned(devices / 3).await;
    let fault = unix_ms();
    d.kill(1);
    let t = bench.finish("kill", fault).await;
    assert!(
        t.after_retry > 0,
        "no device was caught on the killed node: the fault came at no load"
    );
    assert!(
        t.started_after_fault >= devices / 3,
        "the load went on through the other nodes"
    );
    let ids = t.assigned;
    d.assert_whole(&ids).await;
    // The survivors stop cleanly; the killed one is gone.
    d.nodes[2].stop();
    d.nodes[0].stop();
}

/// A private PostgreSQL cluster on a free port, run by user postgres.
struct PrivateCluster {
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn as_postgres(program: &str) -> Command {
    let path = format!("{PG_BIN}/{program}");
    // initdb refuses root: run the server's tools as its own user.
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run_ok(mut c: Command, what: &str) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivateCluster {
    fn create() -> PrivateCluster {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            run_ok(
                {
                    let mut c = Command::new("chown");
                    c.args(["postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut initdb = as_postgres("initdb");
        initdb
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data);
        run_ok(initdb, "initdb");
        let cluster = PrivateCluster {
            data,
            port: dead_port(),
            _dir: dir,
        };
        cluster.start();
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&self) {
        let mut c = as_postgres("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}",
                self.port,
                self.data.display()
            ))
            .arg("start");
        run_ok(c, "pg_ctl start");
    }

    /// Stops as a crash would: no checkpoint, recovery at the next start.
    fn crash(&self) {
        let mut c = as_postgres("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        run_ok(c, "pg_ctl stop");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// PostgreSQL stops (as by a crash) in the middle of the load and comes
/// back once devices have heard 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_loses_nothing() {
    if !present(haproxy_installed(), "HAProxy (the haproxy package)")
        || !present(
            Path::new(PG_BIN).join("initdb").exists(),
            "Debian's initdb (postgresql-15)",
        )
    {
        return;
    }
    let cluster = PrivateCluster::create();
    let d = Deployment::start(&cluster.url()).await;
    let devices = 300;
    let mut bench = Bench::start(&d, "restart", devices, 16).await;
    bench.wait_for_assigned(devices / 3).await;
    let fault = unix_ms();
    cluster.crash();
    // PostgreSQL comes back once devices heard it was gone.
    bench
        .wait_for("three 503s while PostgreSQL is down", |heard| {
            Tally::of(heard, fault).unavailable >= 3
        })
        .await;
    cluster.start();
    let t = bench.finish("restart", fault).await;
    assert!(t.after_retry > 0, "no device had to retry");
    let ids = t.assigned;
    d.assert_whole(&ids).await;
}
