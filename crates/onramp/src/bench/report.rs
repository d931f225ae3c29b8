//! What a bench run measured, and how it is printed.

use super::*;

/// What one device's registration came to.
pub(super) enum Outcome {
    Assigned { hub: String },
    Failed { code: String },
}

#[derive(Default)]
pub(super) struct Tally {
    pub(super) latency_us: Option<Histogram<u64>>,
    pub(super) hubs: BTreeMap<String, u64>,
    pub(super) errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(super) fn record(&mut self, outcome: Outcome, elapsed: Duration) {
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

    pub(super) fn merge(&mut self, other: Tally) {
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

pub(super) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; the bounds are constants.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The summary `onramp bench` prints (and `--json` emits).
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub protocol: String,
    pub connections: String,
    pub devices: u64,
    pub concurrency: usize,
    /// Registrations started per second, when limited (`--rate`).
    pub rate_limit: Option<f64>,
    pub assigned: u64,
    pub failed: u64,
    pub seconds: f64,
    pub registrations_per_second: f64,
    pub latency_ms: Latency,
    pub errors: BTreeMap<String, u64>,
    pub hubs: BTreeMap<String, u64>,
    /// The same load against the ceiling server, run first (`--ceiling`).
    pub ceiling: Option<CeilingComparison>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CeilingComparison {
    pub registrations_per_second: f64,
    pub latency_ms: Latency,
    /// Onramp's rate as a share of the ceiling's.
    pub share: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Each hub with its devices and their percentage of those assigned.
    pub fn hub_shares(&self) -> impl Iterator<Item = (&str, u64, f64)> {
        let assigned = self.assigned.max(1) as f64;
        self.hubs
            .iter()
            .map(move |(hub, &n)| (hub.as_str(), n, 100.0 * n as f64 / assigned))
    }
}

pub(super) fn print_summary(s: &Summary) {
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
    for (hub, n, percent) in s.hub_shares() {
        println!("  hub {hub:<30} {n} ({percent:.1}%)");
    }
    for (code, n) in &s.errors {
        println!("  error {code:<28} {n}");
    }
    if let Some(c) = &s.ceiling {
        println!(
            "  ceiling server        {:.0} registrations/s: Onramp reached {:.0}% of it",
            c.registrations_per_second,
            100.0 * c.share
        );
    }
}
