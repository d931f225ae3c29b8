//! Scale-out under faults, in the layout of docs/scale-out.md, started here:
//! three `onramp serve` nodes on one PostgreSQL behind HAProxy (TCP mode, so
//! TLS goes through to the nodes; health checks on `/health`), and the
//! companion hub as a process of its own (`onramp hub serve`).
//!
//! A pool of simulated devices (a fresh TLS connection for every request,
//! no session resumption) registers through HAProxy while the test
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
//! figures (attempted, assigned at the first try, assigned after a retry,
//! lost) are printed (`--nocapture`).
//!
//! Skipped without PostgreSQL, HAProxy or (for the restart) Debian's
//! `initdb`, unless `ONRAMP_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{HubProcess, Server, dead_port, share_ca, unix_now};
use onramp_core::ports::{RegistrationRecord, Store, StoreExt};
use onramp_model::{IdKey, RegistrationStatus};
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
            let running = store.operation("default", &IdKey::of(id)).await.unwrap();
            assert!(
                running.is_none(),
                "{id}: a running operation left: {running:?}"
            );
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

/// What the simulated fleet saw.
#[derive(Default)]
struct Tally {
    assigned: AtomicU64,
    /// Devices assigned at their first request.
    first_try: AtomicU64,
    /// Devices assigned after at least one failed request.
    after_retry: AtomicU64,
    /// Devices whose registration started after the fault and were assigned.
    started_after_fault: AtomicU64,
    /// 503 answers with `Retry-After` and an Azure error body.
    unavailable: AtomicU64,
    /// Failures by kind: connection errors, statuses.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Set once the fault is made.
    fault: Mutex<Option<Instant>>,
}

impl Tally {
    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// The fleet: devices of one symmetric-key group, through HAProxy.
struct Fleet {
    client: reqwest::Client,
    base: String,
    scope: String,
    group_key: String,
    tally: Tally,
}

/// How long a device keeps trying before the test calls it lost.
const DEVICE_DEADLINE: Duration = Duration::from_secs(120);

impl Fleet {
    fn token(&self, id: &str) -> String {
        let key = onramp_core::sas::derive_device_key(&self.group_key, id).unwrap();
        onramp_core::sas::sign(
            &format!("{}/registrations/{id}", self.scope),
            &key,
            unix_now() + 600,
            Some("registration"),
        )
        .unwrap()
    }

    /// Registers `id` as a device would: polls `assigning` (through
    /// whichever node HAProxy picks), waits `Retry-After` after a 503, and
    /// registers again after a broken connection or an operation no node
    /// knows. Ok once assigned; Err when refused for good or out of time.
    async fn provision(&self, id: &str) -> Result<(), String> {
        let started = Instant::now();
        let after_fault = self.tally.fault.lock().unwrap().is_some();
        let token = self.token(id);
        let register = format!(
            "{}/{}/registrations/{id}/register?api-version=2021-06-01",
            self.base, self.scope
        );
        let mut operation: Option<String> = None;
        let mut failures = 0u32;
        loop {
            if started.elapsed() > DEVICE_DEADLINE {
                return Err(format!("{id}: not assigned after {DEVICE_DEADLINE:?}"));
            }
            let request = match &operation {
                None => self
                    .client
                    .put(&register)
                    .header("Content-Type", "application/json")
                    .body(json!({ "registrationId": id }).to_string()),
                Some(op) => self.client.get(format!(
                    "{}/{}/registrations/{id}/operations/{op}?api-version=2021-06-01",
                    self.base, self.scope
                )),
            };
            let (status, retry_after, body) =
                match send(request.header("Authorization", &token)).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        self.tally.error(format!("connection: {e}"));
                        failures += 1;
                        operation = None;
                        pause(Duration::from_millis(100)).await;
                        continue;
                    }
                };
            match (status, body["status"].as_str()) {
                (200 | 202, Some("assigned")) => {
                    let t = &self.tally;
                    t.assigned.fetch_add(1, Ordering::SeqCst);
                    let which = if failures == 0 {
                        &t.first_try
                    } else {
                        &t.after_retry
                    };
                    which.fetch_add(1, Ordering::SeqCst);
                    if after_fault {
                        t.started_after_fault.fetch_add(1, Ordering::SeqCst);
                    }
                    return Ok(());
                }
                (200 | 202, Some("assigning")) => {
                    operation = Some(body["operationId"].as_str().unwrap().to_owned());
                    // Polls come sooner than the advised 3 s, to keep the test short.
                    pause(Duration::from_millis(100)).await;
                }
                (503, _) => {
                    let seconds = retry_after
                        .ok_or_else(|| format!("{id}: 503 without Retry-After: {body}"))?;
                    if body["errorCode"].as_u64().is_none_or(|c| c / 1000 != 503)
                        || !body["message"].is_string()
                    {
                        return Err(format!("{id}: 503 without an Azure error body: {body}"));
                    }
                    self.tally.unavailable.fetch_add(1, Ordering::SeqCst);
                    self.tally.error(format!("503 {}", body["errorCode"]));
                    failures += 1;
                    operation = None;
                    pause(Duration::from_secs(u64::from(seconds))).await;
                }
                // An operation no node knows (its node died before it was
                // shared): register again.
                (404, _) if operation.is_some() => {
                    self.tally.error("poll: 404".into());
                    failures += 1;
                    operation = None;
                }
                _ => return Err(format!("{id}: {status} {body}")),
            }
        }
    }

    /// Registers `devices` devices (`{prefix}-{n}`), `concurrency` at a
    /// time; once `fault_after` are assigned, runs `fault` (the load goes
    /// on meanwhile). The IDs of the fleet.
    async fn run<F, Fut>(
        self: &Arc<Self>,
        prefix: &str,
        devices: u64,
        concurrency: u64,
        fault_after: u64,
        fault: F,
    ) -> BTreeSet<String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let next = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (fleet, next, lost, prefix) =
                    (self.clone(), next.clone(), lost.clone(), prefix.to_owned());
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= devices {
                            return;
                        }
                        if let Err(e) = fleet.provision(&format!("{prefix}-{n:04}")).await {
                            lost.lock().unwrap().push(e);
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.tally.assigned.load(Ordering::SeqCst) < fault_after {
            assert!(
                Instant::now() < deadline,
                "the load never reached {fault_after} assigned devices: {} assigned, failed requests {:?}, lost {:?}",
                self.tally.assigned.load(Ordering::SeqCst),
                self.tally.errors.lock().unwrap(),
                lost.lock().unwrap()
            );
            // A condition poll on the load's progress.
            pause(Duration::from_millis(10)).await;
        }
        fault().await;
        for w in workers {
            w.await.unwrap();
        }
        let t = &self.tally;
        let lost = lost.lock().unwrap().clone();
        println!(
            "scale-out ({prefix}): attempted {devices}, assigned {} ({} at the first try, {} after a retry; {} started after the fault), lost {}; 503s {}; failed requests by kind: {:?}",
            t.assigned.load(Ordering::SeqCst),
            t.first_try.load(Ordering::SeqCst),
            t.after_retry.load(Ordering::SeqCst),
            t.started_after_fault.load(Ordering::SeqCst),
            lost.len(),
            t.unavailable.load(Ordering::SeqCst),
            t.errors.lock().unwrap(),
        );
        assert!(lost.is_empty(), "devices lost: {lost:?}");
        (0..devices).map(|n| format!("{prefix}-{n:04}")).collect()
    }

    fn mark_fault(&self) {
        *self.tally.fault.lock().unwrap() = Some(Instant::now());
    }
}

/// A device's wait between two requests (a retry's pause, a poll's).
async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Sends `req`: the status, the `Retry-After` seconds, the JSON answered.
async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Option<u32>, Value), String> {
    let resp = req.send().await.map_err(|e| error_kind(&e))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = resp.text().await.map_err(|e| error_kind(&e))?;
    Ok((
        status,
        retry_after,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// A connection error's kind, without the address (so they count together).
fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "broken".into()
    }
}

async fn fleet(d: &Deployment, group: &str) -> Arc<Fleet> {
    let group_key = d.nodes[0].enroll_group(group, json!({})).await;
    Arc::new(Fleet {
        client: d.client(),
        base: format!("https://{}", d.front),
        scope: d.id_scope.clone(),
        group_key,
        tally: Tally::default(),
    })
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
    let fleet = fleet(&d, "kill-fleet").await;
    let devices = 300;
    let ids = fleet
        .run("kill", devices, 16, devices / 3, || async {
            d.kill(1);
            fleet.mark_fault();
        })
        .await;
    let t = &fleet.tally;
    assert!(
        t.after_retry.load(Ordering::SeqCst) > 0,
        "no device was caught on the killed node: the fault came at no load"
    );
    assert!(
        t.started_after_fault.load(Ordering::SeqCst) >= devices / 3,
        "the load went on through the other nodes"
    );
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
    let fleet = fleet(&d, "restart-fleet").await;
    let devices = 300;
    let ids = fleet
        .run("restart", devices, 16, devices / 3, || async {
            cluster.crash();
            fleet.mark_fault();
            let deadline = Instant::now() + Duration::from_secs(60);
            while fleet.tally.unavailable.load(Ordering::SeqCst) < 3 {
                assert!(
                    Instant::now() < deadline,
                    "no device heard 503 while PostgreSQL was down"
                );
                // A condition poll: PostgreSQL comes back once devices heard it was gone.
                pause(Duration::from_millis(10)).await;
            }
            cluster.start();
        })
        .await;
    assert!(fleet.tally.after_retry.load(Ordering::SeqCst) > 0);
    d.assert_whole(&ids).await;
}
