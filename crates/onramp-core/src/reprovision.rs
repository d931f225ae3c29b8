//! Reprovisioning: what a registration does to a device that already has a
//! hub, per the enrollment's `reprovisionPolicy`.
//!
//! | policy (`updateHubAssignment`, `migrateDeviceData`) | may move | data on a move | data on the same hub |
//! |---|---|---|---|
//! | re-provision and migrate (true, true) | yes | twin copied, old identity removed | kept |
//! | re-provision and reset (true, false) | yes | initial twin, old identity removed | reset to the initial twin |
//! | never (false, _) | only if its hub was unlinked | initial twin | kept |
//!
//! A forced registration (`forceRegistration=true`) runs allocation again
//! whatever the policy says. A device whose hub was unlinked cannot have its
//! data read, so it starts from the initial twin wherever it lands.

use onramp_model::{ReprovisionPolicy, Substatus};

use crate::ports::Placement;

/// What happens to the device's twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwinPlan {
    /// Tags and desired properties from the initial twin.
    Initial,
    /// Leave the twin as the hub holds it.
    Keep,
    /// Copy the twin from the device's current hub.
    Migrate,
}

/// The decision for one registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub twin: TwinPlan,
    pub substatus: Substatus,
    /// The identity the device leaves behind (removed once the new one is recorded).
    pub leaves: Option<(String, String)>,
}

/// Whether allocation runs again, or the device stays on its current hub.
pub fn may_move(
    policy: ReprovisionPolicy,
    force: bool,
    current: Option<&Placement>,
    current_hub_linked: bool,
) -> bool {
    current.is_none() || force || policy.update_hub_assignment || !current_hub_linked
}

/// Decides the twin and substatus once the hub is chosen.
pub fn plan(
    policy: ReprovisionPolicy,
    current: Option<&Placement>,
    previous_substatus: Option<Substatus>,
    current_hub_linked: bool,
    hub: &str,
    device_id: &str,
) -> Plan {
    let Some(current) = current else {
        return Plan {
            twin: TwinPlan::Initial,
            substatus: Substatus::InitialAssignment,
            leaves: None,
        };
    };
    // The fourth combination (false, true) is not offered by Azure: read it as "never".
    let migrate = policy.update_hub_assignment && policy.migrate_device_data;
    let reset = policy.update_hub_assignment && !policy.migrate_device_data;
    let same_hub = current.hub.eq_ignore_ascii_case(hub);
    if same_hub && current.device_id == device_id {
        return if reset {
            Plan {
                twin: TwinPlan::Initial,
                substatus: Substatus::DeviceDataReset,
                leaves: None,
            }
        } else {
            Plan {
                twin: TwinPlan::Keep,
                substatus: previous_substatus.unwrap_or(Substatus::InitialAssignment),
                leaves: None,
            }
        };
    }
    let twin = if migrate && current_hub_linked {
        TwinPlan::Migrate
    } else {
        TwinPlan::Initial
    };
    let substatus = if !same_hub && current.initial_hub.eq_ignore_ascii_case(hub) {
        Substatus::ReprovisionedToInitialAssignment
    } else if twin == TwinPlan::Migrate {
        Substatus::DeviceDataMigrated
    } else {
        Substatus::DeviceDataReset
    };
    Plan {
        twin,
        substatus,
        leaves: current_hub_linked.then(|| (current.hub.clone(), current.device_id.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATE: ReprovisionPolicy = ReprovisionPolicy {
        update_hub_assignment: true,
        migrate_device_data: true,
    };
    const RESET: ReprovisionPolicy = ReprovisionPolicy {
        update_hub_assignment: true,
        migrate_device_data: false,
    };
    const NEVER: ReprovisionPolicy = ReprovisionPolicy {
        update_hub_assignment: false,
        migrate_device_data: false,
    };

    fn on(hub: &str, initial: &str) -> Placement {
        Placement {
            hub: hub.into(),
            device_id: "dev".into(),
            initial_hub: initial.into(),
        }
    }

    /// The outcomes of a move: the twin copied over, or the initial twin.
    const MIGRATED: (TwinPlan, Substatus) = (TwinPlan::Migrate, Substatus::DeviceDataMigrated);
    const AFRESH: (TwinPlan, Substatus) = (TwinPlan::Initial, Substatus::DeviceDataReset);

    /// The twin and substatus for device "dev", now on `current`, when
    /// allocation chose `hub`.
    fn decided(
        policy: ReprovisionPolicy,
        current: &Placement,
        current_hub_linked: bool,
        hub: &str,
    ) -> (TwinPlan, Substatus) {
        let p = plan(policy, Some(current), None, current_hub_linked, hub, "dev");
        (p.twin, p.substatus)
    }

    #[test]
    fn first_assignment_uses_the_initial_twin() {
        let p = plan(MIGRATE, None, None, false, "a", "dev");
        assert_eq!(p.twin, TwinPlan::Initial);
        assert_eq!(p.substatus, Substatus::InitialAssignment);
        assert_eq!(p.leaves, None);
        assert!(may_move(NEVER, false, None, false));
    }

    #[test]
    fn moves_migrate_or_reset_and_leave_the_old_identity() {
        let cur = on("a", "a");
        assert_eq!(decided(MIGRATE, &cur, true, "b"), MIGRATED);
        assert_eq!(decided(RESET, &cur, true, "b"), AFRESH);
        let p = plan(MIGRATE, Some(&cur), None, true, "b", "dev");
        assert_eq!(p.leaves, Some(("a".into(), "dev".into())));
        // The old hub was unlinked: nothing to read, nothing to remove.
        assert_eq!(decided(MIGRATE, &cur, false, "b"), AFRESH);
        let p = plan(MIGRATE, Some(&cur), None, false, "b", "dev");
        assert_eq!(p.leaves, None);
    }

    #[test]
    fn returning_to_the_first_hub_is_named_so() {
        let cur = on("b", "a");
        assert_eq!(
            decided(MIGRATE, &cur, true, "A"),
            (
                TwinPlan::Migrate,
                Substatus::ReprovisionedToInitialAssignment
            )
        );
    }

    #[test]
    fn same_hub_keeps_data_unless_the_policy_resets_it() {
        let cur = on("a", "a");
        let p = plan(
            MIGRATE,
            Some(&cur),
            Some(Substatus::DeviceDataMigrated),
            true,
            "a",
            "dev",
        );
        assert_eq!(p.twin, TwinPlan::Keep);
        assert_eq!(p.substatus, Substatus::DeviceDataMigrated);
        assert_eq!(decided(RESET, &cur, true, "a"), AFRESH);
        assert_eq!(decided(NEVER, &cur, true, "a").0, TwinPlan::Keep);
    }

    #[test]
    fn never_stays_unless_forced_or_unlinked() {
        let cur = on("a", "a");
        assert!(!may_move(NEVER, false, Some(&cur), true));
        assert!(may_move(NEVER, true, Some(&cur), true));
        assert!(may_move(NEVER, false, Some(&cur), false));
        assert!(may_move(MIGRATE, false, Some(&cur), true));
        // Forced to another hub under "never": the device starts afresh.
        assert_eq!(decided(NEVER, &cur, true, "b"), AFRESH);
    }
}
