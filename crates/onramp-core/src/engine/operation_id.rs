//! Operation IDs: `1.<start time, hex ns>.<uuid>`, minted by the engine.
//! The start time lets a poll tell an operation that ended without a record
//! from one whose record a newer operation replaced.

use std::sync::atomic::Ordering;

use super::Engine;

impl Engine {
    /// A fresh operation ID, `1.<start time, hex ns>.<uuid>`: only characters
    /// SDKs can put unescaped into paths and topics. [`Engine::register`]
    /// mints one for each registration; this is public for tools and tests
    /// that name an operation which never ran.
    ///
    /// The start times this engine mints only go forward: a wall clock set
    /// back (an NTP step, a restored host) would otherwise make a device's
    /// next registration older than its record, which the store refuses as
    /// overtaken until the clock caught up.
    pub fn new_operation_id(&self) -> String {
        let now = u64::try_from(self.clock.now().unix_nanos().max(0)).unwrap_or(u64::MAX);
        let previous = self
            .last_operation_start
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or(now);
        let nanos = now.max(previous.saturating_add(1));
        format!("1.{nanos:016x}.{}", uuid::Uuid::new_v4())
    }
}

/// Start time (Unix ns) encoded in an operation ID from
/// [`Engine::new_operation_id`]; `None` for any other text. A poll's
/// operation ID comes from the device, so this reads outside input (the
/// `operation_ids` fuzz target runs it).
pub fn operation_started(operation_id: &str) -> Option<i128> {
    let mut parts = operation_id.split('.');
    let (version, time, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if version != "1" || rest.is_empty() || parts.next().is_some() {
        return None;
    }
    u64::from_str_radix(time, 16).ok().map(i128::from)
}
