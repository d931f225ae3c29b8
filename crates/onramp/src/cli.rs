//! Command-line interface. Every serve option can also come from the
//! configuration file and from `ONRAMP_*` environment variables; a flag beats
//! the environment, which beats the file, which beats the built-in default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "onramp",
    version,
    about = "Zero-touch IoT device provisioning, compatible with Azure IoT Hub DPS"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the provisioning service (with an embedded companion hub by default).
    Serve(ServeArgs),
    /// Onramp's companion IoT hub.
    Hub {
        #[command(subcommand)]
        command: HubCommand,
    },
    /// Provisioning services (tenants) of this deployment.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Hubs linked to a provisioning service.
    LinkedHub {
        #[command(subcommand)]
        command: LinkedHubCommand,
    },
    /// Individual enrollments, through the service API.
    Enrollment {
        #[command(subcommand)]
        command: EnrollmentCommand,
    },
    /// Enrollment groups, through the service API.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// A simulated device.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Load test: many simulated devices register at once; prints rates and latencies.
    Bench(BenchArgs),
    /// A tour in one command: Onramp and three companion hubs in this
    /// process, a factory's worth of devices provisioned, then everything removed.
    Demo(DemoArgs),
    /// CA certificates of a provisioning service, and a test PKI.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Upload a CA certificate (PEM) to the provisioning service.
    Upload {
        #[command(flatten)]
        api: ServiceApi,
        name: String,
        #[arg(long)]
        file: PathBuf,
        /// Mark it verified without a proof of possession.
        #[arg(long)]
        verified: bool,
    },
    /// Get the code a verification certificate must carry as its CN.
    VerificationCode {
        #[command(flatten)]
        api: ServiceApi,
        name: String,
    },
    /// Prove possession: upload a certificate signed by the CA whose CN is the code.
    Verify {
        #[command(flatten)]
        api: ServiceApi,
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// List the CA certificates.
    List {
        #[command(flatten)]
        api: ServiceApi,
    },
    /// Delete a CA certificate.
    Delete {
        #[command(flatten)]
        api: ServiceApi,
        name: String,
    },
    /// FOR TESTING: create a root CA (writes OUT.pem and OUT.key.pem).
    CreateRoot {
        #[arg(long)]
        cn: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace files that exist at OUT (their key is lost).
        #[arg(long)]
        force: bool,
    },
    /// FOR TESTING: create an intermediate CA signed by ISSUER (ISSUER.pem, ISSUER.key.pem).
    CreateIntermediate {
        #[arg(long)]
        issuer: PathBuf,
        #[arg(long)]
        cn: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace files that exist at OUT (their key is lost).
        #[arg(long)]
        force: bool,
    },
    /// FOR TESTING: create a device certificate signed by ISSUER, or self-signed.
    /// Writes OUT.pem, OUT.key.pem and OUT.chain.pem (the certificate and the
    /// intermediates a device sends).
    CreateDevice {
        #[arg(long, required_unless_present = "self_signed")]
        issuer: Option<PathBuf>,
        #[arg(long, conflicts_with = "issuer")]
        self_signed: bool,
        #[arg(long)]
        cn: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace files that exist at OUT (their key is lost).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Devices to provision.
    #[arg(long, default_value_t = 10_000)]
    pub devices: u64,
    /// Devices registering at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Transport: https or mqtt (a fresh TLS connection per device either way).
    #[arg(long, default_value = "https", value_parser = ["https", "mqtt"])]
    pub protocol: String,
}

/// Where simulated devices connect; each defaults to the local server's.
#[derive(Args, Debug, Clone, Default)]
pub struct DeviceTarget {
    /// Global device endpoint, host[:port]. Default: the local server's.
    #[arg(long, env = "ONRAMP_ENDPOINT")]
    pub endpoint: Option<String>,
    /// ID scope of the provisioning service. Default: the local server's.
    #[arg(long)]
    pub scope: Option<String>,
    /// CA certificate (PEM) to trust. Default: the data directory's development CA.
    #[arg(long, env = "ONRAMP_CA")]
    pub ca: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub location: Location,
    /// Transport: https, mqtt or mqtt-ws.
    #[arg(long, default_value = "https")]
    pub protocol: String,
    /// Devices that register.
    #[arg(long, default_value_t = 1000)]
    pub devices: u64,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// fresh: a new TLS connection per device (a real fleet); reuse: one per worker (https).
    #[arg(long, default_value = "fresh")]
    pub connections: String,
    #[command(flatten)]
    pub target: DeviceTarget,
    /// Key of an existing symmetric-key enrollment group; default: a new group is created.
    #[arg(long)]
    pub group_key: Option<String>,
    /// Service connection string used to create the group.
    #[arg(long, env = "ONRAMP_CONNECTION_STRING")]
    pub connection_string: Option<String>,
    /// Registration ID prefix (default: bench-<random>).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Allow a target that is not on this machine.
    #[arg(long)]
    pub yes: bool,
    /// group: devices of one enrollment group (derived keys); individual:
    /// devices with individual enrollments, created in bulk first.
    #[arg(long, default_value = "group", value_parser = ["group", "individual"])]
    pub enrollments: String,
    /// individual: how many enrollments exist; the devices that register
    /// are spread over all of them (default: --devices).
    #[arg(long)]
    pub population: Option<u64>,
    /// individual: the enrollments exist already (a previous run with the same --prefix).
    #[arg(long)]
    pub skip_create: bool,
    /// individual: position of the first device that registers, so that a
    /// later run over the same population registers devices no earlier run did.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// individual: create the enrollments, report the import rate, and stop.
    #[arg(long)]
    pub create_only: bool,
    /// Start at most this many registrations per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// First run the same load against Onramp's ceiling server (a TLS server
    /// that answers every register request with a fixed JSON), then against
    /// the target, and report the ratio. Needs a build with --features ceiling.
    #[arg(long)]
    pub ceiling: bool,
}

impl BenchArgs {
    pub fn api(&self) -> ServiceApi {
        ServiceApi {
            location: self.location.clone(),
            connection_string: self.connection_string.clone(),
            endpoint: None,
            ca: self.target.ca.clone(),
        }
    }
}

/// Where the configuration and the data directory are.
#[derive(Args, Debug, Clone, Default)]
pub struct Location {
    /// Configuration file (TOML). Default: ./onramp.toml when it exists.
    #[arg(long, env = "ONRAMP_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory: store, keys, development certificates.
    #[arg(long, env = "ONRAMP_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub location: Location,
    /// Address of the HTTPS listener (device API, service API, hub REST API).
    #[arg(long, env = "ONRAMP_HTTPS_LISTEN")]
    pub https_listen: Option<String>,
    /// Address of the MQTT listener ("off" for none).
    #[arg(long, env = "ONRAMP_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,
    /// Address of the Prometheus metrics listener, plain HTTP ("off" for
    /// none; default 127.0.0.1:9464).
    #[arg(long, env = "ONRAMP_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Milliseconds an MQTT client has to send CONNECT.
    #[arg(long, env = "ONRAMP_MQTT_CONNECT_TIMEOUT_MS")]
    pub mqtt_connect_timeout_ms: Option<u64>,
    /// Host name devices and operators use to reach this server.
    #[arg(long, env = "ONRAMP_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Run the companion hub inside this process (true/false).
    #[arg(long, env = "ONRAMP_EMBEDDED_HUB")]
    pub embedded_hub: Option<bool>,
    /// Log format: text or json.
    #[arg(long, env = "ONRAMP_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or onramp=debug.
    #[arg(long, env = "ONRAMP_LOG")]
    pub log: Option<String>,
    /// Store durability: full (fsync every commit) or normal.
    #[arg(long, env = "ONRAMP_STORE_DURABILITY")]
    pub store_durability: Option<String>,
    /// Region this node runs in (compared with linked hubs' locations).
    #[arg(long, env = "ONRAMP_NODE_REGION")]
    pub node_region: Option<String>,
    /// Milliseconds between two measurements of the latency to each linked hub.
    #[arg(long, env = "ONRAMP_LATENCY_PROBE_INTERVAL_MS")]
    pub latency_probe_interval_ms: Option<u64>,
    /// Lowest-latency allocation shares devices among hubs this many
    /// milliseconds from the fastest.
    #[arg(long, env = "ONRAMP_LATENCY_TOLERANCE_MS")]
    pub latency_tolerance_ms: Option<f64>,
    /// Milliseconds a custom-allocation webhook has to answer.
    #[arg(long, env = "ONRAMP_WEBHOOK_TIMEOUT_MS")]
    pub webhook_timeout_ms: Option<u64>,
    /// Times a custom-allocation webhook that answers 429 or above is asked
    /// again (after 1 s, 10 s, 19 s, …; Azure asks 9 more times).
    #[arg(long, env = "ONRAMP_WEBHOOK_RETRIES")]
    pub webhook_retries: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum HubCommand {
    /// Run a companion hub on its own.
    Serve(HubServeArgs),
    /// Show the companion hub of a data directory (the one embedded in
    /// `onramp serve`, or one run by `onramp hub serve`), running or not:
    /// its host name and access policies.
    Show {
        #[command(flatten)]
        location: Location,
        /// Also show the policies' connection strings (they hold the keys);
        /// they sign calls to the hub's REST API.
        #[arg(long)]
        keys: bool,
    },
    /// Device-to-cloud messages the hub received, oldest first, as JSON lines.
    Messages {
        /// Data directory holding hub.db (a hub's own, or `onramp serve`'s
        /// for the embedded hub).
        #[arg(long, env = "ONRAMP_DATA_DIR", default_value = "./onramp-data")]
        data_dir: PathBuf,
        /// Only this device's messages.
        #[arg(long)]
        device: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Args, Debug, Clone)]
pub struct HubServeArgs {
    /// Data directory of this hub.
    #[arg(long, env = "ONRAMP_HUB_DATA_DIR", default_value = "./onramp-hub-data")]
    pub data_dir: PathBuf,
    /// Address of the hub's HTTPS listener (REST API, MQTT over WebSockets).
    #[arg(long, env = "ONRAMP_HUB_LISTEN", default_value = "0.0.0.0:443")]
    pub listen: String,
    /// Address of the hub's MQTT listener ("off" for none).
    #[arg(long, env = "ONRAMP_HUB_MQTT_LISTEN", default_value = "0.0.0.0:8883")]
    pub mqtt_listen: String,
    /// Host name clients use (the listener's port is added when it is not
    /// 443); `host:port` when clients reach the hub through a proxy.
    #[arg(long, env = "ONRAMP_HUB_HOST", default_value = "localhost")]
    pub host: String,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Show a provisioning service: its ID scope, endpoint, policies and linked hubs.
    Show {
        #[command(flatten)]
        location: Location,
        /// Service name (default: the configured one).
        name: Option<String>,
        /// Also show the policies' connection strings (they hold the keys).
        #[arg(long)]
        keys: bool,
    },
    /// List the provisioning services.
    List {
        #[command(flatten)]
        location: Location,
    },
    /// Create a provisioning service with its own ID scope and keys.
    Create {
        #[command(flatten)]
        location: Location,
        name: String,
        /// Policy for enrollments that name none: hashed, geoLatency or static.
        #[arg(long)]
        allocation_policy: Option<String>,
    },
    /// Change a provisioning service's allocation defaults.
    Update {
        #[command(flatten)]
        location: Location,
        /// Service name (default: the configured one).
        name: Option<String>,
        /// Policy for enrollments that name none: hashed, geoLatency, static,
        /// or custom (with a default webhook).
        #[arg(long)]
        allocation_policy: Option<String>,
        /// Default custom-allocation webhook, for enrollments without their own.
        #[arg(long)]
        webhook_url: Option<String>,
        /// The DPS api-version the webhook is written for.
        #[arg(long, default_value = "2021-10-01")]
        webhook_api_version: String,
        /// Remove the default webhook.
        #[arg(long, conflicts_with = "webhook_url")]
        no_webhook: bool,
    },
    /// Add (or replace) a shared access policy and print its connection string.
    AddPolicy {
        #[command(flatten)]
        location: Location,
        /// Policy name.
        name: String,
        /// Rights, e.g. "EnrollmentRead, RegistrationStatusRead".
        #[arg(long)]
        rights: String,
        /// Provisioning service (default: the configured one).
        #[arg(long)]
        service: Option<String>,
    },
    /// Delete a provisioning service and everything it holds.
    Delete {
        #[command(flatten)]
        location: Location,
        name: String,
        /// Required: deleting removes enrollments and registrations.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LinkedHubCommand {
    /// Link a hub given its connection string (a policy with registry write rights).
    Add {
        #[command(flatten)]
        location: Location,
        #[arg(long)]
        connection_string: String,
        /// Region of the hub.
        #[arg(long, default_value = "local")]
        region: String,
        /// Allocation weight, 1 to 1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Take new devices only when an enrollment names this hub.
        #[arg(long)]
        no_allocation: bool,
        /// The hub is an Onramp companion hub (it is then given the CAs of X.509 groups).
        #[arg(long)]
        companion: bool,
        /// Provisioning service (default: the configured one).
        #[arg(long)]
        service: Option<String>,
    },
    /// List linked hubs.
    List {
        #[command(flatten)]
        location: Location,
        #[arg(long)]
        service: Option<String>,
    },
    /// Change a linked hub's allocation settings or connection string.
    Update {
        #[command(flatten)]
        location: Location,
        name: String,
        #[arg(long)]
        connection_string: Option<String>,
        /// Region of the hub.
        #[arg(long)]
        region: Option<String>,
        /// Allocation weight, 1 to 1000.
        #[arg(long)]
        weight: Option<u32>,
        /// Whether the hub takes new devices by allocation (on) or only
        /// when an enrollment names it (off).
        #[arg(long, value_parser = ["on", "off"])]
        allocation: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    /// Unlink a hub. Devices on it stay there until they register again.
    Remove {
        #[command(flatten)]
        location: Location,
        name: String,
        #[arg(long)]
        service: Option<String>,
        /// Unlink even when devices are registered on the hub.
        #[arg(long)]
        yes: bool,
    },
}

/// How to reach the service API.
#[derive(Args, Debug, Clone, Default)]
pub struct ServiceApi {
    #[command(flatten)]
    pub location: Location,
    /// Service connection string. Default: the owner policy of the local
    /// data directory's service.
    #[arg(long, env = "ONRAMP_CONNECTION_STRING")]
    pub connection_string: Option<String>,
    /// Address to connect to instead of the connection string's HostName.
    #[arg(long, env = "ONRAMP_ENDPOINT")]
    pub endpoint: Option<String>,
    /// CA certificate (PEM) to trust. Default: the data directory's development CA.
    #[arg(long, env = "ONRAMP_CA")]
    pub ca: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct EnrollmentSpec {
    /// Symmetric key (base64); generated when absent.
    #[arg(long)]
    pub key: Option<String>,
    /// Secondary symmetric key (base64); generated when absent.
    #[arg(long)]
    pub secondary_key: Option<String>,
    /// Initial twin as JSON, e.g. '{"tags":{},"properties":{"desired":{}}}'.
    #[arg(long)]
    pub initial_twin: Option<String>,
    /// Allocation policy: hashed, static, geoLatency or custom.
    #[arg(long)]
    pub allocation_policy: Option<String>,
    /// Hubs this enrollment may use (repeat the flag).
    #[arg(long = "iot-hub")]
    pub iot_hubs: Vec<String>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Create an IoT Edge device identity.
    #[arg(long)]
    pub edge: bool,
    /// X.509: the device certificate (individual) or the signing CA (group), PEM.
    #[arg(long, conflicts_with_all = ["key", "secondary_key"])]
    pub certificate: Option<PathBuf>,
    /// X.509: a second certificate (PEM).
    #[arg(long, requires = "certificate")]
    pub secondary_certificate: Option<PathBuf>,
    /// X.509 group: the name of a verified CA certificate of the service.
    #[arg(long, conflicts_with_all = ["key", "secondary_key", "certificate"])]
    pub ca_reference: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EnrollmentCommand {
    /// Create or replace an individual enrollment (symmetric key).
    Create {
        #[command(flatten)]
        api: ServiceApi,
        registration_id: String,
        /// Hub device ID (default: the registration ID).
        #[arg(long)]
        device_id: Option<String>,
        #[command(flatten)]
        spec: Box<EnrollmentSpec>,
    },
    /// Show an individual enrollment.
    Show {
        #[command(flatten)]
        api: ServiceApi,
        registration_id: String,
        /// Also show the symmetric keys.
        #[arg(long)]
        keys: bool,
    },
    /// List individual enrollments.
    List {
        #[command(flatten)]
        api: ServiceApi,
    },
    /// Delete an individual enrollment.
    Delete {
        #[command(flatten)]
        api: ServiceApi,
        registration_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create or replace a symmetric-key enrollment group.
    Create {
        #[command(flatten)]
        api: ServiceApi,
        group_id: String,
        #[command(flatten)]
        spec: Box<EnrollmentSpec>,
    },
    /// Show an enrollment group.
    Show {
        #[command(flatten)]
        api: ServiceApi,
        group_id: String,
        /// Also show the group keys.
        #[arg(long)]
        keys: bool,
    },
    /// List enrollment groups.
    List {
        #[command(flatten)]
        api: ServiceApi,
    },
    /// Delete an enrollment group.
    Delete {
        #[command(flatten)]
        api: ServiceApi,
        group_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Provision one simulated device and print the result.
    Provision(ProvisionArgs),
    /// Provision, connect to the assigned hub, print the desired twin, send telemetry.
    Run(RunArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub provision: ProvisionArgs,
    /// Telemetry messages to send.
    #[arg(long, default_value_t = 5)]
    pub messages: u32,
    /// Transport to the hub: mqtt or mqtt-ws.
    #[arg(long, default_value = "mqtt")]
    pub hub_protocol: String,
    /// Reported properties to send, as a JSON object.
    #[arg(long)]
    pub report: Option<String>,
    /// After sending, wait this long for desired-property updates and print them.
    #[arg(long, default_value_t = 0)]
    pub listen_seconds: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub location: Location,
    #[command(flatten)]
    pub target: DeviceTarget,
    #[arg(long)]
    pub registration_id: String,
    /// The device's own symmetric key (individual enrollment).
    #[arg(long, conflicts_with = "group_key")]
    pub key: Option<String>,
    /// The enrollment group's key: the device key is derived from it.
    #[arg(long)]
    pub group_key: Option<String>,
    /// X.509: the device's certificate chain (PEM: its certificate, then intermediates).
    #[arg(long, conflicts_with_all = ["key", "group_key"], requires = "certificate_key")]
    pub certificate: Option<PathBuf>,
    /// X.509: the device certificate's private key (PEM).
    #[arg(long)]
    pub certificate_key: Option<PathBuf>,
    /// JSON payload for the provisioning service (custom allocation).
    #[arg(long)]
    pub payload: Option<String>,
    /// Transport: https, mqtt or mqtt-ws.
    #[arg(long, default_value = "https")]
    pub protocol: String,
    /// Ask for re-provisioning even if nothing changed.
    #[arg(long)]
    pub force: bool,
}
