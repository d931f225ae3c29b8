//! `onramp hub serve`: a companion hub on its own.

use std::sync::Arc;

use anyhow::Context;
use onramp_hub::CompanionHub;
use onramp_net::mqtt::MqttLimits;
use onramp_net::{ListenerLimits, Services, Shutdown};

use crate::cli::{HubCommand, HubServeArgs, Location};
use crate::config::Config;
use crate::local::{DataDirLock, Deployment, HubRecord, authority};
use crate::output::{Format, Output};

pub async fn run(command: HubCommand, output: Output) -> anyhow::Result<()> {
    match command {
        HubCommand::Serve(args) => serve(args).await,
        HubCommand::Show { location, keys } => show(&location, keys, output).await,
        HubCommand::Messages {
            data_dir,
            device,
            limit,
        } => messages(&data_dir, device.as_deref(), limit).await,
    }
}

async fn messages(
    data_dir: &std::path::Path,
    device: Option<&str>,
    limit: usize,
) -> anyhow::Result<()> {
    let db = data_dir.join("hub.db");
    if !db.exists() {
        anyhow::bail!(
            "no hub data in {}: point --data-dir at a hub's (or onramp serve's) data directory",
            data_dir.display()
        );
    }
    let sealer = crate::local::sealer_in(&data_dir.join("keys"))?;
    let store = onramp_hub::companion::HubStore::open(&db, sealer)?;
    for m in store.messages(device, 0, limit).await? {
        println!("{}", serde_json::to_string(&m)?);
    }
    Ok(())
}

/// The companion hub of a data directory, from its files alone (the hub
/// may be stopped): its host name and policies, and with `keys` their
/// connection strings, which open the hub's REST API.
async fn show(location: &Location, keys: bool, output: Output) -> anyhow::Result<()> {
    let config = Config::load(location)?;
    let dir = &config.data_dir;
    let db = dir.join("hub.db");
    if !db.exists() {
        anyhow::bail!(
            "no companion hub in {}: point --data-dir at the data directory of `onramp serve` \
             (its embedded hub) or of `onramp hub serve`",
            dir.display()
        );
    }
    // A data directory last served by an older version has no hub record;
    // its embedded hub answers at the deployment's endpoint.
    let record = HubRecord::read(dir)
        .or_else(|| {
            Deployment::read(&config).map(|d| HubRecord {
                host_name: d.endpoint,
                embedded: true,
                ca_cert: d.ca_cert,
            })
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} does not say which host name its hub answers to: start it once \
                 (onramp serve or onramp hub serve) and it records it",
                dir.display()
            )
        })?;
    let sealer = crate::local::sealer_in(&config.keys_dir())?;
    let store = onramp_hub::companion::HubStore::open(&db, sealer)?;
    let policies = store
        .policies()
        .await?
        .into_iter()
        .map(|p| HubPolicyView {
            connection_string: keys.then(|| p.connection_string(&record.host_name)),
            rights: p.rights.to_string(),
            name: p.name,
        })
        .collect();
    output.or(Format::Table).one(&HubView {
        host_name: record.host_name.clone(),
        runs: if record.embedded {
            "embedded in onramp serve, on its listener"
        } else {
            "run by onramp hub serve"
        },
        ca_certificate: record.ca_cert.as_ref().map(|c| c.display().to_string()),
        policies,
    })?;
    if !keys {
        eprintln!("Add --keys to show the connection strings (they hold the policies' keys).");
    }
    Ok(())
}

/// `onramp hub show`: where the hub answers and its policies.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HubView {
    host_name: String,
    runs: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_certificate: Option<String>,
    policies: Vec<HubPolicyView>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HubPolicyView {
    name: String,
    rights: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_string: Option<String>,
}

async fn serve(args: HubServeArgs) -> anyhow::Result<()> {
    let filter = std::env::var("ONRAMP_LOG").unwrap_or_else(|_| "info".into());
    crate::logging::init(crate::logging::Format::Text, &filter)?;
    let signals = crate::serve::ShutdownSignals::listen();
    let hub = start(&args).await?;
    println!(
        "Onramp companion hub {} is running (listening on {}).",
        hub.host, hub.listen
    );
    if let Some(l) = &hub.mqtt_listen {
        println!("  MQTT               {l}");
    }
    println!("  Connection string  {}", hub.connection_string);
    println!("  CA certificate     {}", hub.ca_cert.display());
    println!("  Link it:           onramp linked-hub add --connection-string '<the string above>'");
    let stop = hub.stop.clone();
    tokio::spawn(async move {
        signals.recv().await;
        stop.trigger();
    });
    let _ = hub.serving.await;
    Ok(())
}

/// A started companion hub.
pub struct RunningHub {
    /// The host name (and port) clients use.
    pub host: String,
    pub listen: std::net::SocketAddr,
    pub mqtt_listen: Option<std::net::SocketAddr>,
    pub connection_string: String,
    pub ca_cert: std::path::PathBuf,
    pub stop: Arc<onramp_net::ShutdownTrigger>,
    pub serving: tokio::task::JoinHandle<()>,
    /// Held as long as the hub runs.
    _lock: DataDirLock,
}

/// Starts a companion hub on its own listeners.
pub async fn start(args: &HubServeArgs) -> anyhow::Result<RunningHub> {
    // As for `onramp serve`: the data directory is touched only once another
    // server's lock, the listeners and the host name are known to be fine.
    let held = DataDirLock::existing(&args.data_dir)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    // A host with a port is used as given: the hub sits behind a proxy or
    // load balancer that clients reach on that port.
    let (host, bare_host) = match onramp_model::authority::split(&args.host).context("--host")? {
        (h, Some(_)) => (args.host.clone(), h.to_owned()),
        (h, None) => (authority(h, port), h.to_owned()),
    };
    let mqtt_listener =
        if args.mqtt_listen.is_empty() || args.mqtt_listen.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(
                tokio::net::TcpListener::bind(&args.mqtt_listen)
                    .await
                    .with_context(|| format!("cannot listen for MQTT on {}", args.mqtt_listen))?,
            )
        };
    let mut lock = match held {
        Some(lock) => lock,
        None => DataDirLock::create(&args.data_dir)?,
    };
    lock.claim()?;
    let mut names = onramp_net::pki::default_host_names();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&bare_host)) {
        names.insert(0, bare_host);
    }
    let pki = onramp_net::pki::load_or_create(&args.data_dir.join("tls"), &names)?;
    let tls = onramp_net::tls::server_config(
        &pki.server_chain_pem,
        &pki.server_key_pem,
        onramp_net::tls::ALPN_HTTP_AND_MQTT,
    )?;
    let sealer = crate::local::sealer_in(&args.data_dir.join("keys"))?;
    let hub = CompanionHub::open_with(
        &args.data_dir.join("hub.db"),
        &host,
        sealer,
        args.limits.limits(),
    )
    .await?;
    HubRecord {
        host_name: host.clone(),
        embedded: false,
        ca_cert: Some(std::path::absolute(&pki.ca_cert_path).unwrap_or(pki.ca_cert_path.clone())),
    }
    .write(&args.data_dir)?;
    let listen = listener.local_addr()?;
    let mqtt_listen = mqtt_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let connection_string = hub.owner_connection_string();
    let (stop, shutdown) = Shutdown::new();
    let limits = MqttLimits::default();
    // AMQP on the listener by its protocol header, and over WebSockets.
    let amqp_limits = onramp_net::amqp::AmqpLimits::default();
    let services = Services {
        http: hub.standalone_router(limits, amqp_limits, shutdown.clone()),
        mqtt: Some(hub.mqtt_app()),
        mqtt_limits: limits,
        amqp: Some(hub.amqp_app(amqp_limits)),
    };
    let defaults = ListenerLimits::default();
    let budget = onramp_net::descriptors::connection_budget(
        defaults.max_connections,
        crate::config::LimitsConfig::default().reserved_descriptors,
    )
    .map_err(anyhow::Error::msg)?;
    let serving = tokio::spawn(onramp_net::serve_all(
        std::iter::once(listener).chain(mqtt_listener).collect(),
        Arc::new(tls),
        services,
        ListenerLimits {
            max_connections: budget.max_connections,
            ..defaults
        },
        shutdown,
    ));
    Ok(RunningHub {
        host,
        listen,
        mqtt_listen,
        connection_string,
        ca_cert: pki.ca_cert_path,
        stop: Arc::new(stop),
        serving,
        _lock: lock,
    })
}
