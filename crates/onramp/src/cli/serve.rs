//! `onramp serve` and `onramp hub`: the options of the two servers.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use onramp_hub::companion::HubLimits;

use super::*;

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
    /// Address of the AMQP listener, DPS over AMQP 1.0 with TLS ("off" for
    /// none; default 0.0.0.0:5671).
    #[arg(long, env = "ONRAMP_AMQP_LISTEN")]
    pub amqp_listen: Option<String>,
    /// Address of the Prometheus metrics listener, plain HTTP ("off" for
    /// none; default 127.0.0.1:9464).
    #[arg(long, env = "ONRAMP_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Milliseconds an MQTT client has to send CONNECT.
    #[arg(long, env = "ONRAMP_MQTT_CONNECT_TIMEOUT_MS")]
    pub mqtt_connect_timeout_ms: Option<u64>,
    /// Milliseconds an AMQP client has to finish SASL and Open.
    #[arg(long, env = "ONRAMP_AMQP_OPEN_TIMEOUT_MS")]
    pub amqp_open_timeout_ms: Option<u64>,
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
    /// Keep the data in PostgreSQL (`postgres://user@host:port/database`),
    /// shared by every node that names it; default: the embedded SQLite file.
    #[arg(long, env = "ONRAMP_STORE_URL")]
    pub store_url: Option<String>,
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
    /// Address of the hub's HTTPS listener (REST API, MQTT and AMQP over
    /// WebSockets, and AMQP by its protocol header).
    #[arg(long, env = "ONRAMP_HUB_LISTEN", default_value = "0.0.0.0:443")]
    pub listen: String,
    /// Address of the hub's MQTT listener ("off" for none).
    #[arg(long, env = "ONRAMP_HUB_MQTT_LISTEN", default_value = "0.0.0.0:8883")]
    pub mqtt_listen: String,
    /// Host name clients use (the listener's port is added when it is not
    /// 443); `host:port` when clients reach the hub through a proxy.
    #[arg(long, env = "ONRAMP_HUB_HOST", default_value = "localhost")]
    pub host: String,
    #[command(flatten)]
    pub limits: HubLimitArgs,
}

/// The companion hub's limits on what devices send.
#[derive(Args, Debug, Clone)]
pub struct HubLimitArgs {
    /// Largest device-to-cloud message, in bytes (0: no limit).
    #[arg(long, default_value_t = HubLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Messages one device may send a second (0: no limit).
    #[arg(long, default_value_t = HubLimits::default().device_messages_per_second)]
    pub device_messages_per_second: u32,
    /// Telemetry messages kept per device, the oldest dropped first (0: no cap).
    #[arg(long, default_value_t = HubLimits::default().retained_messages_per_device)]
    pub retained_messages_per_device: u64,
    /// Telemetry older than this many seconds is dropped (0: kept).
    #[arg(long, default_value_t = HubLimits::default().retained_message_age.as_secs())]
    pub retained_message_age_seconds: u64,
}

impl Default for HubLimitArgs {
    fn default() -> Self {
        let d = HubLimits::default();
        Self {
            max_message_bytes: d.max_message_bytes,
            device_messages_per_second: d.device_messages_per_second,
            retained_messages_per_device: d.retained_messages_per_device,
            retained_message_age_seconds: d.retained_message_age.as_secs(),
        }
    }
}

impl HubLimitArgs {
    /// The hub's limits on what devices send.
    pub fn limits(&self) -> HubLimits {
        HubLimits::new(
            self.max_message_bytes,
            self.device_messages_per_second,
            self.retained_messages_per_device,
            self.retained_message_age_seconds,
        )
    }
}
