//! Configuration: built-in defaults, overridden by the TOML file, overridden
//! by `ONRAMP_*` environment variables, overridden by command-line flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use onramp_model::AllocationPolicy;
use serde::Deserialize;

use crate::cli::{Location, ServeArgs};

mod limits;
pub use limits::{DiagnosticsConfig, LimitsConfig, ThrottleConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Store, keys and development certificates live here.
    pub data_dir: PathBuf,
    /// Host name devices and operators use (the port is added when not 443).
    pub public_host: String,
    pub https: HttpsConfig,
    pub mqtt: MqttConfig,
    pub amqp: AmqpConfig,
    pub metrics: MetricsConfig,
    pub tls: TlsConfig,
    pub store: StoreConfig,
    pub hub: HubConfig,
    pub service: ServiceConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub throttle: ThrottleConfig,
    pub node: NodeConfig,
    pub allocation: AllocationConfig,
    pub diagnostics: DiagnosticsConfig,
    /// Hubs linked to the service at start.
    pub linked_hubs: Vec<LinkedHubConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name in latency measurements (default: the host name).
    pub name: String,
    /// The region this node runs in, e.g. westeurope (empty: unknown).
    pub region: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty());
        Self {
            name: host.unwrap_or_else(|| "onramp".into()),
            region: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllocationConfig {
    /// How often each linked hub's round trip is measured.
    pub latency_probe_interval_ms: u64,
    /// A probe that takes longer counts as a failure.
    pub latency_probe_timeout_ms: u64,
    /// Hubs this close to the fastest share lowest-latency devices.
    pub latency_tolerance_ms: f64,
    /// How long a custom-allocation webhook has to answer.
    pub webhook_timeout_ms: u64,
    /// How many times a webhook that answers 429 or above is asked again
    /// (after 1 s, then 9 s longer each time, as Azure does).
    pub webhook_retries: u32,
    /// Client networks and their regions: a device from one of them is
    /// placed on a hub of that region (lowest-latency allocation).
    pub networks: Vec<NetworkRegion>,
}

impl Default for AllocationConfig {
    fn default() -> Self {
        Self {
            latency_probe_interval_ms: 10_000,
            latency_probe_timeout_ms: 2_000,
            latency_tolerance_ms: 10.0,
            webhook_timeout_ms: 10_000,
            webhook_retries: onramp_webhook::Retries::default().retries,
            networks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRegion {
    /// A CIDR block, e.g. 10.20.0.0/16 or 2001:db8::/32.
    pub network: ipnet::IpNet,
    pub region: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpsConfig {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the MQTT listener; empty or `off` for none. (Every
    /// listener also takes MQTT: the first byte of a connection tells.)
    pub listen: String,
    /// Largest MQTT packet accepted.
    pub max_packet_bytes: u32,
    /// A client must send CONNECT within this time.
    pub connect_timeout_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8883".into(),
            max_packet_bytes: 256 * 1024,
            connect_timeout_ms: 10_000,
        }
    }
}

/// Whether a listener's address asks for one (empty or `off`: none).
pub fn listening(listen: &str) -> bool {
    !(listen.is_empty() || listen.eq_ignore_ascii_case("off"))
}

impl MqttConfig {
    pub fn limits(&self) -> onramp_net::mqtt::MqttLimits {
        onramp_net::mqtt::MqttLimits {
            max_packet_bytes: self.max_packet_bytes,
            connect_timeout: std::time::Duration::from_millis(self.connect_timeout_ms),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// Address of the AMQP listener (DPS over AMQP 1.0, TLS); empty or
    /// `off` for none. (Every listener also takes AMQP: its protocol header
    /// tells; AMQP over WebSockets comes on the HTTPS port.)
    pub listen: String,
    /// Largest AMQP frame accepted (the server's Open max-frame-size).
    pub max_frame_bytes: u32,
    /// A client must finish SASL and Open within this time.
    pub open_timeout_ms: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:5671".into(),
            max_frame_bytes: 64 * 1024,
            open_timeout_ms: 10_000,
        }
    }
}

impl AmqpConfig {
    pub fn limits(&self) -> onramp_endpoints::amqp::AmqpLimits {
        onramp_endpoints::amqp::AmqpLimits {
            max_frame_bytes: self.max_frame_bytes,
            open_timeout: std::time::Duration::from_millis(self.open_timeout_ms),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus listener (plain HTTP); `off` for none. It
    /// shows tenants, hubs and failed authentications: keep it on loopback
    /// or a network only the scraper reaches.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM). Default: the development PKI.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust when calling linked hubs.
    pub trust: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `full` (fsync every commit) or `normal` (the embedded SQLite store).
    pub durability: String,
    /// `postgres://user[:password]@host[:port]/database`: keep the data in
    /// PostgreSQL, shared by every node that names it. Unset: the embedded
    /// SQLite file in the data directory. `ONRAMP_STORE_URL` and
    /// `onramp serve --store-url` override it.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Run the companion hub in this process, on the HTTPS listener.
    pub embedded: bool,
    /// Seconds before a call to a linked hub times out.
    pub timeout_seconds: u64,
    /// The companion hub's largest device-to-cloud message (0: no limit).
    pub max_message_bytes: usize,
    /// Messages a device may send the companion hub a second (0: no limit).
    pub device_messages_per_second: u32,
    /// Telemetry the companion hub keeps per device (0: no cap).
    pub retained_messages_per_device: u64,
    /// Telemetry older than this is dropped (0: kept whatever its age).
    pub retained_message_age_seconds: u64,
}

impl HubConfig {
    /// The companion hub's limits on what devices send.
    pub fn limits(&self) -> onramp_hub::companion::HubLimits {
        onramp_hub::companion::HubLimits::new(
            self.max_message_bytes,
            self.device_messages_per_second,
            self.retained_messages_per_device,
            self.retained_message_age_seconds,
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name of the provisioning service `serve` creates and uses by default.
    pub name: String,
    /// Allocation policy for enrollments that name none: hashed or static.
    pub allocation_policy: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: String,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkedHubConfig {
    pub connection_string: String,
    #[serde(default = "default_region")]
    pub location: String,
    #[serde(default = "one")]
    pub allocation_weight: u32,
    #[serde(default = "yes")]
    pub apply_allocation_policy: bool,
}

fn default_region() -> String {
    "local".into()
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// Puts a flag's value (or its environment variable's) over the file's.
fn set<T: Clone>(setting: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *setting = v.clone();
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./onramp-data"),
            public_host: "localhost".into(),
            https: HttpsConfig::default(),
            mqtt: MqttConfig::default(),
            amqp: AmqpConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
            store: StoreConfig::default(),
            hub: HubConfig::default(),
            service: ServiceConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            throttle: ThrottleConfig::default(),
            node: NodeConfig::default(),
            allocation: AllocationConfig::default(),
            diagnostics: DiagnosticsConfig::default(),
            linked_hubs: Vec::new(),
        }
    }
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:443".into(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: "full".into(),
            url: None,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        // The same defaults as `onramp hub serve`'s.
        let d = crate::cli::HubLimitArgs::default();
        Self {
            embedded: true,
            timeout_seconds: 10,
            max_message_bytes: d.max_message_bytes,
            device_messages_per_second: d.device_messages_per_second,
            retained_messages_per_device: d.retained_messages_per_device,
            retained_message_age_seconds: d.retained_message_age_seconds,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            allocation_policy: "hashed".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

impl Config {
    /// Reads the file named by `--config`/`ONRAMP_CONFIG`, or `./onramp.toml`
    /// when it exists, then applies the data-directory override.
    pub fn load(location: &Location) -> anyhow::Result<Self> {
        let path = match &location.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from("onramp.toml")).filter(|p| p.exists()),
        };
        let mut config = match path {
            Some(p) => Self::from_file(&p)?,
            None => Config::default(),
        };
        if let Some(dir) = &location.data_dir {
            config.data_dir = dir.clone();
        }
        // Every command opens the same store as the server it administers.
        if let Some(url) = std::env::var("ONRAMP_STORE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            config.store.url = Some(url);
        }
        config.validate_store()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("the configuration file {} is invalid", path.display()))
    }

    /// The `serve` configuration: file, then environment and flags.
    pub fn for_serve(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut c = Self::load(&args.location)?;
        set(&mut c.https.listen, &args.https_listen);
        set(&mut c.mqtt.listen, &args.mqtt_listen);
        set(&mut c.amqp.listen, &args.amqp_listen);
        set(&mut c.metrics.listen, &args.metrics_listen);
        set(
            &mut c.mqtt.connect_timeout_ms,
            &args.mqtt_connect_timeout_ms,
        );
        set(&mut c.amqp.open_timeout_ms, &args.amqp_open_timeout_ms);
        set(&mut c.public_host, &args.public_host);
        set(&mut c.hub.embedded, &args.embedded_hub);
        set(&mut c.log.format, &args.log_format);
        set(&mut c.log.filter, &args.log);
        set(&mut c.store.durability, &args.store_durability);
        if let Some(v) = args.store_url.as_ref().filter(|u| !u.trim().is_empty()) {
            c.store.url = Some(v.clone());
        }
        set(&mut c.node.region, &args.node_region);
        set(
            &mut c.allocation.latency_probe_interval_ms,
            &args.latency_probe_interval_ms,
        );
        set(
            &mut c.allocation.latency_tolerance_ms,
            &args.latency_tolerance_ms,
        );
        set(
            &mut c.allocation.webhook_timeout_ms,
            &args.webhook_timeout_ms,
        );
        set(&mut c.allocation.webhook_retries, &args.webhook_retries);
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log format '{}' is unknown; use text or json",
                self.log.format
            );
        }
        self.validate_store()?;
        if !matches!(self.store.durability.as_str(), "full" | "normal") {
            bail!(
                "store durability '{}' is unknown; use full or normal",
                self.store.durability
            );
        }
        self.allocation_policy()?;
        if self.allocation.latency_probe_interval_ms < 100 {
            bail!("allocation.latency_probe_interval_ms must be at least 100");
        }
        let tolerance = self.allocation.latency_tolerance_ms;
        if tolerance.is_nan() || tolerance < 0.0 {
            bail!("allocation.latency_tolerance_ms must be 0 or more");
        }
        if self.allocation.webhook_timeout_ms == 0 {
            bail!("allocation.webhook_timeout_ms must be more than 0");
        }
        if self.diagnostics.max_age_hours == 0 || self.diagnostics.max_entries == 0 {
            bail!("diagnostics.max_age_hours and diagnostics.max_entries must be more than 0");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key go together; set both or neither");
        }
        for (name, ms) in [
            ("handshake_timeout_ms", self.limits.handshake_timeout_ms),
            ("header_timeout_ms", self.limits.header_timeout_ms),
            ("body_timeout_ms", self.limits.body_timeout_ms),
        ] {
            if ms == 0 {
                bail!("limits.{name} must be more than 0");
            }
        }
        if self.mqtt.connect_timeout_ms == 0 {
            bail!("mqtt.connect_timeout_ms must be more than 0");
        }
        if self.amqp.open_timeout_ms == 0 {
            bail!("amqp.open_timeout_ms must be more than 0");
        }
        if self.amqp.max_frame_bytes < 512 {
            bail!("amqp.max_frame_bytes must be at least 512 (AMQP 1.0's minimum)");
        }
        if self.limits.max_connections == 0 {
            bail!("limits.max_connections must be more than 0");
        }
        if self.public_host.trim().is_empty() {
            bail!("public_host is empty; set the host name devices use, e.g. localhost");
        }
        Ok(())
    }

    pub fn allocation_policy(&self) -> anyhow::Result<AllocationPolicy> {
        match AllocationPolicy::parse(&self.service.allocation_policy) {
            Some(
                p @ (AllocationPolicy::Hashed
                | AllocationPolicy::Static
                | AllocationPolicy::GeoLatency),
            ) => Ok(p),
            _ => bail!(
                "service.allocation_policy '{}' cannot be a service default; use hashed, static or geoLatency",
                self.service.allocation_policy
            ),
        }
    }

    /// This node's region and the client-network table, for the engine.
    pub fn regions(&self) -> onramp_core::allocate::Regions {
        onramp_core::allocate::Regions {
            node: Some(self.node.region.trim().to_owned()).filter(|r| !r.is_empty()),
            networks: self
                .allocation
                .networks
                .iter()
                .map(|n| (n.network, n.region.clone()))
                .collect(),
        }
    }

    /// The PostgreSQL store's URL, when the deployment keeps its data there.
    pub fn store_url(&self) -> Option<&str> {
        self.store.url.as_deref().filter(|u| !u.trim().is_empty())
    }

    fn validate_store(&self) -> anyhow::Result<()> {
        if let Some(url) = self.store_url()
            && !onramp_store::postgres::is_postgres_url(url)
        {
            bail!(
                "store url '{}' is not a postgres:// URL; leave [store] url out (and ONRAMP_STORE_URL unset) \
                 for the embedded SQLite store",
                onramp_store::postgres::redact(url)
            );
        }
        Ok(())
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("onramp.db")
    }
    pub fn hub_store_path(&self) -> PathBuf {
        self.data_dir.join("hub.db")
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
    /// What a running `serve` writes for the CLI: its address, ID scope, CA,
    /// process ID. Removed when it stops.
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("serve.json")
    }
    /// The same as [`Config::state_file`] without the process: kept when the
    /// server stops, so that the CLI knows where the deployment answers.
    pub fn deployment_file(&self) -> PathBuf {
        self.data_dir.join("deployment.json")
    }
}

#[cfg(test)]
mod tests;
