//! `onramp bench`: a load generator of simulated devices.
//!
//! Devices belong to one symmetric-key enrollment group (created through the
//! service API unless `--group-key` names one) and register with their
//! derived keys — or have individual enrollments, imported in bulk first — `--concurrency` at a time, over HTTPS, MQTT or MQTT over
//! WebSockets. With `--attestation tpm` the devices are TPMs in software
//! (`SoftTpm`) with individual enrollments, over HTTPS: each registration
//! is the challenge request, the blob opened, and the signed retry. With `--connections fresh` every device opens its own TLS
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
use onramp_core::sas::{self, SasError};
use onramp_core::tpm::device::SoftTpm;
use onramp_model::{ErrorBody, RegistrationOperationStatus, RegistrationStatus};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::config::Config;
use crate::local::Deployment;
use crate::simulator::{self, DeviceSpec, Protocol};

mod report;
mod retry;
mod worker;

use report::*;
use retry::OutcomeLog;
use worker::*;

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
    let local = Deployment::read(&config);
    let protocol = Protocol::parse(&args.protocol)?;
    let reuse = match args.connections.as_str() {
        "fresh" => false,
        "reuse" if protocol == Protocol::Https => true,
        "reuse" => {
            bail!(
                "--connections reuse is for https; an MQTT or AMQP connection belongs to one device"
            )
        }
        other => bail!("--connections '{other}': use fresh or reuse"),
    };
    if args.rate < 0.0 || !args.rate.is_finite() {
        bail!("--rate must be 0 (no limit) or a positive number of registrations per second");
    }
    let crate::device::Resolved {
        endpoint,
        id_scope,
        ca,
    } = args.target.resolve(local.as_ref(), protocol)?;
    let address = simulator::address(&endpoint, protocol);
    if !is_loopback(&address) && !args.yes {
        bail!(
            "{address} is not a loopback address: a load test against another machine needs --yes"
        );
    }
    let run_id = format!("{:08x}", rand_u32());
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{run_id}"));

    let tpm = args.attestation == "tpm";
    if (args.retry_for > 0 || args.outcomes.is_some()) && (tpm || protocol != Protocol::Https) {
        bail!("--retry-for and --outcomes are for symmetric-key devices over https");
    }
    if tpm && protocol != Protocol::Https {
        bail!("--attestation tpm runs over https: MQTT has no TPM challenge");
    }
    if tpm && args.skip_create {
        bail!(
            "--attestation tpm makes new TPM keys each run: its enrollments cannot be reused (leave out --skip-create)"
        );
    }
    let fleet = if tpm || args.enrollments == "individual" {
        let population = args.population.unwrap_or(args.devices).max(1);
        if args.first.saturating_add(args.devices) > population {
            bail!(
                "--first {} plus --devices {} is more than --population {population}",
                args.first,
                args.devices
            );
        }
        let fleet = Fleet::Individual {
            secret: individual_secret(&prefix)?,
            population,
            first: args.first,
            tpms: if tpm { Some(tpm_pool()?) } else { None },
        };
        if !args.skip_create {
            import(&args, &prefix, &fleet, population).await?;
        }
        if args.create_only {
            return Ok(());
        }
        fleet
    } else {
        if args.first > 0 {
            bail!("--first picks among individual enrollments; add --enrollments individual");
        }
        let key = match &args.group_key {
            Some(k) => k.clone(),
            None => {
                crate::service_client::create_bench_group(&args.api(), &format!("bench-{run_id}"))
                    .await?
            }
        };
        Fleet::Group { key }
    };

    let tls = simulator::fleet_tls(&*crate::device::tls_config(&config, ca.as_ref())?, protocol);
    let load = Load {
        protocol,
        reuse,
        address,
        endpoint,
        id_scope,
        prefix,
        fleet,
        tls,
        devices: args.devices,
        concurrency: args.concurrency.max(1),
        rate: args.rate,
        label: if tpm {
            format!("{} (tpm)", args.protocol)
        } else {
            args.protocol.clone()
        },
        connections: args.connections.clone(),
        retry_for: Duration::from_secs(args.retry_for),
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        outcomes: match &args.outcomes {
            Some(path) => Some(Arc::new(OutcomeLog::create(path)?)),
            None => None,
        },
    };

    let ceiling = if args.ceiling {
        Some(ceiling_run(&config, &load, args.json).await?)
    } else {
        None
    };
    let mut summary = drive(&load, args.json).await;
    summary.ceiling = ceiling.map(|c| CeilingComparison {
        share: summary.registrations_per_second / c.registrations_per_second.max(f64::MIN_POSITIVE),
        registrations_per_second: c.registrations_per_second,
        latency_ms: c.latency_ms,
    });
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    if summary.assigned == 0 {
        bail!("no device was assigned");
    }
    Ok(())
}

/// Who the simulated devices are.
#[derive(Clone)]
pub(crate) enum Fleet {
    /// Devices of one group: keys derived from the group key.
    Group { key: String },
    /// Devices with individual enrollments `{prefix}-{i:07}` for i below
    /// `population`, keys derived from a secret of the prefix (so a later run
    /// with the same prefix finds them again); the `n`-th device to register
    /// is the `first + n`-th of a scattered order.
    Individual {
        secret: String,
        population: u64,
        first: u64,
        /// `--attestation tpm`: the TPMs member `i` uses the `i % len`-th of.
        tpms: Option<Arc<[SoftTpm]>>,
    },
}

impl Fleet {
    /// Registration ID and key of the `n`-th device to register.
    pub(crate) fn device(&self, prefix: &str, n: u64) -> Result<(String, String), SasError> {
        let i = match self {
            Fleet::Group { .. } => n,
            Fleet::Individual {
                population, first, ..
            } => spread(first + n, *population),
        };
        self.member(prefix, i)
    }

    /// The TPM of the `n`-th device to register, for a TPM fleet.
    pub(crate) fn tpm(&self, n: u64) -> Option<&SoftTpm> {
        match self {
            Fleet::Individual {
                population,
                first,
                tpms: Some(tpms),
                ..
            } => self.member_tpm(spread(first + n, *population), tpms),
            _ => None,
        }
    }

    fn member_tpm<'a>(&self, i: u64, tpms: &'a [SoftTpm]) -> Option<&'a SoftTpm> {
        let len = u64::try_from(tpms.len()).ok().filter(|l| *l > 0)?;
        tpms.get(usize::try_from(i % len).ok()?)
    }

    /// Registration ID and key of member `i` (in ID order).
    pub(crate) fn member(&self, prefix: &str, i: u64) -> Result<(String, String), SasError> {
        let id = format!("{prefix}-{i:07}");
        let key = match self {
            Fleet::Group { key } | Fleet::Individual { secret: key, .. } => {
                sas::derive_device_key(key, &id)?
            }
        };
        Ok((id, key))
    }
}

/// Visits 0..population in a scattered order (a bijection for n < population),
/// so that registrations hit the whole enrollment list, not its first pages.
fn spread(n: u64, population: u64) -> u64 {
    const STRIDES: [u64; 3] = [1_000_003, 999_983, 7_919];
    let stride = STRIDES
        .into_iter()
        .find(|s| !population.is_multiple_of(*s))
        .unwrap_or(1);
    ((u128::from(n) * u128::from(stride)) % u128::from(population)) as u64
}

/// TPMs a TPM fleet shares: each is two RSA-2048 key generations, too slow
/// to make one per device before a run.
const TPM_POOL: usize = 8;

fn tpm_pool() -> anyhow::Result<Arc<[SoftTpm]>> {
    (0..TPM_POOL)
        .map(|_| SoftTpm::generate().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Arc::from)
}

/// The key individual enrollments of a prefix are derived from.
fn individual_secret(prefix: &str) -> anyhow::Result<String> {
    // Any fixed base64 key will do: the secret only has to be reproducible.
    sas::derive_device_key("b25yYW1wLWJlbmNoLXNlY3JldA==", &format!("bench/{prefix}"))
        .map_err(anyhow::Error::msg)
}

/// Creates the individual enrollments through the service API's bulk
/// operation, a few batches in flight, with a progress bar.
async fn import(
    args: &BenchArgs,
    prefix: &str,
    fleet: &Fleet,
    population: u64,
) -> anyhow::Result<()> {
    const BATCH: u64 = 1_000;
    const IN_FLIGHT: usize = 4;
    let api = Arc::new(crate::service_client::Api::open(&args.api()).await?);
    let progress = bar(population, args.json, "importing enrollments");
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (api, next, progress, fleet, prefix) = (
            api.clone(),
            next.clone(),
            progress.clone(),
            fleet.clone(),
            prefix.to_owned(),
        );
        tasks.spawn(async move {
            loop {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                if first >= population {
                    return anyhow::Ok(());
                }
                let last = (first + BATCH).min(population);
                let mut enrollments = Vec::with_capacity((last - first) as usize);
                for i in first..last {
                    let (id, key) = fleet.member(&prefix, i).map_err(anyhow::Error::msg)?;
                    let attestation = match &fleet {
                        Fleet::Individual { tpms: Some(tpms), .. } => {
                            let tpm = fleet.member_tpm(i, tpms).context("an empty TPM pool")?;
                            serde_json::json!({"type": "tpm", "tpm": {"endorsementKey": tpm.endorsement_key().to_base64()}})
                        }
                        _ => serde_json::json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}),
                    };
                    enrollments.push(serde_json::json!({"registrationId": id, "attestation": attestation}));
                }
                let result = api
                    .call(
                        reqwest::Method::POST,
                        "enrollments",
                        Some(&serde_json::json!({"mode": "create", "enrollments": enrollments})),
                    )
                    .await?;
                if result["isSuccessful"] != serde_json::json!(true) {
                    let errors = result["errors"].as_array().map(Vec::len).unwrap_or(0);
                    bail!(
                        "{errors} enrollments of {first}..{last} were refused (already imported? use --skip-create): {}",
                        result["errors"][0]
                    );
                }
                progress.inc(last - first);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an import task failed")??;
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let line = format!(
        "imported {population} individual enrollments in {seconds:.1} s ({:.0}/s)",
        population as f64 / seconds
    );
    if args.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

pub(crate) fn bar(len: u64, hidden: bool, what: &str) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{per_sec}} ({{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// One load: where, who, how many, how fast.
#[derive(Clone)]
pub(crate) struct Load {
    pub protocol: Protocol,
    pub reuse: bool,
    pub address: String,
    pub endpoint: String,
    pub id_scope: String,
    pub prefix: String,
    pub fleet: Fleet,
    pub tls: Arc<rustls::ClientConfig>,
    pub devices: u64,
    pub concurrency: usize,
    pub rate: f64,
    pub label: String,
    pub connections: String,
    /// How long a device keeps trying (`--retry-for`; zero: one request).
    pub retry_for: Duration,
    /// The wait before a poll or a new attempt the server advised none for.
    pub poll_interval: Duration,
    /// Where every answer is written (`--outcomes`).
    pub outcomes: Option<Arc<OutcomeLog>>,
}

/// Runs a load to its end and sums it up.
pub(crate) async fn drive(load: &Load, quiet: bool) -> Summary {
    let progress = bar(load.devices, quiet, "registering");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..load.concurrency {
        workers.spawn(
            Worker {
                next: next.clone(),
                load: load.clone(),
                started,
                progress: progress.clone(),
            }
            .run(),
        );
    }
    let mut tally = Tally {
        latency_us: Some(histogram()),
        ..Default::default()
    };
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(t) => tally.merge(t),
            Err(e) => *tally.errors.entry(format!("worker: {e}")).or_default() += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let assigned: u64 = tally.hubs.values().sum();
    let failed: u64 = tally.errors.values().sum();
    let h = tally.latency_us.unwrap_or_else(histogram);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Summary {
        protocol: load.label.clone(),
        connections: load.connections.clone(),
        devices: load.devices,
        concurrency: load.concurrency,
        rate_limit: (load.rate > 0.0).then_some(load.rate),
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
        ceiling: None,
    }
}

/// The same load against an in-process ceiling server on this machine.
#[cfg(feature = "ceiling")]
async fn ceiling_run(config: &Config, load: &Load, quiet: bool) -> anyhow::Result<Summary> {
    if load.protocol != Protocol::Https {
        bail!("--ceiling measures HTTPS; use --protocol https");
    }
    let names = onramp_net::pki::default_host_names();
    let pki = onramp_net::pki::load_or_create(&config.tls_dir(), &names)
        .context("the development certificates of the data directory")?;
    let tls =
        onramp_net::tls::server_config(&pki.server_chain_pem, &pki.server_key_pem, &[b"http/1.1"])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(onramp_ceiling::serve(listener, Arc::new(tls)));
    let mut at_ceiling = load.clone();
    at_ceiling.address = format!("localhost:{port}");
    at_ceiling.endpoint = at_ceiling.address.clone();
    let summary = drive(&at_ceiling, quiet).await;
    server.abort();
    if !quiet {
        println!(
            "ceiling server: {:.0} registrations/s, p50 {:.2} ms, p99 {:.2} ms",
            summary.registrations_per_second, summary.latency_ms.p50, summary.latency_ms.p99
        );
    }
    Ok(summary)
}

#[cfg(not(feature = "ceiling"))]
async fn ceiling_run(_config: &Config, _load: &Load, _quiet: bool) -> anyhow::Result<Summary> {
    bail!("this onramp was built without the ceiling server: build it with --features ceiling")
}
