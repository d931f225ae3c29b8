//! Opening the local deployment from its configuration: master keys, store,
//! the default provisioning service, the records a server leaves for the
//! CLI, and the lock that keeps one server to a data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use onramp_core::keys;
use onramp_core::ports::Store;
use onramp_core::tenant::{AccessRights, OWNER_POLICY, ProvisioningService, SharedAccessPolicy};
use onramp_model::{AllocationPolicy, IdScope, UtcTime};
use onramp_store::postgres::{PgOptions, redact};
use onramp_store::reseal::Resealable;
use onramp_store::sqlite::{Durability, SqliteOptions};
use onramp_store::{PgStore, Sealer, SqliteStore};
use serde::{Deserialize, Serialize};

use crate::cli::Location;
use crate::config::Config;

/// The master key ring: `ONRAMP_MASTER_KEY` (base64) when set, else the key
/// files under `<data>/keys` (created on first use).
pub fn sealer(config: &Config) -> anyhow::Result<Arc<Sealer>> {
    sealer_in(&config.keys_dir())
}

/// The master key ring: `ONRAMP_MASTER_KEY` when set, else the key files in `keys_dir`.
pub fn sealer_in(keys_dir: &std::path::Path) -> anyhow::Result<Arc<Sealer>> {
    if let Ok(key) = std::env::var("ONRAMP_MASTER_KEY") {
        return Ok(Arc::new(
            Sealer::from_base64(&key).context("ONRAMP_MASTER_KEY")?,
        ));
    }
    Ok(Arc::new(Sealer::load_or_create(keys_dir).with_context(
        || format!("master keys in {}", keys_dir.display()),
    )?))
}

/// Opens the deployment's store: PostgreSQL when `[store] url` (or
/// `--store-url`, `ONRAMP_STORE_URL`) names one, else the embedded SQLite
/// file in the data directory. Every command that reads or writes the
/// store opens it here, so each works on either.
pub async fn open_store(config: &Config, sealer: Arc<Sealer>) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_sealed(config, sealer).await?.0)
}

/// The deployment's store (as [`open_store`]) both as a `Store` and as the
/// keeper of sealed values `onramp keys` re-seals.
pub async fn open_sealed(
    config: &Config,
    sealer: Arc<Sealer>,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Resealable>)> {
    if let Some(url) = config.store_url() {
        let store = Arc::new(
            PgStore::open(url, sealer, PgOptions::default())
                .await
                .with_context(|| format!("opening the PostgreSQL store {}", redact(url)))?,
        );
        return Ok((store.clone(), store));
    }
    let options = SqliteOptions {
        durability: if config.store.durability == "normal" {
            Durability::Normal
        } else {
            Durability::Full
        },
        ..SqliteOptions::default()
    };
    let store = Arc::new(
        SqliteStore::open(&config.store_path(), sealer, options)
            .with_context(|| format!("opening the store {}", config.store_path().display()))?,
    );
    Ok((store.clone(), store))
}

/// Opens the store of an existing deployment (for admin commands).
pub async fn open_existing(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if config.store_url().is_none() && !config.store_path().exists() {
        anyhow::bail!(
            "no Onramp data in {}: start `onramp serve` there first, or point --data-dir / --config at the deployment",
            config.data_dir.display()
        );
    }
    open_store(config, sealer(config)?).await
}

/// Creates a provisioning service with a fresh ID scope and owner policy.
pub async fn create_service(
    store: &dyn Store,
    name: &str,
    policy: AllocationPolicy,
) -> anyhow::Result<(ProvisioningService, SharedAccessPolicy)> {
    let owner = SharedAccessPolicy {
        name: OWNER_POLICY.into(),
        primary_key: keys::generate(),
        secondary_key: keys::generate(),
        rights: AccessRights::ALL,
    };
    for _ in 0..16 {
        let n = u32::from_be_bytes(keys::random_bytes(4).try_into().unwrap_or([0; 4]));
        let service = ProvisioningService {
            name: name.to_owned(),
            id_scope: IdScope::from_number(n),
            allocation_policy: policy,
            custom_allocation: None,
            created: UtcTime::now(),
        };
        match store
            .create_service(&service, std::slice::from_ref(&owner))
            .await
        {
            Ok(()) => return Ok((service, owner)),
            Err(onramp_core::ports::StoreError::AlreadyExists(_)) => {
                if store.service(name).await?.is_some() {
                    anyhow::bail!("a provisioning service named '{name}' already exists");
                }
                // ID scope collision: draw another.
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not find a free ID scope")
}

/// How devices and the CLI reach the deployment of a data directory:
/// recorded by `onramp serve` in `<data>/deployment.json` at every start and
/// kept when it stops, so that the CLI knows the endpoints of a stopped
/// server and can say that nothing answers there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// `host[:port]` devices and operators use.
    pub endpoint: String,
    /// The socket address the HTTPS listener is bound to.
    pub listen: String,
    /// `host[:port]` of the MQTT listener (the port is left out when 8883).
    #[serde(default)]
    pub mqtt_endpoint: Option<String>,
    #[serde(default)]
    pub mqtt_listen: Option<String>,
    /// The socket address of the metrics listener (plain HTTP), when on.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    pub service: String,
    pub id_scope: String,
    pub ca_cert: Option<PathBuf>,
}

impl Deployment {
    /// The running server's record, else the one the last start left.
    pub fn read(config: &Config) -> Option<Self> {
        read_json::<ServeState>(&config.state_file())
            .map(|s| s.deployment)
            .or_else(|| read_json(&config.deployment_file()))
    }

    pub fn write(&self, config: &Config) -> anyhow::Result<()> {
        write_json(&config.deployment_file(), self)
    }

    /// How to start this deployment again so that it answers where it did.
    pub fn start_command(&self, config: &Config, location: &Location) -> String {
        let mut command = start_command(location, config);
        if self.listen != config.https.listen {
            command.push_str(&format!(" --https-listen {}", self.listen));
        }
        if let Some(mqtt) = self
            .mqtt_listen
            .as_ref()
            .filter(|m| **m != config.mqtt.listen)
        {
            command.push_str(&format!(" --mqtt-listen {mqtt}"));
        }
        command
    }
}

/// What a running server leaves in `<data>/serve.json` (and removes when it
/// stops): the deployment and the server's process ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeState {
    #[serde(flatten)]
    pub deployment: Deployment,
    pub pid: u32,
}

impl ServeState {
    /// The running server's record, if a server runs.
    pub fn read(config: &Config) -> Option<Self> {
        read_json(&config.state_file())
    }

    pub fn write(&self, config: &Config) -> anyhow::Result<()> {
        write_json(&config.state_file(), self)
    }
}

/// The companion hub of a data directory (run by `onramp hub serve`, or
/// embedded in `onramp serve`): recorded in `<data>/hub.json` at every
/// start, so that `onramp hub show` can name it with the hub stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRecord {
    /// `host[:port]` services and devices use.
    pub host_name: String,
    /// Embedded in `onramp serve` (on its listener) rather than on its own.
    pub embedded: bool,
    pub ca_cert: Option<PathBuf>,
}

impl HubRecord {
    pub fn file(data_dir: &Path) -> PathBuf {
        data_dir.join("hub.json")
    }

    pub fn read(data_dir: &Path) -> Option<Self> {
        read_json(&Self::file(data_dir))
    }

    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        write_json(&Self::file(data_dir), self)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Writes `value` as JSON, private, and whole: readers (the CLI, scripts
/// waiting for a server) never see half a file.
fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    onramp_files::write(&partial, text.as_bytes())
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// `onramp serve` with the configuration and data directory the CLI was given.
pub fn start_command(location: &Location, config: &Config) -> String {
    let mut command = String::from("onramp serve");
    if let Some(file) = &location.config {
        command.push_str(&format!(" --config {}", file.display()));
    }
    command.push_str(&format!(" --data-dir {}", config.data_dir.display()));
    command
}

/// `host[:port]` of the configured HTTPS listener, for a deployment that
/// has not started yet (a port of 0 is chosen at start: the default is used).
pub fn configured_endpoint(config: &Config) -> String {
    let port = config
        .https
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .unwrap_or(443);
    authority(&config.public_host, port)
}

/// Where the CLI sends a deployment's requests, and what to say when nothing
/// answers there.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` connected to.
    pub address: String,
    /// For the local deployment: the command that starts it.
    pub start: Option<String>,
}

impl Target {
    /// Says plainly that nothing answers at the target when `err` came from
    /// a connection that was refused (checked again with a connection of
    /// our own, as not every transport keeps the reason); other errors pass.
    pub async fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        if !self.refused().await {
            return err;
        }
        match &self.start {
            Some(start) => anyhow::anyhow!(
                "no Onramp is answering at {}: start it with `{start}`",
                self.address
            ),
            None => anyhow::anyhow!(
                "nothing is answering at {} (connection refused): check the address, and that the server there runs",
                self.address
            ),
        }
    }

    async fn refused(&self) -> bool {
        let connect = tokio::net::TcpStream::connect(&self.address);
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), connect).await,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    }
}

/// The lock that keeps one server to a data directory: `<data>/onramp.lock`,
/// held for the life of `onramp serve` or `onramp hub serve` (the kernel
/// lets go of it when the process ends, however it ends), with the
/// holder's process ID inside for the message a second server gets.
#[derive(Debug)]
pub struct DataDirLock {
    file: std::fs::File,
    path: PathBuf,
}

impl DataDirLock {
    const FILE: &str = "onramp.lock";

    /// Takes the lock of a data directory that has one already; `None` when
    /// there is none yet. Changes nothing, so a start can check the lock
    /// before it knows it will succeed; [`DataDirLock::claim`] then writes
    /// the process ID.
    pub fn existing(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(Self::FILE);
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(file) => Self::hold(file, dir).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("opening {}", path.display()))),
        }
    }

    /// Creates the data directory (private) and its lock file if missing,
    /// and takes the lock (then [`DataDirLock::claim`]).
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(Self::FILE);
        onramp_files::create_dir(dir)
            .and_then(|()| onramp_files::touch(&path))
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Self::hold(file, dir)
    }

    fn hold(file: std::fs::File, dir: &Path) -> anyhow::Result<Self> {
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(dir.join(Self::FILE))
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                let who = holder.map_or_else(
                    || "another process".to_owned(),
                    |pid| format!("process {pid}"),
                );
                anyhow::bail!(
                    "this data directory is served by {who} ({}): stop that server first, or give this one \
                     a data directory of its own with --data-dir",
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot lock the data directory {}", dir.display())));
            }
        }
        Ok(Self {
            file,
            path: dir.join(Self::FILE),
        })
    }

    /// Writes this process's ID into the held lock file, for the message
    /// another server gets; done once the start is sure to go on.
    pub fn claim(&mut self) -> anyhow::Result<()> {
        use std::io::{Seek, Write};
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| write!(self.file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// `host[:port]`: the port is left out when it is 443.
pub fn authority(host: &str, port: u16) -> String {
    authority_with_default(host, port, 443)
}

/// `host[:port]`: the port is left out when it is `default`.
pub fn authority_with_default(host: &str, port: u16, default: u16) -> String {
    if port == default {
        host.to_owned()
    } else {
        onramp_model::authority::join(host, port)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_deployment_that_never_ran_answers_where_its_configuration_says() {
        let mut config = Config::default();
        assert_eq!(configured_endpoint(&config), "localhost");
        config.https.listen = "127.0.0.1:8443".into();
        assert_eq!(configured_endpoint(&config), "localhost:8443");
        config.https.listen = "[::]:0".into();
        config.public_host = "dps.example.net".into();
        assert_eq!(configured_endpoint(&config), "dps.example.net");
    }

    #[test]
    fn the_start_hint_repeats_the_listeners_the_configuration_does_not_name() {
        let config = Config {
            data_dir: PathBuf::from("/srv/onramp"),
            ..Config::default()
        };
        let deployment = Deployment {
            endpoint: "localhost:8443".into(),
            listen: "127.0.0.1:8443".into(),
            mqtt_endpoint: Some("localhost".into()),
            mqtt_listen: Some(config.mqtt.listen.clone()),
            metrics_listen: None,
            service: "default".into(),
            id_scope: "0ne00000001".into(),
            ca_cert: None,
        };
        let location = Location {
            config: Some(PathBuf::from("/etc/onramp/onramp.toml")),
            data_dir: None,
        };
        assert_eq!(
            deployment.start_command(&config, &location),
            "onramp serve --config /etc/onramp/onramp.toml --data-dir /srv/onramp --https-listen 127.0.0.1:8443"
        );
    }
}
