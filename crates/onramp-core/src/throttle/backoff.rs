//! Failed-authentication backoff per registration ID and per shared access
//! policy: a guesser of one device's key, or of one policy's key, is slowed
//! to the refill rate of its bucket, and nobody else is.
//!
//! The credential is always checked first, so a right one is never refused
//! nor delayed. Only a failed check spends a token of its key's bucket; once
//! the bucket is empty, the failure answer (the same 401 the caller hears
//! anyway) waits until the bucket holds a token again, at most
//! [`ThrottleConfig::failed_authentication_delay_max`]. The wait is an async
//! sleep holding no lock; the connections that wait stay bounded by the
//! listener's admission caps.

use std::num::NonZeroU32;
use std::time::Duration;

use onramp_model::IdKey;

use super::{Bucket, Throttle, ThrottleConfig};

/// The failure buckets of registration IDs and policies, and the longest a
/// failure answer waits.
pub(super) struct Backoff {
    registrations: Option<Bucket<(String, IdKey)>>,
    policies: Option<Bucket<String>>,
    delay_max: Duration,
}

impl Backoff {
    pub(super) fn new(config: &ThrottleConfig) -> Self {
        // No delay is no backoff: the buckets would only count.
        let rate =
            |n: Option<NonZeroU32>| n.filter(|_| !config.failed_authentication_delay_max.is_zero());
        Self {
            registrations: Bucket::per_minute(
                "registration-failures",
                rate(config.failed_authentications_per_registration_per_minute),
            ),
            policies: Bucket::per_minute(
                "policy-failures",
                rate(config.failed_authentications_per_policy_per_minute),
            ),
            delay_max: config.failed_authentication_delay_max,
        }
    }

    /// Spends a token of `key`'s bucket: no delay while it held one, else
    /// the time until it does, capped.
    fn delay<K: std::hash::Hash + Eq + Clone>(
        &self,
        bucket: Option<&Bucket<K>>,
        key: &K,
    ) -> Duration {
        bucket
            .and_then(|bucket| bucket.take(key).err())
            .map_or(Duration::ZERO, |wait| wait.min(self.delay_max))
    }
}

impl Throttle {
    /// After a device of `service` failed to authenticate as `registration`:
    /// how long its failure answer waits (zero while its budget lasts).
    pub fn registration_failed(&self, service: &str, registration: &IdKey) -> Duration {
        let backoff = &self.backoff;
        backoff.delay(
            backoff.registrations.as_ref(),
            &(service.to_owned(), registration.clone()),
        )
    }

    /// After a service-API token naming `policy` failed to authenticate:
    /// how long its failure answer waits (zero while its budget lasts).
    /// Policies are known by name here: a failed token proves no service.
    pub fn policy_failed(&self, policy: &str) -> Duration {
        let backoff = &self.backoff;
        backoff.delay(backoff.policies.as_ref(), &policy.to_owned())
    }
}

/// Waits out a failure answer's delay (none for zero).
pub async fn back_off(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(registration: u32, policy: u32, max_ms: u64) -> Throttle {
        Throttle::new(ThrottleConfig {
            failed_authentications_per_registration_per_minute: NonZeroU32::new(registration),
            failed_authentications_per_policy_per_minute: NonZeroU32::new(policy),
            failed_authentication_delay_max: Duration::from_millis(max_ms),
            ..ThrottleConfig::default()
        })
    }

    #[test]
    fn a_registration_past_its_failures_waits_and_others_do_not() {
        let throttle = backoff(2, 0, 1500);
        let dev = IdKey::of("dev-a");
        for _ in 0..2 {
            assert_eq!(
                throttle.registration_failed("default", &dev),
                Duration::ZERO
            );
        }
        // A token every 30 s: the wait is capped at the configured maximum.
        let wait = throttle.registration_failed("default", &dev);
        assert_eq!(wait, Duration::from_millis(1500));
        // Another device, or the same ID in another service, has its own budget.
        assert_eq!(
            throttle.registration_failed("default", &IdKey::of("dev-b")),
            Duration::ZERO
        );
        assert_eq!(throttle.registration_failed("other", &dev), Duration::ZERO);
        // No policy budget is configured: policies never wait.
        for _ in 0..10 {
            assert_eq!(throttle.policy_failed("owner"), Duration::ZERO);
        }
    }

    #[test]
    fn a_policy_past_its_failures_waits_until_its_bucket_refills() {
        let throttle = backoff(0, 1, 60_000);
        assert_eq!(throttle.policy_failed("owner"), Duration::ZERO);
        let wait = throttle.policy_failed("owner");
        // One token a minute: nearly a minute to wait, under the cap.
        assert!(
            (Duration::from_secs(50)..=Duration::from_secs(60)).contains(&wait),
            "{wait:?}"
        );
        assert_eq!(throttle.policy_failed("reader"), Duration::ZERO);
        assert_eq!(
            throttle.registration_failed("default", &IdKey::of("d")),
            Duration::ZERO
        );
    }

    #[test]
    fn no_delay_is_no_backoff() {
        let throttle = backoff(1, 1, 0);
        for _ in 0..10 {
            assert_eq!(throttle.policy_failed("owner"), Duration::ZERO);
            assert_eq!(
                throttle.registration_failed("default", &IdKey::of("d")),
                Duration::ZERO
            );
        }
    }
}
