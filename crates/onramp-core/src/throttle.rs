//! Throttling in Azure's form: token buckets an operator sets, answered with
//! `Throttled` (429) and a `Retry-After` that says when the bucket holds a
//! token again, which every SDK honours.
//!
//! Four limits, each off unless configured:
//! - registrations per second of one provisioning service;
//! - service-API (management) requests per minute of one provisioning
//!   service, Azure's "operations per minute", counted once the caller's
//!   token is checked;
//! - registrations per minute of one device (registration ID);
//! - failed authentications per minute of one client address: once its
//!   bucket is empty the address is refused before any credential check
//!   until the bucket refills, so guessing is slowed to the refill rate.
//!
//! Failed authentications per registration ID and per shared access policy
//! are not refused but slowed: see [`backoff`].
//!
//! The first two can be set apart for one provisioning service
//! ([`ThrottleConfig::services`]): such a service has buckets of its own, and
//! the others share the keyed defaults.
//!
//! The first two count only requests that authenticated, so nobody can spend
//! a device's or a service's budget with wrong credentials; the third counts
//! only failures and is keyed by address, so a device with the right key is
//! never refused for someone else's wrong guesses.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, QuantaInstant, Reference};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use onramp_model::{ErrorCode, IdKey};

use crate::ProvisioningError;
use crate::events::THROTTLED;

mod backoff;

pub use backoff::back_off;

/// One provisioning service's own registration and service-API rates;
/// `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceRates {
    /// Registrations the service takes per second (and at once).
    pub registrations_per_second: Option<NonZeroU32>,
    /// Service-API requests the service takes per minute (and at once).
    pub service_api_requests_per_minute: Option<NonZeroU32>,
}

/// The limits an operator sets; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Registrations one provisioning service takes per second (and at once).
    pub service_registrations_per_second: Option<NonZeroU32>,
    /// Registrations one device may make per minute (and at once).
    pub device_registrations_per_minute: Option<NonZeroU32>,
    /// Failed authentications one client address may make per minute (and
    /// at once) before it is refused until its bucket refills.
    pub failed_authentications_per_minute: Option<NonZeroU32>,
    /// Service-API requests one provisioning service takes per minute (and
    /// at once).
    pub service_api_requests_per_minute: Option<NonZeroU32>,
    /// Failed authentications one registration ID of one service may make
    /// per minute (and at once) before its failure answers are delayed.
    pub failed_authentications_per_registration_per_minute: Option<NonZeroU32>,
    /// Failed authentications with one shared access policy's name per
    /// minute (and at once) before their failure answers are delayed.
    pub failed_authentications_per_policy_per_minute: Option<NonZeroU32>,
    /// The longest a failure answer is delayed; zero is no delay.
    pub failed_authentication_delay_max: Duration,
    /// Provisioning services held to rates of their own instead of the two
    /// per-service ones above.
    pub services: HashMap<String, ServiceRates>,
}

impl ThrottleConfig {
    /// The registration and service-API rates `service` is held to.
    pub fn rates_of(&self, service: &str) -> ServiceRates {
        self.services.get(service).copied().unwrap_or(ServiceRates {
            registrations_per_second: self.service_registrations_per_second,
            service_api_requests_per_minute: self.service_api_requests_per_minute,
        })
    }
}

/// Keys a limiter keeps before it forgets the ones whose buckets are full
/// again (a full bucket is the state of a key never seen).
const TIDY_EVERY: u64 = 4096;
/// Client addresses refused at once, at the most: past this the oldest
/// refusals are forgotten first (their buckets refill anyway).
const MAX_BENCHED: usize = 100_000;

/// One keyed token bucket, tidied as it grows; its refusals count in
/// `onramp_throttled_total{limit}`. The companion hub's per-device message
/// rate is one too.
pub struct Bucket<K: Hash + Eq + Clone> {
    /// The `limit` label of its refusals in `onramp_throttled_total`.
    limit: &'static str,
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(limit: &'static str, quota: Quota) -> Self {
        // The series exists from the start, so a dashboard sees 0, not nothing.
        metrics::counter!(THROTTLED, "limit" => limit).increment(0);
        Self {
            limit,
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    /// `n` a second per key, with a second's worth at once.
    pub fn per_second(limit: &'static str, n: NonZeroU32) -> Self {
        Self::new(limit, Quota::per_second(n))
    }

    /// `n` a minute per key, if there is a limit.
    fn per_minute(limit: &'static str, n: Option<NonZeroU32>) -> Option<Self> {
        n.map(|n| Self::new(limit, Quota::per_minute(n)))
    }

    /// Takes a token for `key`, or says how long until there is one.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % TIDY_EVERY == TIDY_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            metrics::counter!(THROTTLED, "limit" => self.limit).increment(1);
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }
}

/// A per-service rate and its bucket, keyed by service name (one key for
/// a service with rates of its own).
struct ServiceLimit {
    rate: Option<NonZeroU32>,
    bucket: Option<Bucket<String>>,
}

impl ServiceLimit {
    fn registrations(rate: Option<NonZeroU32>) -> Self {
        Self {
            rate,
            bucket: rate.map(|n| Bucket::per_second("service", n)),
        }
    }

    fn service_api(rate: Option<NonZeroU32>) -> Self {
        Self {
            rate,
            bucket: Bucket::per_minute("service-api", rate),
        }
    }

    /// Takes a token of `service`, or says in the 429 the message `says`
    /// makes of the rate how long until there is one.
    fn take(
        &self,
        service: &str,
        says: impl FnOnce(u32) -> String,
    ) -> Result<(), ProvisioningError> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        bucket
            .take(&service.to_owned())
            .map_err(|wait| throttled(says(self.rate.map_or(0, NonZeroU32::get)), wait))
    }
}

/// The engine's throttle: the buckets of [`ThrottleConfig`].
pub struct Throttle {
    config: ThrottleConfig,
    /// The services' shared registration and service-API limits.
    registrations: ServiceLimit,
    service_api: ServiceLimit,
    /// The services with limits of their own: (registrations, service API).
    overrides: HashMap<String, (ServiceLimit, ServiceLimit)>,
    devices: Option<Bucket<(String, IdKey)>>,
    failures: Option<Bucket<IpAddr>>,
    /// The failure buckets of registration IDs and policies.
    backoff: backoff::Backoff,
    /// Addresses whose failure bucket is empty, and when it holds a token.
    benched: Mutex<HashMap<IpAddr, QuantaInstant>>,
    /// Whether `benched` holds anyone: every attestation asks, and nearly
    /// always the answer is no, without taking the lock.
    any_benched: AtomicBool,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(ThrottleConfig::default())
    }
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Self {
        let overrides = config
            .services
            .iter()
            .map(|(name, rates)| {
                let limits = (
                    ServiceLimit::registrations(rates.registrations_per_second),
                    ServiceLimit::service_api(rates.service_api_requests_per_minute),
                );
                (name.clone(), limits)
            })
            .collect();
        Self {
            registrations: ServiceLimit::registrations(config.service_registrations_per_second),
            service_api: ServiceLimit::service_api(config.service_api_requests_per_minute),
            overrides,
            devices: Bucket::per_minute("device", config.device_registrations_per_minute),
            failures: Bucket::per_minute("address", config.failed_authentications_per_minute),
            backoff: backoff::Backoff::new(&config),
            benched: Mutex::new(HashMap::new()),
            any_benched: AtomicBool::new(false),
            config,
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// The registration and service-API limits `service` is held to: its
    /// own if it has any, else the shared ones (without a lookup when no
    /// service has its own).
    fn limits_of(&self, service: &str) -> (&ServiceLimit, &ServiceLimit) {
        if self.overrides.is_empty() {
            return (&self.registrations, &self.service_api);
        }
        match self.overrides.get(service) {
            Some((registrations, service_api)) => (registrations, service_api),
            None => (&self.registrations, &self.service_api),
        }
    }

    /// Before any credential check: refuses an address that spent its
    /// failed authentications.
    pub fn admit_address(&self, addr: Option<IpAddr>) -> Result<(), ProvisioningError> {
        let (Some(addr), Some(_)) = (addr, &self.failures) else {
            return Ok(());
        };
        if !self.any_benched.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = DefaultClock::default().now();
        let mut benched = self.benched.lock().unwrap_or_else(|p| p.into_inner());
        match benched.get(&addr) {
            Some(until) if *until > now => {
                let wait = until.duration_since(now);
                drop(benched);
                metrics::counter!(THROTTLED, "limit" => "address").increment(1);
                Err(throttled(
                    format!(
                        "too many failed authentications from {addr} (more than {} a minute); \
                         check the device's credentials",
                        self.config
                            .failed_authentications_per_minute
                            .map_or(0, NonZeroU32::get)
                    ),
                    wait.into(),
                ))
            }
            Some(_) => {
                benched.remove(&addr);
                self.any_benched
                    .store(!benched.is_empty(), Ordering::Relaxed);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// After a failed authentication: spends a token of the address's
    /// failure bucket, and benches the address once it is empty.
    pub fn failed(&self, addr: Option<IpAddr>) {
        let (Some(addr), Some(failures)) = (addr, &self.failures) else {
            return;
        };
        if let Err(wait) = failures.take(&addr) {
            let now = DefaultClock::default().now();
            let mut benched = self.benched.lock().unwrap_or_else(|p| p.into_inner());
            if benched.len() >= MAX_BENCHED {
                benched.retain(|_, until| *until > now);
            }
            if benched.len() < MAX_BENCHED {
                benched.insert(addr, now + wait.into());
                self.any_benched.store(true, Ordering::Relaxed);
            }
        }
    }

    /// After a device authenticated for a registration: its service's and
    /// its own buckets.
    pub fn admit_registration(
        &self,
        service: &str,
        registration: &IdKey,
    ) -> Result<(), ProvisioningError> {
        if let Some(devices) = &self.devices {
            devices
                .take(&(service.to_owned(), registration.clone()))
                .map_err(|wait| {
                    throttled(
                        format!(
                            "registration '{}' registered more than {} times a minute; \
                             register again after the Retry-After interval",
                            registration.as_str(),
                            self.config
                                .device_registrations_per_minute
                                .map_or(0, NonZeroU32::get)
                        ),
                        wait,
                    )
                })?;
        }
        self.limits_of(service).0.take(service, |rate| {
            format!(
                "provisioning service '{service}' takes at most {rate} registrations a second; \
                 register again after the Retry-After interval"
            )
        })
    }
}

impl Throttle {
    /// After a service-API caller's token was checked: its service's bucket.
    pub fn admit_service_call(&self, service: &str) -> Result<(), ProvisioningError> {
        self.limits_of(service).1.take(service, |rate| {
            format!(
                "provisioning service '{service}' takes at most {rate} service API requests a \
                 minute; send this request again after the Retry-After interval"
            )
        })
    }
}

/// `Throttled` (429) with the whole seconds until a token is there.
fn throttled(message: String, wait: Duration) -> ProvisioningError {
    let seconds = u32::try_from(wait.as_secs_f64().ceil() as u64)
        .unwrap_or(u32::MAX)
        .max(1);
    ProvisioningError {
        retry_after: Some(seconds),
        ..ProvisioningError::new(ErrorCode::Throttled, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(v)
    }

    /// A throttle with the limits `set` sets, the others off.
    fn limited(set: impl FnOnce(&mut ThrottleConfig)) -> Throttle {
        let mut config = ThrottleConfig::default();
        set(&mut config);
        Throttle::new(config)
    }

    /// Whether a registration of `device` in `service` is admitted.
    fn admits(throttle: &Throttle, service: &str, device: &str) -> bool {
        throttle
            .admit_registration(service, &IdKey::of(device))
            .is_ok()
    }

    /// `count` registrations in `service` at once: how many were admitted,
    /// and the refusal of one more.
    fn burst(throttle: &Throttle, service: &str, count: usize) -> (usize, ProvisioningError) {
        let admitted = (0..count)
            .filter(|i| admits(throttle, service, &format!("d{i}")))
            .count();
        let refused = throttle
            .admit_registration(service, &IdKey::of("late"))
            .unwrap_err();
        (admitted, refused)
    }

    #[test]
    fn no_limits_admit_everything() {
        let throttle = Throttle::default();
        let addr = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..1000 {
            throttle.failed(addr);
            assert!(throttle.admit_address(addr).is_ok());
            assert!(admits(&throttle, "default", "dev"));
        }
    }

    #[test]
    fn a_device_over_its_budget_hears_when_to_come_back() {
        let throttle = limited(|c| c.device_registrations_per_minute = n(2));
        let dev = IdKey::of("dev-1");
        assert!(throttle.admit_registration("default", &dev).is_ok());
        assert!(throttle.admit_registration("default", &dev).is_ok());
        let refused = throttle.admit_registration("default", &dev).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Throttled);
        // One token every 30 s.
        assert!(
            (20..=30).contains(&refused.retry_after.unwrap()),
            "{refused:?}"
        );
        assert!(refused.message.contains("dev-1"), "{}", refused.message);
        // Another device, or the same ID in another service, has its own budget.
        assert!(admits(&throttle, "default", "dev-2"));
        assert!(throttle.admit_registration("other", &dev).is_ok());
    }

    #[test]
    fn a_service_over_its_rate_is_throttled() {
        let throttle = limited(|c| c.service_registrations_per_second = n(3));
        let (admitted, refused) = burst(&throttle, "default", 10);
        // Three at once; a fourth only if a third of a second passed.
        assert!((3..=4).contains(&admitted), "{admitted}");
        assert_eq!(refused.retry_after, Some(1));
    }

    #[test]
    fn service_api_calls_have_a_budget_per_service() {
        let throttle = limited(|c| c.service_api_requests_per_minute = n(2));
        assert!(throttle.admit_service_call("default").is_ok());
        assert!(throttle.admit_service_call("default").is_ok());
        let refused = throttle.admit_service_call("default").unwrap_err();
        assert_eq!(refused.code, ErrorCode::Throttled);
        assert!(
            (20..=30).contains(&refused.retry_after.unwrap()),
            "{refused:?}"
        );
        assert!(refused.message.contains("'default'"), "{}", refused.message);
        // Registrations and other services are not charged.
        assert!(throttle.admit_service_call("other").is_ok());
        assert!(admits(&throttle, "default", "d"));
    }

    #[test]
    fn a_service_with_rates_of_its_own_is_held_to_them_alone() {
        let own = |registrations, calls| ServiceRates {
            registrations_per_second: n(registrations),
            service_api_requests_per_minute: n(calls),
        };
        let throttle = limited(|c| {
            c.service_registrations_per_second = n(2);
            c.service_api_requests_per_minute = n(2);
            c.services.insert("factory-a".into(), own(1, 1));
            // 0 is no limit for this service, whatever the default.
            c.services.insert("lab".into(), own(0, 0));
        });
        // factory-a: one registration at once, and its own rate in the answer.
        assert!(admits(&throttle, "factory-a", "a1"));
        let refused = throttle
            .admit_registration("factory-a", &IdKey::of("a2"))
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Throttled);
        assert_eq!(refused.retry_after, Some(1));
        assert!(
            refused
                .message
                .contains("'factory-a' takes at most 1 registrations"),
            "{}",
            refused.message
        );
        assert!(throttle.admit_service_call("factory-a").is_ok());
        let refused = throttle.admit_service_call("factory-a").unwrap_err();
        assert!(
            (50..=60).contains(&refused.retry_after.unwrap()),
            "{refused:?}"
        );
        assert!(
            refused.message.contains("at most 1 service API"),
            "{}",
            refused.message
        );
        // Any other service: the default of 2, its own budget untouched.
        let (admitted, refused) = burst(&throttle, "default", 5);
        assert!((2..=3).contains(&admitted), "{admitted}");
        assert!(
            refused.message.contains("at most 2 registrations"),
            "{}",
            refused.message
        );
        // lab: no limit at all.
        for i in 0..100 {
            assert!(admits(&throttle, "lab", &format!("l{i}")));
            assert!(throttle.admit_service_call("lab").is_ok());
        }
        assert_eq!(throttle.config().rates_of("lab"), own(0, 0));
        assert_eq!(throttle.config().rates_of("other"), own(2, 2));
    }

    #[test]
    fn failures_bench_their_address_only() {
        let throttle = limited(|c| c.failed_authentications_per_minute = n(3));
        let guesser = Some(IpAddr::from([10, 0, 0, 66]));
        let device = Some(IpAddr::from([10, 0, 0, 7]));
        for _ in 0..3 {
            assert!(throttle.admit_address(guesser).is_ok());
            throttle.failed(guesser);
        }
        // The bucket is empty but not yet overdrawn: the fourth failure benches.
        assert!(throttle.admit_address(guesser).is_ok());
        throttle.failed(guesser);
        let refused = throttle.admit_address(guesser).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Throttled);
        assert!((1..=20).contains(&refused.retry_after.unwrap()));
        assert!(throttle.admit_address(device).is_ok());
        // Without an address (a unit test, a local call) nothing is counted.
        throttle.failed(None);
        assert!(throttle.admit_address(None).is_ok());
    }
}
