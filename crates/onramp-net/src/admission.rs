//! Admission at the front door: what a connection must pass right after
//! `accept`, before any TLS work is spent on it. Three caps, each counted in
//! `onramp_connections_refused_total{reason}`:
//!
//! - `global`: connections served at once, on every listener together
//!   (below the open-file limit less the descriptors kept for the work
//!   established connections start: the store, hub and webhook clients);
//! - `address-connections`: connections open at once from one client address;
//! - `address-handshakes`: connections (each a TLS handshake) one client
//!   address may open a second, as a token bucket whose burst is a second's
//!   worth.
//!
//! A refused connection is closed at once: it costs an `accept` and a
//! `close`, no handshake and no memory beyond a map entry per address, so a
//! flood from one address cannot delay devices from others. Defaults are far
//! above what a factory needs: a factory's NAT puts a whole line behind one
//! address, and the SDKs open one connection per device.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

/// The metric a refused connection counts in, by `reason`.
pub const CONNECTIONS_REFUSED: &str = "onramp_connections_refused_total";
/// The metric of connections open now (on every listener together).
pub const CONNECTIONS_OPEN: &str = "onramp_connections_open";

/// Gives the installed recorder the front door's metrics' kinds and `# HELP`
/// texts.
pub fn describe_metrics() {
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed right after accept, by the cap that refused them."
    );
    metrics::describe_gauge!(
        CONNECTIONS_OPEN,
        "Connections open now, on every listener together."
    );
}

/// Per-address caps; 0 is no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimits {
    /// Connections open at once from one client address.
    pub max_connections: usize,
    /// Connections (TLS handshakes) one client address may open a second.
    pub handshakes_per_second: u32,
}

impl Default for AddressLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshakes_per_second: 5000,
        }
    }
}

/// Why a connection was refused: the `reason` label of its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Global,
    AddressConnections,
    AddressHandshakes,
}

impl Refused {
    pub const ALL: [Refused; 3] = [
        Refused::Global,
        Refused::AddressConnections,
        Refused::AddressHandshakes,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refused::Global => "global",
            Refused::AddressConnections => "address-connections",
            Refused::AddressHandshakes => "address-handshakes",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One client address: its open connections and its handshake bucket.
#[derive(Debug, Clone, Copy)]
struct Entry {
    open: usize,
    tokens: f64,
    refilled_at: Instant,
}

/// Addresses kept before those with nothing open and a full bucket (the
/// state of an address never seen) are forgotten; after that, each time the
/// map doubles, so tidying costs O(1) a connection.
const TIDY_ABOVE: usize = 4096;

/// The addresses seen, and the size past which they are tidied next.
#[derive(Debug)]
struct Books {
    entries: HashMap<IpAddr, Entry>,
    tidy_above: usize,
}

/// Refusals are logged at most this often (each is counted).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The per-address books of every listener.
#[derive(Debug)]
pub struct Admission {
    limits: AddressLimits,
    /// The global cap, for the log.
    max_connections: usize,
    addresses: Mutex<Books>,
    refused: [AtomicU64; 3],
    last_log: Mutex<Option<Instant>>,
}

/// A connection's place under the global cap and its address's; given back
/// when the connection ends.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _admitted: Admitted,
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// A connection's place in its address's count; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    addr: IpAddr,
}

impl Admission {
    pub fn new(limits: AddressLimits, max_connections: usize) -> Self {
        for refused in Refused::ALL {
            // Every series exists from the start, so a dashboard sees 0.
            metrics::counter!(CONNECTIONS_REFUSED, "reason" => refused.reason()).increment(0);
        }
        Self {
            limits,
            max_connections,
            addresses: Mutex::new(Books {
                entries: HashMap::new(),
                tidy_above: TIDY_ABOVE,
            }),
            refused: Default::default(),
            last_log: Mutex::new(None),
        }
    }

    pub fn limits(&self) -> AddressLimits {
        self.limits
    }

    /// Connections refused for `reason` since the start.
    pub fn refused(&self, reason: Refused) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Admits a connection from `addr`, or says which cap refuses it.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Admitted, Refused> {
        self.admit_at(addr, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, addr: IpAddr, now: Instant) -> Result<Admitted, Refused> {
        let AddressLimits {
            max_connections,
            handshakes_per_second,
        } = self.limits;
        if max_connections == 0 && handshakes_per_second == 0 {
            return Ok(Admitted {
                admission: self.clone(),
                addr,
            });
        }
        let burst = f64::from(handshakes_per_second);
        let mut books = self.lock();
        if books.entries.len() > books.tidy_above {
            books
                .entries
                .retain(|_, e| e.open > 0 || refill(e, now, burst) < burst);
            books.tidy_above = TIDY_ABOVE.max(books.entries.len() * 2);
        }
        let entry = books.entries.entry(addr).or_insert(Entry {
            open: 0,
            tokens: burst,
            refilled_at: now,
        });
        if max_connections > 0 && entry.open >= max_connections {
            return Err(Refused::AddressConnections);
        }
        if handshakes_per_second > 0 {
            entry.tokens = refill(entry, now, burst);
            entry.refilled_at = now;
            if entry.tokens < 1.0 {
                return Err(Refused::AddressHandshakes);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(Admitted {
            admission: self.clone(),
            addr,
        })
    }

    /// The caps a new connection from `remote` must pass: a permit of
    /// `permits` (the global cap), then its address's. `None` (and the
    /// connection closed when the caller drops it) if one refuses it.
    pub fn admit_connection(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
        remote: SocketAddr,
    ) -> Option<Slot> {
        let refuse = |reason: Refused| {
            self.count_refusal(reason, remote.ip());
            None
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => return refuse(Refused::Global),
        };
        match self.admit(remote.ip()) {
            Ok(admitted) => {
                metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
                Some(Slot {
                    _permit: permit,
                    _admitted: admitted,
                })
            }
            Err(reason) => refuse(reason),
        }
    }

    /// Counts a refusal and logs it, at most once every [`LOG_EVERY`].
    fn count_refusal(&self, reason: Refused, addr: IpAddr) {
        let cap = match reason {
            Refused::Global => self.max_connections,
            Refused::AddressConnections => self.limits.max_connections,
            Refused::AddressHandshakes => self.limits.handshakes_per_second as usize,
        };
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason.reason()).increment(1);
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            *last = Some(now);
            drop(last);
            tracing::warn!(
                %addr,
                reason = reason.reason(),
                cap,
                refused_so_far = self.refused(reason),
                "connection refused right after accept (logged at most every {LOG_EVERY:?}; \
                 onramp_connections_refused_total counts them all)"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        // A poisoned map only means a thread panicked between two counts.
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The tokens of `entry`'s bucket at `now` (at most `burst`).
fn refill(entry: &Entry, now: Instant, burst: f64) -> f64 {
    let elapsed = now.duration_since(entry.refilled_at).as_secs_f64();
    (entry.tokens + elapsed * burst).min(burst)
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let admission = &self.admission;
        if admission.limits.max_connections == 0 && admission.limits.handshakes_per_second == 0 {
            return;
        }
        let burst = f64::from(admission.limits.handshakes_per_second);
        let mut books = admission.lock();
        if let Some(entry) = books.entries.get_mut(&self.addr) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && refill(entry, Instant::now(), burst) >= burst {
                books.entries.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

    use super::*;

    fn admission(max_connections: usize, handshakes_per_second: u32) -> Arc<Admission> {
        Arc::new(Admission::new(
            AddressLimits {
                max_connections,
                handshakes_per_second,
            },
            100,
        ))
    }

    #[test]
    fn an_address_over_its_connections_is_refused_and_others_are_not() {
        let admission = admission(2, 0);
        let flood = IpAddr::from([10, 0, 0, 2]);
        let a = admission.admit(flood).unwrap();
        let _b = admission.admit(flood).unwrap();
        assert_eq!(
            admission.admit(flood).unwrap_err(),
            Refused::AddressConnections
        );
        assert!(admission.admit(IpAddr::from([10, 0, 0, 3])).is_ok());
        // A closed connection gives its place back.
        drop(a);
        assert!(admission.admit(flood).is_ok());
    }

    #[test]
    fn an_address_over_its_handshake_rate_waits_for_its_bucket() {
        let admission = admission(0, 10);
        let flood = IpAddr::from([10, 0, 0, 2]);
        let start = Instant::now();
        let held: Vec<_> = (0..10)
            .map(|_| admission.admit_at(flood, start).unwrap())
            .collect();
        assert_eq!(
            admission.admit_at(flood, start).unwrap_err(),
            Refused::AddressHandshakes
        );
        assert!(
            admission
                .admit_at(IpAddr::from([10, 0, 0, 3]), start)
                .is_ok()
        );
        // A tenth of a second holds one more token.
        let later = start + Duration::from_millis(101);
        assert!(admission.admit_at(flood, later).is_ok());
        assert!(admission.admit_at(flood, later).is_err());
        drop(held);
    }

    #[test]
    fn addresses_with_nothing_open_and_a_full_bucket_are_forgotten() {
        let admission = admission(5, 0);
        for i in 0..10_000u32 {
            drop(admission.admit(IpAddr::from(i.to_be_bytes())).unwrap());
        }
        assert!(admission.lock().entries.is_empty());
        let held: Vec<_> = (0..10_000u32)
            .map(|i| admission.admit(IpAddr::from(i.to_be_bytes())).unwrap())
            .collect();
        assert_eq!(admission.lock().entries.len(), 10_000);
        drop(held);
        assert!(admission.lock().entries.is_empty());
    }
}
