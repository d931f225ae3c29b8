//! `[limits]` (deadlines and bounds at the front door), `[throttle]`
//! (the token buckets answered with 429 and Retry-After) and
//! `[diagnostics]` (how long and how many registration attempts are kept).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub register_reply_budget_ms: u64,
    /// A client must finish its TLS handshake within this time.
    pub handshake_timeout_ms: u64,
    /// A client must send a request's headers within this time (after the
    /// handshake, or after its previous request: also the idle timeout).
    pub header_timeout_ms: u64,
    /// A request's whole body must arrive within this time after its headers.
    pub body_timeout_ms: u64,
    /// Connections served at once, further capped by the open-file limit
    /// less `reserved_descriptors`.
    pub max_connections: usize,
    /// Descriptors kept back from connections for the store, hub and
    /// webhook clients and logs: the room established work needs.
    pub reserved_descriptors: u64,
    /// Connections open at once from one client address; 0 is no cap. A
    /// factory's NAT puts a whole line behind one address, each device with
    /// a connection of its own, so the default is in the thousands.
    pub max_connections_per_address: usize,
    /// Connections (TLS handshakes) one client address may open a second,
    /// with a second's worth at once; 0 is no cap.
    pub handshakes_per_second_per_address: u32,
    /// Registrations running at once on this node; past it a register call
    /// is answered 503 with Retry-After. 0 is no bound.
    pub max_registrations_in_flight: usize,
    /// On SIGTERM, registrations in flight get this long to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 96 * 1024,
            register_reply_budget_ms: 10_000,
            handshake_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_connections: 50_000,
            reserved_descriptors: 256,
            max_connections_per_address: onramp_net::admission::AddressLimits::default()
                .max_connections,
            handshakes_per_second_per_address: onramp_net::admission::AddressLimits::default()
                .handshakes_per_second,
            // Far above what the store and hubs finish in a reply budget at
            // the measured peak (about 8,000 a second, most in under 10 ms).
            max_registrations_in_flight: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// `[throttle]`: the limits answered with 429 and Retry-After; 0 is no
/// limit. Registrations are counted once the device has authenticated;
/// failed authentications per client address, before any credential check;
/// failed authentications per registration ID and per policy, after it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Registrations one provisioning service takes per second.
    pub registrations_per_second: u32,
    /// Registrations one device (registration ID) may make per minute.
    pub device_registrations_per_minute: u32,
    /// Failed authentications one client address may make per minute; past
    /// them the address is refused until its budget refills.
    pub failed_authentications_per_minute: u32,
    /// Failed authentications one registration ID may make per minute;
    /// past them its failure answers are delayed (a right key never is).
    pub failed_authentications_per_registration_per_minute: u32,
    /// Failed service-API authentications naming one shared access policy
    /// per minute; past them their failure answers are delayed.
    pub failed_authentications_per_policy_per_minute: u32,
    /// The longest a failure answer is delayed, in milliseconds.
    pub failed_authentication_delay_max_ms: u64,
    /// Service-API (management) requests one provisioning service takes per
    /// minute, counted once the caller's token is checked.
    pub service_api_requests_per_minute: u32,
    /// `[throttle.services.NAME]`: provisioning services with rates of their
    /// own (the name need not exist yet: services are created at run time).
    pub services: BTreeMap<String, ServiceThrottle>,
}

/// `[throttle.services.NAME]`: one provisioning service's own rates; a key
/// left out is the `[throttle]` one, 0 is no limit for this service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceThrottle {
    pub registrations_per_second: Option<u32>,
    pub service_api_requests_per_minute: Option<u32>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            registrations_per_second: 0,
            device_registrations_per_minute: 0,
            // Ten a second sustained: no factory line fails that often, and
            // a guesser is slowed a hundredfold.
            failed_authentications_per_minute: 600,
            // A device or a policy that fails more often than this is being
            // guessed at: each further guess waits up to five seconds.
            failed_authentications_per_registration_per_minute: 10,
            failed_authentications_per_policy_per_minute: 60,
            failed_authentication_delay_max_ms: 5_000,
            service_api_requests_per_minute: 0,
            services: BTreeMap::new(),
        }
    }
}

impl ThrottleConfig {
    /// The engine's form of these limits.
    pub fn engine(&self) -> onramp_core::throttle::ThrottleConfig {
        use std::num::NonZeroU32;
        onramp_core::throttle::ThrottleConfig {
            service_registrations_per_second: NonZeroU32::new(self.registrations_per_second),
            device_registrations_per_minute: NonZeroU32::new(self.device_registrations_per_minute),
            failed_authentications_per_minute: NonZeroU32::new(
                self.failed_authentications_per_minute,
            ),
            failed_authentications_per_registration_per_minute: NonZeroU32::new(
                self.failed_authentications_per_registration_per_minute,
            ),
            failed_authentications_per_policy_per_minute: NonZeroU32::new(
                self.failed_authentications_per_policy_per_minute,
            ),
            failed_authentication_delay_max: std::time::Duration::from_millis(
                self.failed_authentication_delay_max_ms,
            ),
            service_api_requests_per_minute: NonZeroU32::new(self.service_api_requests_per_minute),
            services: self
                .services
                .iter()
                .map(|(name, own)| {
                    let rates = onramp_core::throttle::ServiceRates {
                        registrations_per_second: NonZeroU32::new(
                            own.registrations_per_second
                                .unwrap_or(self.registrations_per_second),
                        ),
                        service_api_requests_per_minute: NonZeroU32::new(
                            own.service_api_requests_per_minute
                                .unwrap_or(self.service_api_requests_per_minute),
                        ),
                    };
                    (name.clone(), rates)
                })
                .collect(),
        }
    }
}

impl LimitsConfig {
    /// The listener's limits, with connections capped at `max_connections`
    /// (see [`onramp_net::descriptors`]) and up to `max_discard_bytes` of an
    /// unread body thrown away.
    pub fn listener(
        &self,
        max_connections: usize,
        max_discard_bytes: usize,
    ) -> onramp_net::ListenerLimits {
        use std::time::Duration;
        onramp_net::ListenerLimits {
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_discard_bytes: max_discard_bytes as u64,
            max_connections,
            per_address: onramp_net::admission::AddressLimits {
                max_connections: self.max_connections_per_address,
                handshakes_per_second: self.handshakes_per_second_per_address,
            },
            close_timeout: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

/// `[diagnostics]`: the entries registration attempts leave, kept for
/// `onramp diagnostics` and the service API's `/diagnostics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiagnosticsConfig {
    /// Hours an entry is kept.
    pub max_age_hours: u64,
    /// Entries kept per provisioning service (the newest).
    pub max_entries: u64,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        let retention = onramp_core::ports::Retention::default();
        Self {
            max_age_hours: retention.max_age.as_secs() / 3600,
            max_entries: retention.max_entries_per_service,
        }
    }
}

impl DiagnosticsConfig {
    /// The engine's form of these settings.
    pub fn engine(&self) -> onramp_core::diagnostics::DiagnosticsConfig {
        onramp_core::diagnostics::DiagnosticsConfig {
            retention: onramp_core::ports::Retention {
                max_age: std::time::Duration::from_secs(self.max_age_hours.saturating_mul(3600)),
                max_entries_per_service: self.max_entries,
            },
            ..Default::default()
        }
    }
}
