//! `onramp service`, `enrollment`, `group`, `linked-hub`: the service API commands.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::*;

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
    List(Location),
    /// Create a provisioning service with its own ID scope and keys.
    Create {
        #[command(flatten)]
        location: Location,
        /// The provisioning service's name.
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
    /// Add (or replace) a shared access policy and print its connection
    /// string (`onramp policy create` refuses to replace one).
    AddPolicy(NewPolicy),
    /// Delete a provisioning service and everything it holds.
    Delete {
        #[command(flatten)]
        location: Location,
        /// The provisioning service's name.
        name: String,
        /// Required: deleting removes enrollments and registrations.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LinkedHubCommand {
    /// Link a hub given its connection string (a policy with registry write rights).
    #[command(visible_alias = "create")]
    Add {
        #[command(flatten)]
        scope: ServiceScope,
        /// The hub's connection string (a policy with registry read and write rights).
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
    },
    /// List linked hubs.
    List(ServiceScope),
    /// Show one linked hub as JSON: its settings, devices and measured latency.
    Show {
        #[command(flatten)]
        scope: ServiceScope,
        /// The hub's host name.
        name: String,
    },
    /// Change a linked hub's allocation settings or connection string.
    Update {
        #[command(flatten)]
        scope: ServiceScope,
        /// The hub's host name.
        name: String,
        /// The hub's connection string (a policy with registry read and write rights).
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
    },
    /// Unlink a hub. Devices on it stay there until they register again.
    #[command(visible_alias = "delete")]
    Remove {
        #[command(flatten)]
        scope: ServiceScope,
        /// The hub's host name.
        name: String,
        /// Unlink even when devices are registered on the hub.
        #[arg(long)]
        yes: bool,
    },
}

/// The symmetric keys `create` writes (each generated when absent) and
/// `update` replaces.
#[derive(Args, Debug, Clone, Default)]
pub struct SymmetricKeys {
    /// Primary symmetric key.
    #[arg(long, value_name = "BASE64")]
    pub key: Option<String>,
    /// Secondary symmetric key.
    #[arg(long, value_name = "BASE64")]
    pub secondary_key: Option<String>,
}

/// What an enrollment or a group decides about its devices' hubs and
/// twins; `update` replaces what it names.
#[derive(Args, Debug, Clone, Default)]
pub struct EnrollmentSettings {
    /// Initial twin as JSON, e.g. '{"tags":{},"properties":{"desired":{}}}'.
    #[arg(long)]
    pub initial_twin: Option<String>,
    /// Allocation policy: hashed, static, geoLatency or custom.
    #[arg(long)]
    pub allocation_policy: Option<String>,
    /// Hubs it may use (repeat the flag).
    #[arg(long = "iot-hub")]
    pub iot_hubs: Vec<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct EnrollmentSpec {
    #[command(flatten)]
    pub keys: SymmetricKeys,
    #[command(flatten)]
    pub settings: EnrollmentSettings,
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
    /// TPM (individual enrollments): the device's endorsement key, a
    /// marshaled TPM2B_PUBLIC as a file (binary or base64) or as base64
    /// text. Without an ID, the enrollment gets the registration ID the
    /// device's SDK computes from this key.
    #[arg(
        long,
        value_name = "FILE|BASE64",
        conflicts_with_all = ["key", "secondary_key", "certificate", "ca_reference"]
    )]
    pub tpm_ek: Option<String>,
    /// TPM: the device's storage root key, in the same forms (optional).
    #[arg(long, value_name = "FILE|BASE64", requires = "tpm_ek")]
    pub tpm_srk: Option<String>,
    /// TPM groups (Onramp's extension; Azure has no TPM groups): a
    /// manufacturer CA certificate (PEM file) that issues the TPMs' EK
    /// certificates (repeat the flag for several). The group admits every
    /// TPM whose EK certificate it issued.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["key", "secondary_key", "certificate", "ca_reference", "tpm_ek"]
    )]
    pub tpm_ca: Vec<PathBuf>,
    /// TPM groups: admit only these registration IDs (repeat the flag).
    #[arg(long, value_name = "ID", requires = "tpm_ca")]
    pub allow_registration_id: Vec<String>,
    /// TPM groups: admit only these endorsement keys, by the hex SHA-256 of
    /// their marshaled TPM2B_PUBLIC (repeat the flag); such a TPM needs no
    /// EK certificate.
    #[arg(long, value_name = "HEX", requires = "tpm_ca")]
    pub allow_ek_hash: Vec<String>,
}

/// What `update` changes; what it does not name stays as it is.
#[derive(Args, Debug, Clone, Default)]
pub struct EnrollmentChanges {
    #[command(flatten)]
    pub settings: EnrollmentSettings,
    /// Disable it: its devices are refused.
    #[arg(long, conflicts_with = "enable")]
    pub disable: bool,
    /// Enable it.
    #[arg(long)]
    pub enable: bool,
    /// Whether its devices get IoT Edge identities (true or false).
    #[arg(long)]
    pub edge: Option<bool>,
    #[command(flatten)]
    pub keys: SymmetricKeys,
    /// Change it only if it still has this ETag (default: the ETag read
    /// just before the change).
    #[arg(long)]
    pub etag: Option<String>,
}

/// The verbs of `onramp enrollment` and `onramp group`: individual
/// enrollments and enrollment groups are written, shown, listed and deleted
/// alike.
#[derive(Subcommand, Debug)]
pub enum RecordCommand {
    /// Create or replace one: symmetric keys (generated unless given), X.509
    /// with --certificate or --ca-reference, or TPM with --tpm-ek (a group:
    /// --tpm-ca).
    Create {
        #[command(flatten)]
        api: ServiceApi,
        /// The registration ID (individual enrollment) or the group ID;
        /// optional only with --tpm-ek.
        id: Option<String>,
        /// Individual enrollments only: the hub device ID (default: the
        /// registration ID).
        #[arg(long)]
        device_id: Option<String>,
        /// Replace one that exists (otherwise an existing ID is refused:
        /// change it with `update`).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        spec: Box<EnrollmentSpec>,
    },
    /// Change some settings of one and keep the rest (and its keys, unless
    /// new ones are given); refused if someone changed it in between.
    Update {
        #[command(flatten)]
        api: ServiceApi,
        /// The registration ID (individual enrollment) or the group ID.
        id: String,
        #[command(flatten)]
        changes: Box<EnrollmentChanges>,
    },
    /// Show one by its ID.
    Show {
        #[command(flatten)]
        api: ServiceApi,
        /// The registration ID (individual enrollment) or the group ID.
        id: String,
        /// Also show the symmetric keys.
        #[arg(long)]
        keys: bool,
    },
    /// List them all.
    List(ServiceApi),
    /// Delete one by its ID.
    Delete {
        #[command(flatten)]
        api: ServiceApi,
        /// The registration ID (individual enrollment) or the group ID.
        id: String,
    },
    /// Write them all to a file, for `import`: JSON Lines (one record a
    /// line) or CSV (a column per member, nested members as JSON).
    Export {
        #[command(flatten)]
        api: ServiceApi,
        /// The file to write (default: standard output).
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        format: FileFormatArg,
        /// Include the symmetric keys (one more call per record).
        #[arg(long)]
        keys: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Create them from a JSON Lines or CSV file (as `export` writes them),
    /// in bulk calls. IDs that exist are skipped, so an interrupted import
    /// runs again to its end; refused rows are reported (line, ID, the
    /// service's error) in FILE.rejected.jsonl or --report.
    Import {
        #[command(flatten)]
        api: ServiceApi,
        /// The file to read.
        file: PathBuf,
        #[command(flatten)]
        format: FileFormatArg,
        /// Records per bulk call.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch: u32,
        /// Where to write the report of refused rows (default: FILE.rejected.jsonl).
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

/// The format of an import or export file.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct FileFormatArg {
    /// The file's format: jsonl or csv (default: csv for a FILE ending in
    /// .csv, else jsonl).
    #[arg(long, value_enum)]
    pub format: Option<RecordFile>,
}

/// The file formats of `import` and `export`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFile {
    /// JSON Lines: one record a line, as the service API writes it.
    Jsonl,
    /// CSV with a header row: a column per member; nested members (the
    /// attestation, the initial twin, …) as JSON.
    Csv,
}

/// `onramp group`: what `onramp enrollment` does, and the key a group gives
/// one of its devices.
#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    #[command(flatten)]
    Record(RecordCommand),
    /// Print the key a device of a symmetric-key group signs with (derived
    /// from the group key and its registration ID), as `az iot dps
    /// enrollment-group compute-device-key` does.
    ComputeDeviceKey {
        #[command(flatten)]
        api: ServiceApi,
        /// The device's registration ID.
        registration_id: String,
        /// The group whose primary key to derive from (read through the service API).
        #[arg(long, required_unless_present = "key")]
        group_id: Option<String>,
        /// The group key itself (base64): nothing is asked of the service.
        #[arg(long, conflicts_with = "group_id")]
        key: Option<String>,
    },
}

/// `onramp registration`: the registration records devices leave.
#[derive(Subcommand, Debug)]
pub enum RegistrationCommand {
    /// Show a device's registration record by its registration ID.
    Show {
        #[command(flatten)]
        api: ServiceApi,
        /// The device's registration ID.
        registration_id: String,
    },
    /// List the registration records of an enrollment group's devices.
    List {
        #[command(flatten)]
        api: ServiceApi,
        /// The enrollment group (the service API lists registrations by group).
        #[arg(long)]
        group_id: String,
    },
    /// Delete a device's registration record (its hub identity stays); the
    /// device may register again.
    Delete {
        #[command(flatten)]
        api: ServiceApi,
        /// The device's registration ID.
        registration_id: String,
        /// Delete only if the record still has this ETag.
        #[arg(long)]
        etag: Option<String>,
    },
}

/// A policy to make: its name, rights and service.
#[derive(Args, Debug)]
pub struct NewPolicy {
    #[command(flatten)]
    pub scope: ServiceScope,
    /// The policy name (case-sensitive).
    pub name: String,
    /// Rights, e.g. "EnrollmentRead, RegistrationStatusRead".
    #[arg(long)]
    pub rights: String,
}

/// The deployment, and which of its provisioning services a command is about.
#[derive(Args, Debug)]
pub struct ServiceScope {
    #[command(flatten)]
    pub location: Location,
    /// Provisioning service (default: the configured one).
    #[arg(long)]
    pub service: Option<String>,
}

/// `onramp policy`: a provisioning service's shared access policies.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// List the policies and their rights.
    List(ServiceScope),
    /// Show one policy; --keys adds its connection strings.
    Show {
        #[command(flatten)]
        scope: ServiceScope,
        /// The policy name (case-sensitive).
        name: String,
        /// Also show the connection strings (they hold the keys).
        #[arg(long)]
        keys: bool,
    },
    /// Create a policy with fresh keys and print its connection string.
    Create(NewPolicy),
    /// Delete a policy: tokens signed with its keys stop working.
    Delete {
        #[command(flatten)]
        scope: ServiceScope,
        /// The policy name (case-sensitive).
        name: String,
    },
    /// Give a policy a new primary or secondary key. Clients holding the
    /// other key keep working: move them over, then regenerate that one.
    RegenerateKey {
        #[command(flatten)]
        scope: ServiceScope,
        /// The policy name (case-sensitive).
        name: String,
        /// Which key: primary or secondary.
        #[arg(long, value_parser = ["primary", "secondary"], default_value = "primary")]
        key: String,
    },
}

/// `onramp diagnostics`: which registration attempts to show.
#[derive(Args, Debug)]
pub struct DiagnosticsArgs {
    #[command(flatten)]
    pub api: ServiceApi,
    /// Only this device's attempts (its registration ID).
    #[arg(long, value_name = "REGISTRATION_ID")]
    pub device: Option<String>,
    /// Only attempts this recent: a duration (30s, 15m, 1h, 7d) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only attempts that ended so.
    #[arg(long, value_parser = ["assigned", "failed", "refused"])]
    pub outcome: Option<String>,
    /// At most this many attempts, the newest.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top: u16,
}
