//! Test harness: the real `onramp` binary on loopback, and clients for it.
#![allow(dead_code)]

pub mod fleet;
pub mod hub;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onramp_core::ports::StoreExt;
use onramp_core::ports::{DeviceAt, Store};
use onramp_core::sas;
use onramp_core::tenant::LinkedHub;
use onramp_model::IdKey;
use onramp_store::sqlite::SqliteOptions;
use onramp_store::{Sealer, SqliteStore};
use onramp_testkit::postgres::TestDatabase;
use serde_json::Value;

pub fn onramp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onramp"))
}

/// Waits for `check` to return Some, polling every 20 ms, up to `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        // A condition poll, not a sleep for luck: the loop ends as soon as the condition holds.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The PostgreSQL database of `data_dir`'s deployment when
/// `ONRAMP_TEST_STORE=postgres` (`None` on SQLite, the default): made on the
/// server `ONRAMP_TEST_POSTGRES` names the first time a server starts on the
/// directory, shared by every server started on it again (a restart keeps
/// its data), and dropped with the last of them.
fn test_database(data_dir: &Path) -> Option<Arc<TestDatabase>> {
    type Databases = Vec<(PathBuf, std::sync::Weak<TestDatabase>)>;
    static DATABASES: std::sync::Mutex<Databases> = std::sync::Mutex::new(Vec::new());
    if !on_postgres() {
        return None;
    }
    let mut databases = DATABASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    databases.retain(|(_, db)| db.strong_count() > 0);
    let kept = databases
        .iter()
        .find(|(dir, _)| dir == data_dir)
        .and_then(|(_, db)| db.upgrade());
    if kept.is_some() {
        return kept;
    }
    // Made on a runtime of its own: the caller may or may not be in one.
    let created = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(TestDatabase::create())
    })
    .join()
    .unwrap()
    .expect("ONRAMP_TEST_STORE=postgres but no PostgreSQL answers (ONRAMP_TEST_POSTGRES)");
    let db = Arc::new(created);
    databases.push((data_dir.to_owned(), Arc::downgrade(&db)));
    Some(db)
}

/// Whether the servers of this run keep their data in PostgreSQL
/// (`ONRAMP_TEST_STORE=postgres`) rather than SQLite (`sqlite`, the default).
pub fn on_postgres() -> bool {
    match std::env::var("ONRAMP_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("ONRAMP_TEST_STORE={other}: use postgres or sqlite"),
    }
}

/// True, with the reason on stderr, when the run is on PostgreSQL and the
/// test is about the embedded SQLite store (`why`): the caller returns.
pub fn sqlite_only(why: &str) -> bool {
    let skip = on_postgres();
    if skip {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    skip
}

/// A running `onramp serve`.
pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// What lives as long as the server (a test database, say).
    _kept: Vec<Box<dyn std::any::Any + Send + Sync>>,
    pub state: Value,
    pub ca_pem: String,
    pub stdout_path: PathBuf,
    /// The PostgreSQL store the server keeps its data in (`--store-url`).
    pub store_url: Option<String>,
}

impl Server {
    /// Starts on `listen` with a fresh data directory.
    pub fn start(listen: &str) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let mut s = Self::start_in(&dir, listen, &[]);
        s._temp = Some(temp);
        s
    }

    /// Starts with `data_dir` (kept), extra flags and environment.
    pub fn start_in(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        Self::start_wrapped(data_dir, listen, extra, &[])
    }

    /// Starts as [`Server::start_in`] does, through `wrapper` (a command
    /// that runs the rest of its arguments, e.g. `prlimit --nofile=…`).
    pub fn start_wrapped(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let state_file = data_dir.join("serve.json");
        let _ = std::fs::remove_file(&state_file);
        let stdout_path = data_dir.join("serve.stdout");
        let stderr_path = data_dir.join("serve.stderr");
        // Tests run side by side: MQTT on a free port unless a test asks for one.
        let mqtt: &[&str] = if extra.contains(&"--mqtt-listen") {
            &[]
        } else {
            &["--mqtt-listen", "127.0.0.1:0"]
        };
        // AMQP likewise.
        let amqp: &[&str] = if extra.contains(&"--amqp-listen") {
            &[]
        } else {
            &["--amqp-listen", "127.0.0.1:0"]
        };
        // Metrics too: their default port is one per machine.
        let metrics: &[&str] = if extra.contains(&"--metrics-listen") {
            &[]
        } else {
            &["--metrics-listen", "127.0.0.1:0"]
        };
        // ONRAMP_TEST_STORE=postgres: the data directory's own database.
        let database = if extra.contains(&"--store-url") {
            None
        } else {
            test_database(data_dir)
        };
        let store_flag: Vec<&str> = match &database {
            Some(db) => vec!["--store-url", db.url()],
            None => Vec::new(),
        };
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_onramp"));
                c
            }
            None => onramp(),
        };
        let child = command
            .args(["serve", "--https-listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(["--log", "warn,onramp=info,onramp_net=debug"])
            .args(mqtt)
            .args(amqp)
            .args(metrics)
            .args(extra)
            .args(&store_flag)
            .env_remove("ONRAMP_CONFIG")
            .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()))
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut server = Server {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            _temp: None,
            _kept: Vec::new(),
            state: Value::Null,
            ca_pem: String::new(),
            stdout_path,
            store_url: extra
                .iter()
                .chain(&store_flag)
                .skip_while(|a| **a != "--store-url")
                .nth(1)
                .map(|u| (*u).to_owned()),
        };
        if let Some(db) = database {
            server.keep_alive(db);
        }
        let state: Value = wait_for(Duration::from_secs(60), "serve.json", || {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "onramp serve exited with {status}: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(&state_file).ok()?).ok()?;
            (v["pid"].as_u64() == Some(u64::from(pid))).then_some(v)
        });
        // An operator's certificate comes without a development CA.
        server.ca_pem = state["caCert"]
            .as_str()
            .map(|ca| std::fs::read_to_string(ca).unwrap())
            .unwrap_or_default();
        server.state = state;
        server
    }

    /// Starts on a fresh data directory with `extra` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(&temp.path().join("data"), "127.0.0.1:0", extra);
        server.keep(temp);
        server
    }

    /// Starts on a fresh data directory with a configuration file holding
    /// `toml` (`--config`, beside the data directory).
    pub fn with_config(toml: &str) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let config = temp.path().join("onramp.toml");
        std::fs::write(&config, toml).unwrap();
        let mut server = Self::start_in(
            &temp.path().join("data"),
            "127.0.0.1:0",
            &["--config", config.to_str().unwrap()],
        );
        server.keep(temp);
        server
    }

    /// Keeps a temporary directory alive as long as the server.
    pub fn keep(&mut self, temp: tempfile::TempDir) {
        self._temp = Some(temp);
    }

    /// Keeps `thing` (a test database, say) alive as long as the server;
    /// it goes after the server process.
    pub fn keep_alive(&mut self, thing: impl std::any::Any + Send + Sync) {
        self._kept.push(Box::new(thing));
    }

    /// An `onramp` command on this server's data directory and store (the
    /// PostgreSQL one through `ONRAMP_STORE_URL`).
    fn command(&self) -> Command {
        let mut c = onramp();
        c.env_remove("ONRAMP_CONFIG");
        if let Some(url) = &self.store_url {
            c.env("ONRAMP_STORE_URL", url);
        }
        c
    }

    pub fn pid(&self) -> u32 {
        self.state["pid"].as_u64().unwrap() as u32
    }

    pub fn mqtt_endpoint(&self) -> String {
        text(&self.state["mqttEndpoint"])
    }

    pub fn endpoint(&self) -> String {
        text(&self.state["endpoint"])
    }

    /// A TLS client configuration that trusts the server's CA.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(onramp_net::tls::client_config(Some(&self.ca_pem)).unwrap())
    }

    /// Starts on a fresh data directory with AMQP clients given half a
    /// second to open.
    pub fn with_quick_amqp_open() -> Server {
        let dir = tempfile::tempdir().unwrap().keep().join("data");
        Self::start_in(&dir, "127.0.0.1:0", &["--amqp-open-timeout-ms", "500"])
    }

    /// A TLS connection to the HTTPS port (which takes AMQP by its header).
    pub async fn tls_stream(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port()))
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(self.tls())
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Writes `bytes` (starting with an AMQP protocol header) on a new
    /// connection and reads until the server closes it: all it wrote. The
    /// server must close it within ten seconds.
    pub async fn amqp_answer_to(&self, bytes: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = self.tls_stream().await;
        stream.write_all(bytes).await.unwrap();
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut seen));
        assert!(read.await.is_ok(), "the connection was not closed");
        seen
    }

    /// An MQTT CONNECT over TLS to the server's MQTT endpoint.
    pub async fn mqtt_connect(
        &self,
        options: &onramp_net::mqtt::client::ConnectOptions,
    ) -> Result<onramp_net::mqtt::client::MqttClient, onramp_net::mqtt::client::ClientError> {
        onramp_net::mqtt::client::MqttClient::connect(
            &self.mqtt_endpoint(),
            self.tls(),
            &onramp_net::mqtt::client::Transport::Tls,
            options,
            Duration::from_secs(10),
        )
        .await
    }

    /// The CONNECT options of a DPS device `registration_id` signed with `key`.
    pub fn mqtt_options(
        &self,
        registration_id: &str,
        key: &str,
    ) -> onramp_net::mqtt::client::ConnectOptions {
        onramp_net::mqtt::client::ConnectOptions {
            client_id: registration_id.into(),
            username: Some(format!(
                "{}/registrations/{registration_id}/api-version=2019-03-31",
                self.id_scope()
            )),
            password: Some(self.device_token(registration_id, key, unix_now() + 600)),
            keep_alive: 60,
            clean_session: true,
        }
    }

    /// An MQTT CONNECT that the server must refuse with `reason`.
    pub async fn assert_mqtt_refused(
        &self,
        options: &onramp_net::mqtt::client::ConnectOptions,
        reason: onramp_net::mqtt::ConnectAckReason,
        what: &str,
    ) {
        match self.mqtt_connect(options).await {
            Err(onramp_net::mqtt::client::ClientError::Refused(r)) => {
                assert_eq!(r, reason, "{what}");
            }
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }

    pub fn port(&self) -> u16 {
        self.state["listen"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn id_scope(&self) -> String {
        text(&self.state["idScope"])
    }

    pub fn ca_path(&self) -> PathBuf {
        PathBuf::from(self.state["caCert"].as_str().unwrap())
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("serve.stderr")).unwrap_or_default()
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        self.stop();
        started.elapsed()
    }

    /// An HTTPS client trusting the server's development CA.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(onramp_net::tls::client_config(Some(&self.ca_pem)).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "https://{}/{}",
            self.endpoint(),
            path.trim_start_matches('/')
        )
    }

    /// Stops with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = wait_for(Duration::from_secs(30), "onramp serve to exit", || {
                child.try_wait().unwrap()
            });
            assert!(status.success(), "onramp serve exited with {status}");
        }
    }

    /// Opens the deployment's SQLite store beside the running server (SQLite
    /// WAL allows it); [`Server::any_store`] is the store whichever it is.
    pub fn store(&self) -> Arc<SqliteStore> {
        assert!(
            self.store_url.is_none(),
            "this server keeps its data in PostgreSQL: use any_store()"
        );
        let sealer = Arc::new(Sealer::load_or_create(&self.data_dir.join("keys")).unwrap());
        Arc::new(
            SqliteStore::open(
                &self.data_dir.join("onramp.db"),
                sealer,
                SqliteOptions::default(),
            )
            .unwrap(),
        )
    }

    /// The deployment's store, SQLite or PostgreSQL, beside the running server.
    pub async fn any_store(&self) -> Arc<dyn Store> {
        let Some(url) = &self.store_url else {
            return self.store();
        };
        let sealer = match std::env::var("ONRAMP_MASTER_KEY") {
            Ok(key) => Arc::new(Sealer::from_base64(&key).unwrap()),
            Err(_) => Arc::new(Sealer::load_or_create(&self.data_dir.join("keys")).unwrap()),
        };
        Arc::new(
            onramp_store::PgStore::open(url, sealer, Default::default())
                .await
                .unwrap(),
        )
    }

    pub async fn owner_connection_string(&self) -> String {
        self.connection_string_of("default").await
    }

    pub async fn embedded_hub(&self) -> LinkedHub {
        self.any_store()
            .await
            .linked_hubs("default")
            .await
            .unwrap()
            .into_iter()
            .find(|h| h.embedded)
            .unwrap()
    }

    pub fn hub_client(&self) -> onramp_hub::HubClient {
        onramp_hub::HubClient::new(
            onramp_net::tls::client_config(Some(&self.ca_pem)).unwrap(),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// A service API call signed with `connection_string`.
    pub async fn service_call(
        &self,
        connection_string: &str,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let token = token_for(connection_string);
        let mut req = self
            .http()
            .request(method, self.url(path_and_query))
            .header("Authorization", token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req).await
    }

    /// A service API call signed with `connection_string`, without extra
    /// headers; returns the status and the JSON (or text) answered.
    pub async fn call(
        &self,
        connection_string: &str,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, _, v) = self
            .service_call(connection_string, method, path_and_query, body, &[])
            .await;
        (status, v)
    }

    /// A service API GET signed with `connection_string`.
    pub async fn get(&self, connection_string: &str, path_and_query: &str) -> (u16, Value) {
        self.call(
            connection_string,
            reqwest::Method::GET,
            path_and_query,
            None,
        )
        .await
    }

    /// A service API call with the owner policy of the default service.
    pub async fn owner_call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let cs = self.owner_connection_string().await;
        self.call(&cs, method, path_and_query, body).await
    }

    /// Creates a symmetric-key individual enrollment; returns its primary key.
    pub async fn enroll(&self, registration_id: &str, extra: Value) -> String {
        self.enroll_symmetric("enrollments", "registrationId", registration_id, extra)
            .await
    }

    /// Creates a symmetric-key enrollment group; returns its primary key.
    pub async fn enroll_group(&self, group_id: &str, extra: Value) -> String {
        self.enroll_symmetric("enrollmentGroups", "enrollmentGroupId", group_id, extra)
            .await
    }

    /// Creates a symmetric-key enrollment group whose devices the custom
    /// allocation webhook at `webhook_url` places; returns its primary key.
    pub async fn enroll_custom_group(&self, group_id: &str, webhook_url: &str) -> String {
        let custom = serde_json::json!({
            "allocationPolicy": "custom",
            "customAllocationDefinition": {"webhookUrl": webhook_url, "apiVersion": "2021-10-01"},
        });
        self.enroll_group(group_id, custom).await
    }

    async fn enroll_symmetric(
        &self,
        collection: &str,
        id_field: &str,
        id: &str,
        extra: Value,
    ) -> String {
        let mut body = serde_json::json!({id_field: id, "attestation": {"type": "symmetricKey"}});
        merge(&mut body, extra);
        let (status, v) = self
            .owner_call(
                reqwest::Method::PUT,
                &format!("{collection}/{id}?api-version=2021-10-01"),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        text(&v["attestation"]["symmetricKey"]["primaryKey"])
    }

    pub fn device_token(&self, registration_id: &str, key: &str, expiry: i64) -> String {
        sas::sign(
            &format!("{}/registrations/{registration_id}", self.id_scope()),
            key,
            expiry,
            Some("registration"),
        )
        .unwrap()
    }

    /// PUT register of `registration_id` in this server's scope, signed with
    /// `key` for ten minutes, with the body SDKs send.
    pub async fn register(
        &self,
        registration_id: &str,
        key: &str,
        query: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let token = self.device_token(registration_id, key, unix_now() + 600);
        let body = serde_json::json!({ "registrationId": registration_id });
        self.register_raw(
            &self.id_scope(),
            registration_id,
            query,
            Some(&token),
            body.to_string().into_bytes(),
        )
        .await
    }

    /// PUT register with a raw body and token; returns status, headers, JSON.
    pub async fn register_raw(
        &self,
        scope: &str,
        registration_id: &str,
        query: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http()
            .put(self.url(&format!(
                "{scope}/registrations/{registration_id}/register{query}"
            )))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        answer(req).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of the sample `series` (name and labels, as rendered).
pub fn value_of(scraped: &str, series: &str) -> Option<f64> {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sends `req`; returns the status, the headers and the JSON (or text) answered.
pub async fn answer(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sends `message` on a fresh AMQP link `name` to `address`: the outcome,
/// or why the link or the send failed (a refused link is detached right
/// after its attach), within ten seconds.
pub async fn send_on<T: fe2o3_amqp::types::messaging::SerializableBody>(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
    message: fe2o3_amqp::types::messaging::Message<T>,
) -> Result<fe2o3_amqp::types::messaging::Outcome, String> {
    let attempt = async {
        let mut sender = fe2o3_amqp::Sender::attach(session, name, address)
            .await
            .map_err(|e| e.to_string())?;
        sender.send(message).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap()
}

/// The standard output of a command that must have succeeded (its output
/// and errors are the failure's message).
#[track_caller]
pub fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Where a simulated device keeps its software TPM (the simulator makes
/// it on the first run): the directory to keep while it is used, and the
/// file's path.
pub fn software_tpm_file() -> (tempfile::TempDir, String) {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("device.tpm");
    let path = path.to_str().unwrap().to_owned();
    (temp, path)
}

/// The item of a JSON array whose `field` is `value` (a row of a command's
/// `--output json` list).
pub fn row<'a>(rows: &'a Value, field: &str, value: &str) -> &'a Value {
    let items = rows
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {rows}"));
    items
        .iter()
        .find(|r| r[field] == value)
        .unwrap_or_else(|| panic!("no {field} {value} in {rows}"))
}

/// The `registrationId`s of a JSON array of enrollments or registrations.
pub fn registration_ids(listed: &Value) -> Vec<&str> {
    let items = listed
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {listed}"));
    items
        .iter()
        .map(|item| item["registrationId"].as_str().unwrap())
        .collect()
}

/// The device `id` of the default service has no running operation left.
pub async fn assert_no_running_operation(store: &dyn Store, id: &str) {
    let device = DeviceAt::new("default", &IdKey::of(id));
    let running = store.operation(&device).await.unwrap();
    assert!(
        running.is_none(),
        "{id}: a running operation left: {running:?}"
    );
}

/// Asserts that a command failed and that its standard error says `needle`.
#[track_caller]
pub fn assert_failed_saying(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the command succeeded: {stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

/// Asserts that an Azure error body's message says `needle`.
#[track_caller]
pub fn assert_message_says(body: &Value, needle: &str) {
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{body}");
}

/// Asserts an answer's HTTP status and its Azure error code.
#[track_caller]
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: u64) {
    assert_eq!(
        (status, body["errorCode"].as_u64()),
        (want_status, Some(want_code)),
        "{body}"
    );
}

/// Asserts that a register or poll answered 202 or 200 with `assigned`.
#[track_caller]
pub fn assert_assigned(status: u16, op: &Value, want_status: u16) {
    assert_eq!(
        (status, op["status"].as_str()),
        (want_status, Some("assigned")),
        "{op}"
    );
}

/// Asserts that a CA certificate call answered 200, with the certificate
/// verified (`isVerified`) or not.
#[track_caller]
pub fn assert_ca_verified(status: u16, certificate: &Value, verified: bool) {
    assert_eq!(
        (status, certificate["properties"]["isVerified"].as_bool()),
        (200, Some(verified)),
        "{certificate}"
    );
}

/// The string `v` holds, which must be one.
#[track_caller]
pub fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

/// Sends `req`; returns the status alone.
pub async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.unwrap().status().as_u16()
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        for (k, v) in e {
            t.insert(k, v);
        }
    }
}

impl Server {
    /// `onramp device provision` (the device simulator) against this server;
    /// returns whether it succeeded, the operation status it printed, and
    /// what it wrote to stderr.
    pub fn provision(
        &self,
        registration_id: &str,
        key: &str,
        extra: &[&str],
    ) -> (bool, Value, String) {
        let out = self
            .command()
            .args([
                "device",
                "provision",
                "--registration-id",
                registration_id,
                "--key",
                key,
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let status = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (
            out.status.success(),
            status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Provisions and returns the registration state, which must be assigned.
    pub fn assigned(&self, registration_id: &str, key: &str, extra: &[&str]) -> Value {
        let (ok, status, stderr) = self.provision(registration_id, key, extra);
        assert!(ok, "{registration_id}: {stderr}");
        assert_eq!(status["status"], "assigned", "{status}");
        status["registrationState"].clone()
    }

    /// The metrics listener's address, from the state file.
    pub fn metrics_listen(&self) -> Option<String> {
        self.state["metricsListen"].as_str().map(str::to_owned)
    }

    /// The Prometheus text of `/metrics`, from the metrics listener.
    pub async fn metrics(&self) -> String {
        let listen = self
            .metrics_listen()
            .expect("the server runs a metrics listener");
        let resp = self
            .http()
            .get(format!("http://{listen}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "GET http://{listen}/metrics");
        resp.text().await.unwrap()
    }

    /// The value of the sample `series` (name and labels, as rendered) in
    /// a fresh scrape of `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        value_of(&self.metrics().await, series)
    }

    /// An `onramp` admin command on this server's data directory.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.command()
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// An `onramp` admin command that must succeed; returns its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "onramp {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An `onramp` admin command that must succeed and print JSON; returns it.
    /// The telemetry the embedded hub stored from `device`, oldest first
    /// (`onramp hub messages`, a JSON object a line).
    pub fn hub_messages(&self, device: &str) -> Vec<Value> {
        self.cli_ok(&["hub", "messages", "--device", device])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("onramp {}: {e}: {out}", args.join(" ")))
    }

    /// The service API with the owner policy of provisioning service `service`.
    pub async fn connection_string_of(&self, service: &str) -> String {
        self.any_store()
            .await
            .policies(service)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.name == "provisioningserviceowner")
            .unwrap()
            .connection_string(&self.endpoint())
    }
}

/// The repository's folder `path`, when `marker` exists below it. When it
/// does not, a run that requires the interop environment
/// (`ONRAMP_REQUIRE_INTEROP`, set by scripts/test) fails, and any other run
/// skips the test.
pub fn interop_dir(path: &str, marker: &str, what: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    if dir.join(marker).exists() {
        return Some(dir);
    }
    missing(&format!("{what} ({})", dir.display()));
    None
}

/// Fails a run that requires the interop environment; otherwise says that
/// the test is skipped because `what` is not installed.
pub fn missing(what: &str) {
    assert!(
        std::env::var("ONRAMP_REQUIRE_INTEROP").is_err(),
        "{what} is not installed; run scripts/test"
    );
    eprintln!("skipping: {what} is not installed (scripts/test installs it)");
}

/// Gives the hub in `hub_dir` the development CA of the server in
/// `server_dir`, so that devices and Onramp trust it.
pub fn share_ca(server_dir: &Path, hub_dir: &Path) {
    std::fs::create_dir_all(hub_dir.join("tls")).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(server_dir.join("tls").join(f), hub_dir.join("tls").join(f)).unwrap();
    }
}

/// A loopback port nothing listens on (bound, then let go).
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `onramp hub serve` on `dir`, on a free port, without MQTT.
pub fn hub_serve(dir: &Path) -> Command {
    let mut cmd = onramp();
    cmd.args(HUB_SERVE).arg("--data-dir").arg(dir);
    cmd
}

/// `onramp hub serve` on a free loopback port, without MQTT.
pub const HUB_SERVE: [&str; 6] = [
    "hub",
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--mqtt-listen",
    "off",
];

/// A companion hub run on its own by `onramp hub serve`.
pub struct HubProcess {
    child: Child,
    pub dir: PathBuf,
    /// Its owner connection string; `HostName` is what Onramp links.
    pub connection_string: String,
    /// The address it listens on.
    pub listen: std::net::SocketAddr,
    ca_pem: String,
}

impl HubProcess {
    /// Starts a hub on a free loopback port; `host` overrides the name
    /// clients use (`localhost:PORT` of a proxy in front of it).
    pub fn start(dir: &Path, host: Option<&str>) -> HubProcess {
        let mut cmd = hub_serve(dir);
        if let Some(h) = host {
            cmd.args(["--host", h]);
        }
        let mut child = cmd
            .env("ONRAMP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Read every line, so the hub never writes into a closed pipe.
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let (mut cs, mut listen) = (None, None);
        while cs.is_none() || listen.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("onramp hub serve printed its summary");
            if let Some(v) = line.trim().strip_prefix("Connection string") {
                cs = Some(v.trim().to_owned());
            }
            if let Some((_, rest)) = line.split_once("(listening on ") {
                listen = rest.trim_end_matches(").").parse().ok();
            }
        }
        let ca_pem = std::fs::read_to_string(dir.join("tls/ca.pem")).unwrap();
        HubProcess {
            child,
            dir: dir.to_owned(),
            connection_string: cs.unwrap(),
            listen: listen.unwrap(),
            ca_pem,
        }
    }

    /// The process ID of `onramp hub serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host name Onramp links and devices are sent to.
    pub fn name(&self) -> String {
        onramp_core::connection_string::ConnectionString::parse(&self.connection_string)
            .unwrap()
            .host_name
    }

    /// A call to the hub's service REST API (straight to its listener).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let token = token_for(&self.connection_string);
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(onramp_net::tls::client_config(Some(&self.ca_pem)).unwrap())
            .resolve("localhost", self.listen)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let url = format!(
            "https://localhost:{}/{path}?api-version=2021-04-12",
            self.listen.port()
        );
        let mut req = client.request(method, url).header("Authorization", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn twin(&self, device_id: &str) -> Option<Value> {
        let (status, v) = self
            .call(reqwest::Method::GET, &format!("twins/{device_id}"), None)
            .await;
        match status {
            200 => Some(v),
            404 => None,
            other => panic!("GET twins/{device_id}: {other} {v}"),
        }
    }

    pub async fn device_ids(&self) -> Vec<String> {
        let (status, v) = self.call(reqwest::Method::GET, "devices", None).await;
        assert_eq!(status, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| text(&d["deviceId"]))
            .collect()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `future` on a runtime of its own thread, so it keeps serving while
/// the test blocks on a child process.
pub fn background<F>(future: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    });
}

/// Accepts connections on `listener` on a runtime of its own thread, each
/// handed to `handle` in a task of its own.
pub fn accept_each<F, Fut>(listener: std::net::TcpListener, handle: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    background(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(handle(socket));
        }
    });
}

/// A TCP proxy that holds every chunk for a settable delay in both
/// directions: a hub far away.
pub struct DelayProxy {
    pub port: u16,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl DelayProxy {
    /// Binds a free port; [`DelayProxy::forward`] starts forwarding.
    pub fn bind() -> (DelayProxy, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        (
            DelayProxy {
                port,
                delay_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            },
            listener,
        )
    }

    pub fn forward(&self, listener: std::net::TcpListener, upstream: std::net::SocketAddr) {
        let delay = self.delay_ms.clone();
        accept_each(listener, move |inbound| {
            let delay = delay.clone();
            async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(relay(ri, wo, delay.clone()), relay(ro, wi, delay));
            }
        });
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let ms = delay.load(std::sync::atomic::Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// What the scriptable webhook does with one request.
pub enum WebhookReply {
    Answer(u16, String),
    /// Answers once the test says so.
    AnswerWhen(Arc<tokio::sync::Notify>, u16, String),
    /// Never answers (within any sane timeout).
    Hang,
}

/// A custom-allocation webhook on loopback that answers what `reply` says
/// for each request; returns its URL (with an access code in the query, as
/// Azure Functions have) and the requests it received.
pub fn start_webhook(
    reply: impl Fn(&Value) -> WebhookReply + Send + Sync + 'static,
) -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    use http_body_util::BodyExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "http://{}/api/allocate?code=s3cret",
        listener.local_addr().unwrap()
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let reply = Arc::new(reply);
    background(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (log, reply) = (log.clone(), reply.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, reply) = (log.clone(), reply.clone());
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let request: Value =
                                serde_json::from_slice(&body).unwrap_or(Value::Null);
                            log.lock().unwrap().push(request.clone());
                            let (status, answer) = match reply(&request) {
                                WebhookReply::Answer(status, answer) => (status, answer),
                                WebhookReply::AnswerWhen(go, status, answer) => {
                                    go.notified().await;
                                    (status, answer)
                                }
                                WebhookReply::Hang => {
                                    tokio::time::sleep(Duration::from_secs(60)).await;
                                    (200, String::new())
                                }
                            };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    (url, seen)
}

/// A SAS token for the policy of `connection_string`, valid for an hour.
pub fn token_for(connection_string: &str) -> String {
    let cs = onramp_core::connection_string::ConnectionString::parse(connection_string).unwrap();
    sas::sign(
        &cs.host_name,
        cs.shared_access_key.unwrap().expose(),
        unix_now() + 3600,
        cs.shared_access_key_name.as_deref(),
    )
    .unwrap()
}
