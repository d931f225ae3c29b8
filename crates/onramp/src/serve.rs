//! `onramp serve`: wires store, engine, hubs and endpoints together and runs
//! until interrupted.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use onramp_core::admin::Admin;
use onramp_core::engine::{Engine, EngineConfig};
use onramp_core::linked_hubs::{LinkedHubs, NewLink};
use onramp_core::ports::{Store, StoreExt, SystemClock};
use onramp_endpoints::amqp::{AmqpRouter, DpsAmqp};
use onramp_endpoints::https::{AmqpWebSockets, WebSockets};
use onramp_endpoints::mqtt::{DpsMqtt, MqttRouter};
use onramp_endpoints::{AppState, EndpointConfig};
use onramp_hub::{CompanionHub, HubClient};
use onramp_net::amqp::AmqpApp;
use onramp_net::mqtt::MqttApp;
use onramp_net::tls::ServerCert;
use onramp_net::{Services, Shutdown};

use crate::cli::ServeArgs;
use crate::config::Config;
use crate::local::{
    self, DataDirLock, Deployment, HubRecord, ServeState, authority, authority_with_default,
};
use crate::logging;
use crate::tls_reload::{self, CertSource};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::for_serve(&args)?;
    init_logging(&config)?;
    // Listening for SIGTERM before the banner says the server runs: a stop
    // that comes right after it must not meet the default action (death).
    let stop = ShutdownSignals::listen();
    let running = start(&config, true).await?;
    stop.recv().await;
    running
        .shut_down(Duration::from_millis(config.limits.shutdown_grace_ms))
        .await;
    tracing::info!("stopped");
    Ok(())
}

/// A started Onramp: its endpoints, and how to stop it.
pub struct Running {
    pub state: Deployment,
    pub store: Arc<dyn Store>,
    pub stop: Arc<onramp_net::ShutdownTrigger>,
    /// Trusts the development CA and the configured extra CAs.
    pub client_tls: rustls::ClientConfig,
    /// Runs the registrations, which a stop lets finish.
    engine: Arc<Engine>,
    serving: tokio::task::JoinHandle<()>,
    state_file: std::path::PathBuf,
    /// Held until the server has stopped.
    _lock: DataDirLock,
}

impl Running {
    /// Waits until the listeners have closed (after [`Running::stop`] is
    /// triggered), then removes `serve.json` while this server still holds
    /// the data directory.
    pub async fn finished(self) {
        let _ = self.serving.await;
        let _ = std::fs::remove_file(&self.state_file);
    }

    /// Stops as SIGTERM does. New registrations are answered 503 with
    /// `Retry-After` at once, while the listeners keep serving: the
    /// registrations in flight still need the embedded hub, which the engine
    /// reaches over HTTPS. Once they have finished (or `grace` is over),
    /// the listeners close: connections finish the request in progress or
    /// on its way, idle ones (the hub client's among them) close after a
    /// moment, within what is left of `grace`.
    pub async fn shut_down(self, grace: Duration) {
        let started = std::time::Instant::now();
        let drained = self.engine.drain(grace).await;
        if drained.cut > 0 {
            tracing::warn!(
                "shutdown: {} of {} registrations in flight still running after the {grace:?} \
                 grace period; cutting them",
                drained.cut,
                drained.in_flight
            );
        } else {
            tracing::info!(
                "shutdown: {} registrations in flight finished",
                drained.in_flight
            );
        }
        self.stop.trigger();
        let left = grace.saturating_sub(started.elapsed());
        let _ = tokio::time::timeout(left.max(Duration::from_secs(1)), self.serving).await;
        // While the lock is still held: no other server can own the file yet.
        let _ = std::fs::remove_file(&self.state_file);
    }
}

/// What every listener offers in ALPN: each serves MQTT beside HTTP.
const ALPN: &[&[u8]] = onramp_net::tls::ALPN_HTTP_AND_MQTT;

/// Starts Onramp as configured: store, provisioning service, hubs, engine,
/// listeners. `summary` prints what an operator needs to know.
pub async fn start(config: &Config, summary: bool) -> anyhow::Result<Running> {
    let budget = onramp_net::descriptors::connection_budget(
        config.limits.max_connections,
        config.limits.reserved_descriptors,
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(before) = budget.raised_from {
        tracing::info!(
            from = before,
            to = budget.open_files,
            "raised the open-file limit to the hard limit"
        );
    }
    tracing::info!(
        open_files = budget.open_files,
        max_connections = budget.max_connections,
        "connections capped below the open-file limit"
    );
    // Whatever can fail without the data directory comes first, so that a
    // start that fails changes nothing there: another server's lock, the
    // listeners, the operator's files and settings.
    let held = DataDirLock::existing(&config.data_dir)?;

    let listener = tokio::net::TcpListener::bind(&config.https.listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow::anyhow!(
                "cannot listen on {} ({e}): ports below 1024 need root or CAP_NET_BIND_SERVICE \
                 (sudo setcap cap_net_bind_service=+ep $(which onramp)); or choose another port with \
                 --https-listen 127.0.0.1:8443 (the Azure SDKs' HTTPS transports insist on 443)",
                config.https.listen
            )
        } else {
            anyhow::anyhow!("cannot listen on {}: {e}", config.https.listen)
        }
    })?;
    let bound = listener.local_addr()?;
    let endpoint = authority(&config.public_host, bound.port());
    let off = "set --mqtt-listen off to go without";
    let mqtt_listener = bind_if_on(&config.mqtt.listen, "MQTT", off).await?;
    let mqtt_bound = mqtt_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let off = "set --amqp-listen off to go without";
    let amqp_listener = bind_if_on(&config.amqp.listen, "AMQP", off).await?;
    let advice = "choose another address with --metrics-listen, or off to go without";
    let metrics_listener = bind_if_on(&config.metrics.listen, "metrics", advice).await?;
    let metrics_bound = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let operator_tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => {
            let source = CertSource::Operator {
                cert: cert.clone(),
                key: key.clone(),
            };
            let (chain, key) = source.read()?;
            Some((ServerCert::from_pem(&chain, &key)?, source))
        }
        _ => None,
    };
    let mut extra_trust = String::new();
    for path in &config.tls.trust {
        extra_trust.push_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let configured_hubs = config
        .linked_hubs
        .iter()
        .map(|h| {
            NewLink {
                connection_string: &h.connection_string,
                region: &h.location,
                weight: h.allocation_weight,
                allocate: h.apply_allocation_policy,
                companion: false,
            }
            .build()
            .map_err(|e| anyhow::anyhow!("linked_hubs in the configuration: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let policy = config.allocation_policy()?;

    let mut lock = match held {
        Some(lock) => lock,
        None => DataDirLock::create(&config.data_dir)?,
    };
    lock.claim()?;
    let sealer = local::sealer(config)?;
    let store = local::open_store(config, sealer.clone()).await?;

    // TLS: the operator's certificate, or the development PKI.
    let (server_cert, cert_source, ca_path, ca_pem) = match operator_tls {
        Some((cert, source)) => (cert, source, None, None),
        None => {
            let mut names = onramp_net::pki::default_host_names();
            if !names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&config.public_host))
            {
                names.insert(0, config.public_host.clone());
            }
            let pki = onramp_net::pki::load_or_create(&config.tls_dir(), &names)
                .context("development certificates")?;
            (
                ServerCert::from_pem(&pki.server_chain_pem, &pki.server_key_pem)?,
                CertSource::Development {
                    dir: config.tls_dir(),
                    names,
                },
                Some(pki.ca_cert_path),
                Some(pki.ca_pem),
            )
        }
    };
    let server_tls = onramp_net::tls::server_config_with(server_cert.clone(), ALPN)?;
    tls_reload::spawn(server_cert, cert_source);

    // The provisioning service, created on first start.
    let (service, created_owner) = match store.service(&config.service.name).await? {
        Some(s) => (s, None),
        None => {
            let (s, owner) = local::create_service(&*store, &config.service.name, policy).await?;
            (s, Some(owner))
        }
    };

    // Hubs: the embedded companion hub and the configured ones.
    let linked_hubs = LinkedHubs::new(store.clone());
    let hub = if config.hub.embedded {
        let hub = CompanionHub::open_with(
            &config.hub_store_path(),
            &endpoint,
            sealer.clone(),
            config.hub.limits(),
        )
        .await?;
        linked_hubs
            .link_embedded(&service.name, &hub.owner_connection_string())
            .await?;
        Some(hub)
    } else {
        None
    };
    for link in &configured_hubs {
        linked_hubs.link(&service.name, link).await?;
    }

    let mut trust = ca_pem.clone().unwrap_or_default();
    trust.push_str(&extra_trust);
    let client_tls =
        onramp_net::tls::client_config(Some(&trust).filter(|t| !t.is_empty()).map(String::as_str))?;
    let hubs = Arc::new(
        HubClient::new(
            client_tls.clone(),
            Duration::from_secs(config.hub.timeout_seconds),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let webhook = Arc::new(
        onramp_webhook::WebhookClient::new(
            client_tls.clone(),
            Duration::from_millis(config.allocation.webhook_timeout_ms),
        )
        .map_err(anyhow::Error::msg)?
        .with_retries(onramp_webhook::Retries {
            retries: config.allocation.webhook_retries,
            ..Default::default()
        }),
    );
    let latency = Arc::new(onramp_hub::latency::LatencyTable::default());

    let metrics = match &metrics_listener {
        Some(_) => Some(install_metrics_recorder()?),
        None => None,
    };
    let clock = Arc::new(SystemClock);
    let store_dyn: Arc<dyn Store> = store.clone();
    let engine = Arc::new(
        Engine::new(
            store_dyn.clone(),
            hubs,
            clock.clone(),
            EngineConfig {
                latency_tolerance_ms: config.allocation.latency_tolerance_ms,
                reply_budget: Duration::from_millis(config.limits.register_reply_budget_ms),
                max_registrations_in_flight: config.limits.max_registrations_in_flight,
                ..EngineConfig::default()
            },
        )
        .with_webhook(webhook)
        .with_latency(latency.clone())
        .with_regions(config.regions())
        .with_throttle(config.throttle.engine())
        .with_diagnostics(config.diagnostics.engine())
        .with_node(config.node.name.clone()),
    );
    // Its writer, and the pruning of old entries, from the start.
    engine.diagnostics().start();
    let store_dyn_for_probes = store_dyn.clone();
    let admin = Arc::new(Admin::new(store_dyn, clock));
    let endpoint_config = EndpointConfig {
        service_host_names: vec![endpoint.clone(), config.public_host.clone()],
        public_base_url: format!("https://{endpoint}"),
        max_body_bytes: config.limits.max_body_bytes,
        ..EndpointConfig::default()
    };
    // One MQTT application for every port: DPS or the embedded hub, by user name.
    let mqtt_app: Arc<dyn MqttApp> = Arc::new(MqttRouter {
        dps: Arc::new(DpsMqtt::new(engine.clone(), endpoint_config.clone())),
        hub: hub.as_ref().map(|h| h.mqtt_app() as Arc<dyn MqttApp>),
    });
    let mqtt_limits = config.mqtt.limits();
    // DPS over AMQP, on the AMQP port, on every other port by its protocol
    // header, and over WebSockets on the HTTPS port.
    let amqp_limits = config.amqp.limits();
    // The embedded hub takes the connections that start without SASL and
    // without a client certificate (see `AmqpRouter`).
    let amqp_app: Arc<dyn AmqpApp> = Arc::new(AmqpRouter {
        dps: Arc::new(DpsAmqp::new(
            engine.clone(),
            endpoint_config.clone(),
            amqp_limits,
        )),
        hub: hub
            .as_ref()
            .map(|h| h.amqp_app(amqp_limits) as Arc<dyn AmqpApp>),
        limits: amqp_limits,
    });
    let (stop, shutdown) = Shutdown::new();
    let state = Arc::new(AppState {
        engine: engine.clone(),
        admin,
        config: endpoint_config,
        fallback: hub.as_ref().map(|h| h.router()),
        websockets: Some(WebSockets {
            app: mqtt_app.clone(),
            limits: mqtt_limits,
            shutdown: shutdown.clone(),
            amqp: Some(AmqpWebSockets {
                app: amqp_app.clone(),
                max_message_bytes: amqp_limits.max_frame_bytes as usize,
            }),
        }),
    });

    let ca_cert = ca_path
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let deployment = Deployment {
        endpoint: endpoint.clone(),
        listen: bound.to_string(),
        service: service.name.clone(),
        id_scope: service.id_scope.to_string(),
        mqtt_endpoint: mqtt_bound
            .map(|a| authority_with_default(&config.public_host, a.port(), 8883)),
        mqtt_listen: mqtt_bound.map(|a| a.to_string()),
        metrics_listen: metrics_bound.map(|a| a.to_string()),
        ca_cert: ca_cert.clone(),
    };
    // The lasting records first: once serve.json appears, they are there.
    deployment.write(config)?;
    if let Some(hub) = &hub {
        HubRecord {
            host_name: hub.host_name().to_owned(),
            embedded: true,
            ca_cert,
        }
        .write(&config.data_dir)?;
    }
    ServeState {
        deployment: deployment.clone(),
        pid: std::process::id(),
    }
    .write(config)?;
    if summary {
        print_summary(config, &deployment, &*store, created_owner.as_ref()).await?;
    }

    let probes = shutdown.clone();
    let client_tls_for_callers = client_tls.clone();
    tokio::spawn(onramp_hub::latency::run(
        store_dyn_for_probes,
        latency,
        Arc::new(client_tls),
        config.node.name.clone(),
        onramp_hub::latency::ProbeSettings {
            interval: Duration::from_millis(config.allocation.latency_probe_interval_ms),
            timeout: Duration::from_millis(config.allocation.latency_probe_timeout_ms),
        },
        async move { probes.wait().await },
    ));
    if let (Some(listener), Some(handle)) = (metrics_listener, metrics) {
        tokio::spawn(onramp_endpoints::metrics::serve(
            listener,
            handle,
            shutdown.clone(),
        ));
    }
    let max_discard_bytes = state
        .config
        .max_body_bytes
        .max(state.config.max_bulk_body_bytes);
    let services = Services {
        http: onramp_endpoints::app(state),
        mqtt: Some(mqtt_app),
        mqtt_limits,
        amqp: Some(amqp_app),
    };
    let serving = tokio::spawn(onramp_net::serve_all(
        std::iter::once(listener)
            .chain(mqtt_listener)
            .chain(amqp_listener)
            .collect(),
        Arc::new(server_tls),
        services,
        config
            .limits
            .listener(budget.max_connections, max_discard_bytes),
        shutdown,
    ));
    Ok(Running {
        state: deployment,
        store,
        stop: Arc::new(stop),
        client_tls: client_tls_for_callers,
        engine,
        serving,
        state_file: config.state_file(),
        _lock: lock,
    })
}

async fn print_summary(
    config: &Config,
    state: &Deployment,
    store: &dyn Store,
    created_owner: Option<&onramp_core::tenant::SharedAccessPolicy>,
) -> anyhow::Result<()> {
    let hubs = store.linked_hubs(&state.service).await?;
    println!("Onramp {} is running.", env!("CARGO_PKG_VERSION"));
    println!(
        "  Global device endpoint  {}   (HTTPS and MQTT over WebSockets, listening on {})",
        state.endpoint, state.listen
    );
    if let (Some(mqtt), Some(listen)) = (&state.mqtt_endpoint, &state.mqtt_listen) {
        println!("  MQTT endpoint           {mqtt}   (listening on {listen})");
    }
    println!("  Service API             https://{}", state.endpoint);
    if let Some(listen) = &state.metrics_listen {
        println!(
            "  Metrics                 http://{listen}/metrics   (plain HTTP: keep it private)"
        );
    }
    println!(
        "  ID scope                {}   (provisioning service '{}')",
        state.id_scope, state.service
    );
    for h in &hubs {
        let what = if h.embedded {
            "embedded companion hub"
        } else {
            "linked hub"
        };
        println!(
            "  Linked hub              {}   ({what}, weight {})",
            h.name, h.allocation_weight
        );
    }
    if hubs.is_empty() {
        println!("  Linked hub              none: link one with `onramp linked-hub add`");
    }
    if let Some(ca) = &state.ca_cert {
        println!(
            "  CA certificate          {}   (development CA: make devices trust it)",
            ca.display()
        );
    }
    println!("  Data directory          {}", config.data_dir.display());
    if let Some(owner) = created_owner {
        println!();
        println!("  Service connection string (created now; shown once here):");
        println!("    {}", owner.connection_string(&state.endpoint));
    }
    println!("  Show the service and its connection string again with: onramp service show --keys");
    if hubs.iter().any(|h| h.embedded) {
        println!("  The embedded hub's connection string (its REST API): onramp hub show --keys");
    }
    Ok(())
}

/// The Prometheus recorder, told every metric's kind and `# HELP` text
/// (README's metrics table lists the same).
fn install_metrics_recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let declared = onramp_core::events::METRICS
        .iter()
        .chain(onramp_hub::events::METRICS)
        .chain(onramp_webhook::events::METRICS);
    for metric in declared {
        metric.describe();
    }
    onramp_net::admission::describe_metrics();
    onramp_hub::events::start_counters();
    Ok(handle)
}

/// The metrics listener, unless switched off: apart from the public port,
/// because the metrics name tenants and hubs.
/// A listener on `listen` unless it is off (see [`crate::config::listening`]); the
/// error names `what` it was for and `advice`.
async fn bind_if_on(
    listen: &str,
    what: &str,
    advice: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if !crate::config::listening(listen) {
        return Ok(None);
    }
    tokio::net::TcpListener::bind(listen)
        .await
        .map(Some)
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {listen}: {e} ({advice})"))
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let format = if config.log.format == "json" {
        logging::Format::Json
    } else {
        logging::Format::Text
    };
    logging::init(format, &config.log.filter)
}

/// SIGINT and SIGTERM, listened for from the moment this is made (a signal
/// that comes before [`ShutdownSignals::recv`] waits there).
pub(crate) struct ShutdownSignals {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignals {
    pub(crate) fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                signals: signal(SignalKind::interrupt())
                    .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the first of them.
    pub(crate) async fn recv(self) {
        #[cfg(unix)]
        match self.signals {
            Some((mut int, mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}
