//! Command-line interface. Every serve option can also come from the
//! configuration file and from `ONRAMP_*` environment variables; a flag beats
//! the environment, which beats the file, which beats the built-in default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod certs;
mod device;
mod serve;
mod service;

pub use certs::*;
pub use device::*;
pub use serve::*;
pub use service::*;

#[derive(Parser, Debug)]
#[command(
    name = "onramp",
    version,
    about = "Zero-touch IoT device provisioning, compatible with Azure IoT Hub DPS"
)]
pub struct Cli {
    /// How to print records: table, json or yaml (each command has its
    /// default: JSON for the service API's records, a table for lists of the
    /// deployment's).
    #[arg(long, short = 'o', global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<crate::output::Format>,
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
    /// Shared access policies of a provisioning service: who may use the service API.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Hubs linked to a provisioning service.
    LinkedHub {
        #[command(subcommand)]
        command: LinkedHubCommand,
    },
    /// Individual enrollments, through the service API.
    Enrollment {
        #[command(subcommand)]
        command: RecordCommand,
    },
    /// Enrollment groups, through the service API.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Registration records of devices, through the service API.
    Registration {
        #[command(subcommand)]
        command: RegistrationCommand,
    },
    /// Registration attempts (assigned, failed or refused) and why, newest
    /// first, through the service API: "why was my device refused?".
    Diagnostics(DiagnosticsArgs),
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
    /// The limits a server runs with and, while it runs, how much of each
    /// is in use and how often each refused.
    Limits {
        #[command(flatten)]
        location: Location,
        /// Print JSON instead of a table (the same as --output json).
        #[arg(long)]
        json: bool,
    },
    /// Backups of a deployment's data directory.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The master keys that seal secrets at rest: list, rotate, retire.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print a completion script for a shell, e.g. `onramp completions bash
    /// > /etc/bash_completion.d/onramp`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `onramp man | man -l -`.
    Man,
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

/// `onramp keys`: the master key ring (`<data>/keys`, or `ONRAMP_MASTER_KEY`).
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// The master keys, which one seals, and how many secrets each seals.
    List(Location),
    /// Add a new master key, make it the one that seals, and re-seal every
    /// secret under it, in batches, while servers run. Run it again after an
    /// interruption: it continues where it stopped.
    Rotate {
        #[command(flatten)]
        location: Location,
        /// Secrets re-sealed per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Milliseconds to rest between batches, leaving the database to the servers.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Remove an old master key; refused while any secret is still sealed under it.
    Retire {
        #[command(flatten)]
        location: Location,
        /// The ID of the key to remove (as `onramp keys list` shows it).
        id: String,
    },
}

/// `onramp store`: copies of a deployment's data.
#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy the data directory's stores (consistently, while it serves), master
    /// keys and TLS certificates into DIR, readable by the owner alone.
    Backup {
        #[command(flatten)]
        location: Location,
        /// The folder to write the backup to.
        dir: PathBuf,
        /// Overwrite a backup already in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup from DIR into the data directory; its server must be stopped.
    Restore {
        #[command(flatten)]
        location: Location,
        /// The folder a backup was written to.
        dir: PathBuf,
        /// Overwrite the deployment already in the data directory.
        #[arg(long)]
        force: bool,
    },
    /// Copy an embedded (SQLite) store into an empty PostgreSQL database:
    /// services, policies, enrollments, groups, CA certificates,
    /// registrations and linked hubs; the counts are checked after.
    Migrate {
        /// The data directory whose store (onramp.db) and master keys (keys/,
        /// or ONRAMP_MASTER_KEY) to copy; its server should be stopped.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database to copy into (postgres://…); it must hold
        /// no provisioning service yet.
        #[arg(long)]
        to: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command and every argument says what it is for (`--help`, the
    /// man page and the completions show it).
    #[test]
    fn every_command_and_argument_is_described() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in command.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "onramp", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:#?}");
    }
}
