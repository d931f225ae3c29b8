//! A simulated fleet of devices of one symmetric-key enrollment group,
//! registering over HTTPS as the SDKs do (polling `assigning`, waiting
//! `Retry-After` after a 503, registering again after a broken connection,
//! an operation no node knows, or a registration that failed for a reason
//! a device retries), while a test makes a fault; what it saw is tallied
//! and printed (attempted, assigned, lost).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::unix_now;

/// What the simulated fleet saw.
#[derive(Default)]
pub struct Tally {
    pub assigned: AtomicU64,
    /// Devices assigned at their first request.
    pub first_try: AtomicU64,
    /// Devices assigned after at least one failed request.
    pub after_retry: AtomicU64,
    /// Devices whose registration started after the fault and were assigned.
    pub started_after_fault: AtomicU64,
    /// 503 answers with `Retry-After` and an Azure error body.
    pub unavailable: AtomicU64,
    /// Registrations that failed because the hub could not be reached
    /// (500002 `HubRegistrationFailed`), which a device tries again.
    pub hub_failures: AtomicU64,
    /// Failures by kind: connection errors, statuses.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Set once the fault is made.
    pub fault: Mutex<Option<Instant>>,
}

impl Tally {
    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// The fleet: devices of one symmetric-key group, through HAProxy.
pub struct Fleet {
    client: reqwest::Client,
    base: String,
    scope: String,
    group_key: String,
    pub tally: Tally,
}

/// How long a device keeps trying before the test calls it lost.
const DEVICE_DEADLINE: Duration = Duration::from_secs(120);

impl Fleet {
    pub fn new(
        client: reqwest::Client,
        base: String,
        scope: String,
        group_key: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            base,
            scope,
            group_key,
            tally: Tally::default(),
        })
    }

    fn token(&self, id: &str) -> String {
        let key = onramp_core::sas::derive_device_key(&self.group_key, id).unwrap();
        onramp_core::sas::sign(
            &format!("{}/registrations/{id}", self.scope),
            &key,
            unix_now() + 600,
            Some("registration"),
        )
        .unwrap()
    }

    /// Registers `id` as a device would: polls `assigning` (through
    /// whichever node HAProxy picks), waits `Retry-After` after a 503, and
    /// registers again after a broken connection or an operation no node
    /// knows. Ok once assigned; Err when refused for good or out of time.
    pub async fn provision(&self, id: &str) -> Result<(), String> {
        let started = Instant::now();
        let after_fault = self.tally.fault.lock().unwrap().is_some();
        let token = self.token(id);
        let register = format!(
            "{}/{}/registrations/{id}/register?api-version=2021-06-01",
            self.base, self.scope
        );
        let mut operation: Option<String> = None;
        let mut failures = 0u32;
        loop {
            if started.elapsed() > DEVICE_DEADLINE {
                return Err(format!("{id}: not assigned after {DEVICE_DEADLINE:?}"));
            }
            let request = match &operation {
                None => self
                    .client
                    .put(&register)
                    .header("Content-Type", "application/json")
                    .body(json!({ "registrationId": id }).to_string()),
                Some(op) => self.client.get(format!(
                    "{}/{}/registrations/{id}/operations/{op}?api-version=2021-06-01",
                    self.base, self.scope
                )),
            };
            let (status, retry_after, body) =
                match send(request.header("Authorization", &token)).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        self.tally.error(format!("connection: {e}"));
                        failures += 1;
                        operation = None;
                        pause(Duration::from_millis(100)).await;
                        continue;
                    }
                };
            match (status, body["status"].as_str()) {
                (200 | 202, Some("assigned")) => {
                    let t = &self.tally;
                    t.assigned.fetch_add(1, Ordering::SeqCst);
                    let which = if failures == 0 {
                        &t.first_try
                    } else {
                        &t.after_retry
                    };
                    which.fetch_add(1, Ordering::SeqCst);
                    if after_fault {
                        t.started_after_fault.fetch_add(1, Ordering::SeqCst);
                    }
                    return Ok(());
                }
                (200 | 202, Some("assigning")) => {
                    operation = Some(body["operationId"].as_str().unwrap().to_owned());
                    // Polls come sooner than the advised 3 s, to keep the test short.
                    pause(Duration::from_millis(100)).await;
                }
                (503, _) => {
                    let seconds = retry_after
                        .ok_or_else(|| format!("{id}: 503 without Retry-After: {body}"))?;
                    if body["errorCode"].as_u64().is_none_or(|c| c / 1000 != 503)
                        || !body["message"].is_string()
                    {
                        return Err(format!("{id}: 503 without an Azure error body: {body}"));
                    }
                    self.tally.unavailable.fetch_add(1, Ordering::SeqCst);
                    self.tally.error(format!("503 {}", body["errorCode"]));
                    failures += 1;
                    operation = None;
                    pause(Duration::from_secs(u64::from(seconds))).await;
                }
                // The hub could not take the identity: the device registers
                // again a little later, as the message asks.
                (200 | 202, Some("failed")) if hub_failed(&body) => {
                    self.tally.hub_failures.fetch_add(1, Ordering::SeqCst);
                    self.tally.error("failed: 500002".into());
                    failures += 1;
                    operation = None;
                    pause(Duration::from_millis(200)).await;
                }
                // An operation no node knows (its node died before it was
                // shared): register again.
                (404, _) if operation.is_some() => {
                    self.tally.error("poll: 404".into());
                    failures += 1;
                    operation = None;
                }
                _ => {
                    self.tally.error(format!("given up: {status}"));
                    return Err(format!("{id}: {status} {body}"));
                }
            }
        }
    }

    /// Registers `devices` devices (`{prefix}-{n}`), `concurrency` at a
    /// time; once `fault_after` are assigned, runs `fault` (the load goes
    /// on meanwhile). The IDs of the fleet.
    pub async fn run<F, Fut>(
        self: &Arc<Self>,
        prefix: &str,
        devices: u64,
        concurrency: u64,
        fault_after: u64,
        fault: F,
    ) -> BTreeSet<String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let next = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (fleet, next, lost, prefix) =
                    (self.clone(), next.clone(), lost.clone(), prefix.to_owned());
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= devices {
                            return;
                        }
                        if let Err(e) = fleet.provision(&format!("{prefix}-{n:04}")).await {
                            lost.lock().unwrap().push(e);
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.tally.assigned.load(Ordering::SeqCst) < fault_after {
            assert!(
                Instant::now() < deadline,
                "the load never reached {fault_after} assigned devices: {} assigned, failed requests {:?}, lost {:?}",
                self.tally.assigned.load(Ordering::SeqCst),
                self.tally.errors.lock().unwrap(),
                lost.lock().unwrap()
            );
            // A condition poll on the load's progress.
            pause(Duration::from_millis(10)).await;
        }
        fault().await;
        for w in workers {
            w.await.unwrap();
        }
        let t = &self.tally;
        let lost = lost.lock().unwrap().clone();
        println!(
            "fleet ({prefix}): attempted {devices}, assigned {} ({} at the first try, {} after a retry; {} started after the fault), lost {}; 503s {}; hub failures {}; failed requests by kind: {:?}",
            t.assigned.load(Ordering::SeqCst),
            t.first_try.load(Ordering::SeqCst),
            t.after_retry.load(Ordering::SeqCst),
            t.started_after_fault.load(Ordering::SeqCst),
            lost.len(),
            t.unavailable.load(Ordering::SeqCst),
            t.hub_failures.load(Ordering::SeqCst),
            t.errors.lock().unwrap(),
        );
        assert!(lost.is_empty(), "devices lost: {lost:?}");
        (0..devices).map(|n| format!("{prefix}-{n:04}")).collect()
    }

    pub fn mark_fault(&self) {
        *self.tally.fault.lock().unwrap() = Some(Instant::now());
    }
}

/// A device's wait between two requests (a retry's pause, a poll's).
pub async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Whether a failed operation status says the hub could not be reached.
fn hub_failed(body: &Value) -> bool {
    body["registrationState"]["errorCode"].as_u64() == Some(500_002)
}

/// Sends `req`: the status, the `Retry-After` seconds, the JSON answered.
async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Option<u32>, Value), String> {
    let resp = req.send().await.map_err(|e| error_kind(&e))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = resp.text().await.map_err(|e| error_kind(&e))?;
    Ok((
        status,
        retry_after,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// A connection error's kind, without the address (so they count together).
fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "broken".into()
    }
}
