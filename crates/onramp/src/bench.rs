//! `onramp bench`: a load generator of simulated devices.
//!
//! Devices belong to one symmetric-key enrollment group (created through the
//! service API unless `--group-key` names one) and register with their
//! derived keys, `--concurrency` at a time, over HTTPS, MQTT or MQTT over
//! WebSockets. With `--connections fresh` every device opens its own TLS
//! connection without session resumption, as a real fleet does; with
//! `--connections reuse` (HTTPS only) each worker keeps one connection, which
//! measures the engine rather than the handshakes.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use onramp_core::sas;
use onramp_model::{ErrorBody, RegistrationOperationStatus, RegistrationStatus};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::config::Config;
use crate::local::ServeState;
use crate::simulator::{self, DeviceSpec, Protocol};

/// What one device's registration came to.
enum Outcome {
    Assigned { hub: String },
    Failed { code: String },
}

#[derive(Default)]
struct Tally {
    latency_us: Option<Histogram<u64>>,
    hubs: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, elapsed: Duration) {
        match outcome {
            Outcome::Assigned { hub } => {
                *self.hubs.entry(hub).or_default() += 1;
                if let Some(h) = self.latency_us.as_mut() {
                    let _ = h.record(elapsed.as_micros().max(1) as u64);
                }
            }
            Outcome::Failed { code } => *self.errors.entry(code).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        if let (Some(a), Some(b)) = (self.latency_us.as_mut(), other.latency_us.as_ref()) {
            let _ = a.add(b);
        }
        for (k, v) in other.hubs {
            *self.hubs.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; the bounds are constants.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The summary `onramp bench` prints (and `--json` emits).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub protocol: String,
    pub connections: String,
    pub devices: u64,
    pub concurrency: usize,
    pub assigned: u64,
    pub failed: u64,
    pub seconds: f64,
    pub registrations_per_second: f64,
    pub latency_ms: Latency,
    pub errors: BTreeMap<String, u64>,
    pub hubs: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn is_loopback(endpoint: &str) -> bool {
    match endpoint.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.location)?;
    let local = ServeState::read(&config);
    let protocol = Protocol::parse(&args.protocol)?;
    let reuse = match args.connections.as_str() {
        "fresh" => false,
        "reuse" if protocol == Protocol::Https => true,
        "reuse" => {
            bail!("--connections reuse is for https; an MQTT connection belongs to one device")
        }
        other => bail!("--connections '{other}': use fresh or reuse"),
    };
    let endpoint = match (&args.endpoint, &local) {
        (Some(e), _) => e.clone(),
        (None, Some(s)) if protocol == Protocol::Mqtt => s
            .mqtt_endpoint
            .clone()
            .unwrap_or_else(|| s.endpoint.clone()),
        (None, Some(s)) => s.endpoint.clone(),
        (None, None) => "localhost".into(),
    };
    let address = simulator::address(&endpoint, protocol);
    if !is_loopback(&address) && !args.yes {
        bail!(
            "{address} is not a loopback address: a load test against another machine needs --yes"
        );
    }
    let id_scope = args
        .scope
        .clone()
        .or_else(|| local.as_ref().map(|s| s.id_scope.clone()))
        .ok_or_else(|| anyhow::anyhow!("give the provisioning service's ID scope with --scope"))?;
    let ca = args
        .ca
        .clone()
        .or_else(|| local.as_ref().and_then(|s| s.ca_cert.clone()));
    let run_id = format!("{:08x}", rand_u32());
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{run_id}"));
    let group_key = match &args.group_key {
        Some(k) => k.clone(),
        None => {
            crate::service_client::create_bench_group(&args.api(), &format!("bench-{run_id}"))
                .await?
        }
    };

    // A fleet does not share TLS sessions: no resumption.
    let mut tls = (*crate::device::tls_config(&config, ca.as_ref())?).clone();
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = if protocol == Protocol::Https {
        vec![b"http/1.1".to_vec()]
    } else {
        Vec::new()
    };
    let tls = Arc::new(tls);

    let progress = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(args.devices);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let ctx = Worker {
            next: next.clone(),
            devices: args.devices,
            protocol,
            reuse,
            address: address.clone(),
            endpoint: endpoint.clone(),
            id_scope: id_scope.clone(),
            prefix: prefix.clone(),
            group_key: group_key.clone(),
            tls: tls.clone(),
            progress: progress.clone(),
        };
        workers.spawn(ctx.run());
    }
    let mut tally = Tally {
        latency_us: Some(histogram()),
        ..Default::default()
    };
    while let Some(done) = workers.join_next().await {
        tally.merge(done.context("a bench worker failed")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let assigned: u64 = tally.hubs.values().sum();
    let failed: u64 = tally.errors.values().sum();
    let h = tally.latency_us.unwrap_or_else(histogram);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let summary = Summary {
        protocol: args.protocol.clone(),
        connections: args.connections.clone(),
        devices: args.devices,
        concurrency: args.concurrency,
        assigned,
        failed,
        seconds,
        registrations_per_second: assigned as f64 / seconds,
        latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: h.max() as f64 / 1000.0,
        },
        errors: tally.errors,
        hubs: tally.hubs,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    if assigned == 0 {
        bail!("no device was assigned");
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    println!(
        "{} registrations over {} ({} connections) with concurrency {} in {:.2} s",
        s.devices, s.protocol, s.connections, s.concurrency, s.seconds
    );
    println!(
        "  assigned              {} ({} failed)",
        s.assigned, s.failed
    );
    println!("  registrations/second  {:.0}", s.registrations_per_second);
    println!(
        "  latency ms            p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99, s.latency_ms.max
    );
    for (hub, n) in &s.hubs {
        println!(
            "  hub {hub:<30} {n} ({:.1}%)",
            100.0 * *n as f64 / s.assigned.max(1) as f64
        );
    }
    for (code, n) in &s.errors {
        println!("  error {code:<28} {n}");
    }
}

struct Worker {
    next: Arc<AtomicU64>,
    devices: u64,
    protocol: Protocol,
    reuse: bool,
    address: String,
    endpoint: String,
    id_scope: String,
    prefix: String,
    group_key: String,
    tls: Arc<rustls::ClientConfig>,
    progress: indicatif::ProgressBar,
}

impl Worker {
    async fn run(self) -> Tally {
        let mut tally = Tally {
            latency_us: Some(histogram()),
            ..Default::default()
        };
        let mut connection: Option<SendRequest<Full<Bytes>>> = None;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.devices {
                break;
            }
            let registration_id = format!("{}-{i:07}", self.prefix);
            let key = match sas::derive_device_key(&self.group_key, &registration_id) {
                Ok(k) => k,
                Err(e) => {
                    tally.record(
                        Outcome::Failed {
                            code: format!("key: {e}"),
                        },
                        Duration::ZERO,
                    );
                    continue;
                }
            };
            let started = Instant::now();
            let outcome = match self.protocol {
                Protocol::Https => {
                    if !self.reuse {
                        connection = None;
                    }
                    self.https(&mut connection, &registration_id, &key).await
                }
                _ => self.mqtt(&registration_id, &key).await,
            };
            tally.record(outcome, started.elapsed());
            self.progress.inc(1);
        }
        tally
    }

    async fn mqtt(&self, registration_id: &str, key: &str) -> Outcome {
        let spec = DeviceSpec {
            endpoint: self.endpoint.clone(),
            id_scope: self.id_scope.clone(),
            registration_id: registration_id.to_owned(),
            key: Some(key.to_owned()),
            payload: None,
            force: false,
        };
        let transport = match self.protocol {
            Protocol::MqttWs => onramp_net::mqtt::client::Transport::WebSocket {
                path: "/$iothub/websocket".into(),
                subprotocol: "mqtt".into(),
            },
            _ => onramp_net::mqtt::client::Transport::Tls,
        };
        match simulator::provision_mqtt(&spec, self.tls.clone(), &transport).await {
            Ok(status) => outcome_of(status),
            Err(e) => Outcome::Failed {
                code: error_code(&e.to_string()),
            },
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream =
            onramp_net::mqtt::client::connect_tls_stream(&self.address, self.tls.clone()).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn https(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        registration_id: &str,
        key: &str,
    ) -> Outcome {
        match self.https_register(connection, registration_id, key).await {
            Ok(o) => o,
            Err(e) => {
                *connection = None;
                Outcome::Failed {
                    code: error_code(&e.to_string()),
                }
            }
        }
    }

    async fn https_register(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        registration_id: &str,
        key: &str,
    ) -> anyhow::Result<Outcome> {
        if connection.as_ref().is_none_or(|c| c.is_closed()) {
            *connection = Some(self.connect().await?);
        }
        let Some(sender) = connection.as_mut() else {
            bail!("no connection")
        };
        sender.ready().await?;
        let resource = format!("{}/registrations/{registration_id}", self.id_scope);
        let token = sas::sign(
            &resource,
            key,
            simulator::unix_now() + 3600,
            Some("registration"),
        )
        .map_err(anyhow::Error::msg)?;
        let body = serde_json::to_vec(&serde_json::json!({"registrationId": registration_id}))?;
        let host = self.address.split(':').next().unwrap_or("localhost");
        let request = hyper::Request::put(format!(
            "/{resource}/register?api-version={}",
            simulator::DEVICE_API_VERSION
        ))
        .header("host", host)
        .header("authorization", token)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(request).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if status >= 300 {
            let code = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error_code.to_string())
                .unwrap_or_else(|_| format!("HTTP {status}"));
            return Ok(Outcome::Failed { code });
        }
        let op: RegistrationOperationStatus = serde_json::from_slice(&bytes)?;
        Ok(outcome_of(op))
    }
}

fn outcome_of(status: RegistrationOperationStatus) -> Outcome {
    match (status.status, status.registration_state) {
        (RegistrationStatus::Assigned, Some(state)) => Outcome::Assigned {
            hub: state.assigned_hub.unwrap_or_default(),
        },
        (RegistrationStatus::Assigning, _) => Outcome::Failed {
            code: "still assigning".into(),
        },
        (_, Some(state)) => Outcome::Failed {
            code: state
                .error_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "failed".into()),
        },
        (other, None) => Outcome::Failed {
            code: other.to_string(),
        },
    }
}

/// The six-digit code in an error message, else the message's first words.
fn error_code(message: &str) -> String {
    message
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .map(str::to_owned)
        .unwrap_or_else(|| message.chars().take(60).collect())
}

fn rand_u32() -> u32 {
    let bytes = onramp_core::keys::random_bytes(4);
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
