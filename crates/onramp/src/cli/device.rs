//! `onramp device`, `demo` and `bench`: simulated devices.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::*;

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

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub location: Location,
    /// Transport: https, mqtt, mqtt-ws, amqp or amqp-ws.
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
    /// How the devices attest: symmetric-key, or tpm (individual enrollments
    /// of software TPMs that answer the nonce challenge over https; a few
    /// TPMs' keys are shared by the whole fleet, as the server's work does
    /// not depend on which TPM it is).
    #[arg(long, default_value = "symmetric-key", value_parser = ["symmetric-key", "tpm"])]
    pub attestation: String,
    /// Symmetric keys over https: keep each device trying for this many
    /// seconds, as an SDK does: a 429 or 503 waited out (its Retry-After),
    /// an `assigning` operation polled, a broken connection or an operation
    /// no server knows registered again. 0: one request a device.
    #[arg(long, default_value_t = 0)]
    pub retry_for: u64,
    /// With --retry-for: the wait before polling an `assigning` operation
    /// or registering again when the server advised none (no Retry-After).
    #[arg(long, default_value_t = 3000)]
    pub poll_interval_ms: u64,
    /// Symmetric keys over https: write every answer a device hears to this
    /// file as it hears it, one JSON object a line (registrationId, started
    /// and at in Unix ms, request, status, outcome, final, failures,
    /// retryAfter, errorCode, message, assignedHub).
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
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
    /// Transport to the hub: mqtt, mqtt-ws, amqp or amqp-ws.
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
    /// The device's registration ID.
    #[arg(long)]
    pub registration_id: String,
    /// The device's own symmetric key (individual enrollment).
    #[arg(long, conflicts_with = "group_key")]
    pub key: Option<String>,
    /// The enrollment group's key: the device key is derived from it.
    #[arg(long)]
    pub group_key: Option<String>,
    /// TPM: a software TPM kept in this file (its endorsement and storage root
    /// keys), created when absent; the device answers the TPM challenge over HTTPS.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key", "group_key", "certificate"])]
    pub tpm: Option<PathBuf>,
    /// X.509: the device's certificate chain (PEM: its certificate, then intermediates).
    #[arg(long, conflicts_with_all = ["key", "group_key"], requires = "certificate_key")]
    pub certificate: Option<PathBuf>,
    /// X.509: the device certificate's private key (PEM).
    #[arg(long)]
    pub certificate_key: Option<PathBuf>,
    /// JSON payload for the provisioning service (custom allocation).
    #[arg(long)]
    pub payload: Option<String>,
    /// Transport: https, mqtt, mqtt-ws, amqp or amqp-ws.
    #[arg(long, default_value = "https")]
    pub protocol: String,
    /// Ask for re-provisioning even if nothing changed.
    #[arg(long)]
    pub force: bool,
}
