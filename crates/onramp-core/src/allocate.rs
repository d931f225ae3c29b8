//! Allocation: which linked hub a device goes to.
//!
//! Candidates are the hubs the enrollment lists (`iotHubs`, or the legacy
//! `iotHubHostName`), or every linked hub when it lists none. Hubs with
//! `applyAllocationPolicy: false` take devices only when named statically.
//!
//! Hashed allocation is weighted rendezvous hashing: every candidate hub gets
//! a score from a hash of (hub, registration ID) scaled by its weight, and the
//! highest score wins. The choice is stable for a device while the candidate
//! set is unchanged, proportional to the weights, and when a hub joins or
//! leaves only the devices that must move do.

use aws_lc_rs::digest;
use onramp_model::{AllocationPolicy, ErrorCode};

use crate::ProvisioningError;
use crate::tenant::LinkedHub;

/// What the enrollment says about hubs.
#[derive(Debug, Clone, Copy)]
pub struct HubSelection<'a> {
    pub policy: AllocationPolicy,
    /// `iotHubs` of the enrollment (may be empty).
    pub iot_hubs: &'a [String],
    /// Legacy `iotHubHostName`.
    pub iot_hub_host_name: Option<&'a str>,
}

/// Picks the hub for `registration_id` among `linked`.
pub fn allocate<'h>(
    selection: HubSelection<'_>,
    linked: &'h [LinkedHub],
    registration_id: &str,
) -> Result<&'h LinkedHub, ProvisioningError> {
    let named: Vec<&str> = if !selection.iot_hubs.is_empty() {
        selection.iot_hubs.iter().map(String::as_str).collect()
    } else {
        selection
            .iot_hub_host_name
            .into_iter()
            .filter(|h| !h.is_empty())
            .collect()
    };
    match selection.policy {
        AllocationPolicy::Static => {
            let Some(first) = named.first() else {
                return Err(ProvisioningError::new(
                    ErrorCode::IotHubNotAvailable,
                    "the enrollment uses static allocation but names no hub; set iotHubs to one linked hub",
                ));
            };
            linked.iter().find(|h| h.is_named(first)).ok_or_else(|| {
                ProvisioningError::new(
                    ErrorCode::IotHubNotAvailable,
                    format!(
                        "the enrollment's static hub '{first}' is not linked to this provisioning service; \
                         link it (onramp linked-hub add) or change the enrollment's iotHubs"
                    ),
                )
            })
        }
        AllocationPolicy::Hashed => {
            let candidates: Vec<&LinkedHub> = linked
                .iter()
                .filter(|h| h.apply_allocation_policy && h.allocation_weight > 0)
                .filter(|h| named.is_empty() || named.iter().any(|n| h.is_named(n)))
                .collect();
            rendezvous(&candidates, registration_id).ok_or_else(|| {
                let message = if linked.is_empty() {
                    "no IoT hub is linked to this provisioning service; link one with onramp linked-hub add".to_owned()
                } else if named.is_empty() {
                    "every linked hub has applyAllocationPolicy set to false; enable it on at least one hub".to_owned()
                } else {
                    format!(
                        "none of the enrollment's hubs ({}) is linked and accepts allocation; \
                         link them or change the enrollment's iotHubs",
                        named.join(", ")
                    )
                };
                ProvisioningError::new(ErrorCode::IotHubNotAvailable, message)
            })
        }
        AllocationPolicy::GeoLatency | AllocationPolicy::Custom => Err(ProvisioningError::new(
            ErrorCode::AllocationPolicyUnavailable,
            format!(
                "allocation policy '{}' is not available on this Onramp server yet; \
                 use hashed or static for this enrollment",
                selection.policy
            ),
        )),
    }
}

/// Weighted rendezvous hashing over `candidates`.
pub fn rendezvous<'h>(candidates: &[&'h LinkedHub], key: &str) -> Option<&'h LinkedHub> {
    let key = key.to_ascii_lowercase();
    candidates
        .iter()
        .map(|hub| {
            (
                score(&hub.name.to_ascii_lowercase(), &key, hub.allocation_weight),
                *hub,
            )
        })
        .max_by(|(a, ha), (b, hb)| a.total_cmp(b).then_with(|| hb.name.cmp(&ha.name)))
        .map(|(_, hub)| hub)
}

/// `-weight / ln(u)` with `u` uniform in (0, 1) from SHA-256(hub, key): the
/// probability that a hub has the highest score is its share of the weights.
fn score(hub: &str, key: &str, weight: u32) -> f64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(hub.as_bytes());
    ctx.update(&[0]);
    ctx.update(key.as_bytes());
    let hash = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    let bits = u64::from_be_bytes(first) >> 11; // 53 bits: exact in an f64
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use onramp_model::Secret;

    fn hub(name: &str, weight: u32) -> LinkedHub {
        LinkedHub {
            name: name.into(),
            connection_string: Secret::new(format!(
                "HostName={name};SharedAccessKeyName=o;SharedAccessKey=a2V5"
            )),
            location: "local".into(),
            allocation_weight: weight,
            apply_allocation_policy: true,
            embedded: false,
            companion: false,
        }
    }

    fn hashed() -> HubSelection<'static> {
        HubSelection {
            policy: AllocationPolicy::Hashed,
            iot_hubs: &[],
            iot_hub_host_name: None,
        }
    }

    #[test]
    fn weighted_hashing_follows_weights_within_three_percent() {
        let hubs = [hub("hub-a", 1), hub("hub-b", 1), hub("hub-c", 2)];
        let mut counts = [0usize; 3];
        let n = 10_000;
        for i in 0..n {
            let id = format!("device-{i:05}");
            let chosen = allocate(hashed(), &hubs, &id).unwrap();
            counts[hubs.iter().position(|h| h.name == chosen.name).unwrap()] += 1;
            // Stable: the same device lands on the same hub every time.
            assert_eq!(allocate(hashed(), &hubs, &id).unwrap().name, chosen.name);
        }
        let expected = [0.25, 0.25, 0.5];
        for (count, want) in counts.iter().zip(expected) {
            let share = *count as f64 / n as f64;
            assert!(
                (share - want).abs() <= 0.03 * want.max(0.25),
                "shares {counts:?}"
            );
        }
    }

    #[test]
    fn adding_a_hub_moves_only_devices_to_the_new_hub() {
        let two = [hub("hub-a", 1), hub("hub-b", 1)];
        let three = [hub("hub-a", 1), hub("hub-b", 1), hub("hub-c", 1)];
        for i in 0..2000 {
            let id = format!("d{i}");
            let before = allocate(hashed(), &two, &id).unwrap();
            let after = allocate(hashed(), &three, &id).unwrap();
            assert!(after.name == before.name || after.name == "hub-c");
        }
    }

    #[test]
    fn enrollment_hub_list_and_apply_flag_restrict_candidates() {
        let mut hubs = vec![hub("hub-a", 1), hub("hub-b", 1), hub("hub-c", 1)];
        hubs[1].apply_allocation_policy = false;
        let only_c = ["HUB-C".to_owned()];
        for i in 0..200 {
            let id = format!("d{i}");
            assert_ne!(allocate(hashed(), &hubs, &id).unwrap().name, "hub-b");
            let sel = HubSelection {
                iot_hubs: &only_c,
                ..hashed()
            };
            assert_eq!(allocate(sel, &hubs, &id).unwrap().name, "hub-c");
        }
        // A hub that does not apply the policy still takes statically named devices.
        let only_b = ["hub-b".to_owned()];
        let sel = HubSelection {
            policy: AllocationPolicy::Static,
            iot_hubs: &only_b,
            iot_hub_host_name: None,
        };
        assert_eq!(allocate(sel, &hubs, "x").unwrap().name, "hub-b");
    }

    #[test]
    fn failures_say_what_to_do() {
        let err = allocate(hashed(), &[], "x").unwrap_err();
        assert_eq!(err.code, ErrorCode::IotHubNotAvailable);
        assert!(err.message.contains("onramp linked-hub add"));
        let gone = ["gone.example.net".to_owned()];
        let sel = HubSelection {
            policy: AllocationPolicy::Static,
            iot_hubs: &gone,
            iot_hub_host_name: None,
        };
        let err = allocate(sel, &[hub("hub-a", 1)], "x").unwrap_err();
        assert!(err.message.contains("'gone.example.net' is not linked"));
        let sel = HubSelection {
            policy: AllocationPolicy::Static,
            iot_hubs: &[],
            iot_hub_host_name: Some("hub-a"),
        };
        assert_eq!(
            allocate(sel, &[hub("hub-a", 1)], "x").unwrap().name,
            "hub-a"
        );
    }
}
