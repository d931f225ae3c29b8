//! Lowest-latency allocation's measurements: this node's round trip to each
//! linked hub, taken as the time of a TCP connection plus TLS handshake to
//! the hub's HTTPS port (the same work a device's first hub call does, and
//! nothing the hub has to authenticate or log).
//!
//! Each probe round reads the links of every provisioning service, so hubs
//! linked or unlinked at runtime join or leave at the next round. Samples
//! are smoothed (EWMA); a hub that fails or times out a probe is left out
//! of lowest-latency allocation until it answers again. Every sample is also
//! written to the store, for `onramp linked-hub list`, and to the
//! `onramp_hub_latency_seconds{hub}` gauge.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use onramp_core::ports::{HubLatency, HubLatencySample, Store, StoreExt};
use onramp_model::UtcTime;
use onramp_model::authority::BadAuthority;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Why a probe took no measurement.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Authority(#[from] BadAuthority),
    #[error("'{host}' is not a host name: {source}")]
    HostName {
        host: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("no TLS handshake within {ms} ms")]
    Timeout { ms: u128 },
}

/// Weight of a new sample in the smoothed value.
const SMOOTHING: f64 = 0.3;

#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Smoothed round trips by hub (host name, lower case); shared with the engine.
#[derive(Debug, Default)]
pub struct LatencyTable {
    hubs: RwLock<HashMap<String, Measure>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    smoothed_ms: Option<f64>,
    /// The last probe failed: the hub takes no lowest-latency devices.
    down: bool,
}

impl LatencyTable {
    /// Folds a probe result in; returns the smoothed value.
    pub fn record(&self, hub: &str, sample: Result<f64, ()>) -> Option<f64> {
        let mut hubs = self.hubs.write().unwrap_or_else(|e| e.into_inner());
        let m = hubs.entry(hub.to_ascii_lowercase()).or_default();
        match sample {
            Ok(ms) => {
                m.smoothed_ms = Some(match m.smoothed_ms {
                    Some(prev) if !m.down => prev + SMOOTHING * (ms - prev),
                    _ => ms,
                });
                m.down = false;
            }
            Err(()) => m.down = true,
        }
        m.smoothed_ms.filter(|_| !m.down)
    }

    /// Forgets hubs that are no longer linked anywhere.
    fn retain(&self, linked: &[String]) {
        self.hubs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|h, _| linked.iter().any(|l| l.eq_ignore_ascii_case(h)));
    }
}

impl HubLatency for LatencyTable {
    fn latency_ms(&self, hub: &str) -> Option<f64> {
        self.hubs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hub.to_ascii_lowercase())
            .filter(|m| !m.down)
            .and_then(|m| m.smoothed_ms)
    }
}

/// Probes every linked hub each interval until `stop` resolves.
pub async fn run(
    store: Arc<dyn Store>,
    table: Arc<LatencyTable>,
    tls: Arc<rustls::ClientConfig>,
    node: String,
    settings: ProbeSettings,
    stop: impl std::future::Future<Output = ()>,
) {
    let rounds = async {
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let hubs = match linked_hubs(&*store).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read linked hubs to measure their latency");
                    continue;
                }
            };
            table.retain(&hubs);
            let probes = hubs.iter().map(|hub| {
                let tls = tls.clone();
                async move { (hub, probe(hub, tls, settings.timeout).await) }
            });
            for (hub, result) in futures_util::future::join_all(probes).await {
                let smoothed = table.record(hub, result.as_ref().map(|ms| *ms).map_err(|_| ()));
                let error = result.err().map(|e| e.to_string());
                crate::events::HubProbe {
                    hub,
                    smoothed_ms: smoothed,
                    error: error.as_deref(),
                }
                .emit();
                let sample = HubLatencySample {
                    node: node.clone(),
                    hub: hub.clone(),
                    latency_ms: smoothed,
                    error,
                    measured: UtcTime::now(),
                };
                if let Err(e) = store.record_hub_latency(&sample).await {
                    tracing::debug!(error = %e, "cannot record a hub latency sample");
                }
            }
        }
    };
    tokio::select! {
        () = rounds => {}
        () = stop => {}
    }
}

/// Every hub linked to any provisioning service, once.
async fn linked_hubs(store: &dyn Store) -> Result<Vec<String>, onramp_core::ports::StoreError> {
    let mut names: Vec<String> = Vec::new();
    for service in store.services().await? {
        for hub in store.linked_hubs(&service.name).await? {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&hub.name)) {
                names.push(hub.name);
            }
        }
    }
    Ok(names)
}

/// One TCP connection and TLS handshake to `hub` (`host[:port]`, 443 by default).
pub async fn probe(
    hub: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<f64, ProbeError> {
    let (host, port) = split_host_port(hub)?;
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|source| ProbeError::HostName {
            host: host.to_owned(),
            source,
        })?;
    let started = Instant::now();
    let handshake = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(ProbeError::Connect)?;
        tcp.set_nodelay(true).ok();
        tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(ProbeError::Handshake)
    };
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(ProbeError::Timeout {
            ms: timeout.as_millis(),
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(_stream)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
    }
}

fn split_host_port(hub: &str) -> Result<(&str, u16), BadAuthority> {
    onramp_model::authority::split(hub).map(|(host, port)| (host, port.unwrap_or(443)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_follows_samples_and_failures_take_hubs_out() {
        let t = LatencyTable::default();
        assert_eq!(t.latency_ms("hub"), None);
        assert_eq!(t.record("Hub", Ok(100.0)), Some(100.0));
        let v = t.record("hub", Ok(0.0)).unwrap();
        assert!((v - 70.0).abs() < 1e-9, "{v}");
        assert_eq!(t.latency_ms("HUB"), Some(v));
        assert_eq!(t.record("hub", Err(())), None);
        assert_eq!(t.latency_ms("hub"), None);
        // Back: the first answer after an outage starts afresh.
        assert_eq!(t.record("hub", Ok(2.0)), Some(2.0));
        t.retain(&["other".into()]);
        assert_eq!(t.latency_ms("hub"), None);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host_port("h.example.net").unwrap(),
            ("h.example.net", 443)
        );
        assert_eq!(
            split_host_port("localhost:8443").unwrap(),
            ("localhost", 8443)
        );
        assert_eq!(split_host_port("[::1]:8443").unwrap(), ("::1", 8443));
        assert!(split_host_port("h:x").is_err());
    }
}
