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
use crate::ports::{HubLatency, NoLatency};
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

/// What lowest-latency allocation knows about the device and this node.
#[derive(Clone, Copy)]
pub struct Proximity<'a> {
    /// The device's region when the operator's network table places its
    /// address in a region other than this node's.
    pub client_region: Option<&'a str>,
    /// Round trips measured from this node.
    pub latency: &'a dyn HubLatency,
    /// Hubs this close to the fastest one share its devices.
    pub tolerance_ms: f64,
}

/// This node's region and the operator's table of client networks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Regions {
    /// Where this node runs, e.g. `westeurope` (hubs' `location` values).
    pub node: Option<String>,
    /// Client networks and their regions; the most specific network wins.
    pub networks: Vec<(ipnet::IpNet, String)>,
}

impl Regions {
    /// The region the table gives `addr`, when it differs from this node's:
    /// then the node's own latency measurements do not describe the device.
    pub fn client_region(&self, addr: Option<std::net::IpAddr>) -> Option<&str> {
        let addr = addr?;
        let (_, region) = self
            .networks
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())?;
        let same = self
            .node
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(region));
        (!same).then_some(region.as_str())
    }
}

impl Proximity<'static> {
    /// Nothing measured, no network table.
    pub fn unmeasured() -> Self {
        Self {
            client_region: None,
            latency: &NoLatency,
            tolerance_ms: 0.0,
        }
    }
}

/// Picks the hub for `registration_id` among `linked` by every policy but
/// `custom` (the engine asks the webhook, see [`candidates`]).
pub fn allocate<'h>(
    selection: HubSelection<'_>,
    linked: &'h [LinkedHub],
    registration_id: &str,
    proximity: Proximity<'_>,
) -> Result<&'h LinkedHub, ProvisioningError> {
    match selection.policy {
        AllocationPolicy::Static => static_hub(selection, linked),
        AllocationPolicy::Hashed => {
            let candidates = candidates(selection, linked)?;
            rendezvous(&candidates, registration_id).ok_or_else(|| no_candidate(selection, linked))
        }
        AllocationPolicy::GeoLatency => {
            let candidates = candidates(selection, linked)?;
            let nearest = nearest(&candidates, proximity);
            rendezvous(&nearest, registration_id).ok_or_else(|| no_candidate(selection, linked))
        }
        AllocationPolicy::Custom => Err(ProvisioningError::new(
            ErrorCode::AllocationPolicyUnavailable,
            "custom allocation is decided by the enrollment's webhook, not by hashing",
        )),
    }
}

/// The hubs named by the enrollment (`iotHubs`, else the legacy `iotHubHostName`).
fn named<'a>(selection: HubSelection<'a>) -> Vec<&'a str> {
    if !selection.iot_hubs.is_empty() {
        selection.iot_hubs.iter().map(String::as_str).collect()
    } else {
        selection
            .iot_hub_host_name
            .into_iter()
            .filter(|h| !h.is_empty())
            .collect()
    }
}

fn static_hub<'h>(
    selection: HubSelection<'_>,
    linked: &'h [LinkedHub],
) -> Result<&'h LinkedHub, ProvisioningError> {
    let named = named(selection);
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

/// The hubs a policy may choose from: the enrollment's hubs, or every linked
/// hub when it names none, less those that do not apply allocation policies
/// or weigh nothing.
pub fn candidates<'h>(
    selection: HubSelection<'_>,
    linked: &'h [LinkedHub],
) -> Result<Vec<&'h LinkedHub>, ProvisioningError> {
    let named = named(selection);
    let found: Vec<&LinkedHub> = linked
        .iter()
        .filter(|h| h.apply_allocation_policy && h.allocation_weight > 0)
        .filter(|h| named.is_empty() || named.iter().any(|n| h.is_named(n)))
        .collect();
    if found.is_empty() {
        return Err(no_candidate(selection, linked));
    }
    Ok(found)
}

fn no_candidate(selection: HubSelection<'_>, linked: &[LinkedHub]) -> ProvisioningError {
    let named = named(selection);
    let message = if linked.is_empty() {
        "no IoT hub is linked to this provisioning service; link one with onramp linked-hub add"
            .to_owned()
    } else if named.is_empty() {
        "every linked hub has applyAllocationPolicy set to false; enable it on at least one hub"
            .to_owned()
    } else {
        format!(
            "none of the enrollment's hubs ({}) is linked and accepts allocation; \
             link them or change the enrollment's iotHubs",
            named.join(", ")
        )
    };
    ProvisioningError::new(ErrorCode::IotHubNotAvailable, message)
}

/// Lowest latency: the hubs in the device's region when the network table
/// placed it elsewhere; otherwise the hubs whose measured round trip from
/// this node is within the tolerance of the fastest. Hubs not measured yet
/// (or not answering) take part only when no hub has been measured.
fn nearest<'h>(candidates: &[&'h LinkedHub], proximity: Proximity<'_>) -> Vec<&'h LinkedHub> {
    if let Some(region) = proximity.client_region {
        let local: Vec<&LinkedHub> = candidates
            .iter()
            .copied()
            .filter(|h| h.location.eq_ignore_ascii_case(region))
            .collect();
        if !local.is_empty() {
            return local;
        }
    }
    let measured: Vec<(&LinkedHub, f64)> = candidates
        .iter()
        .filter_map(|h| proximity.latency.latency_ms(&h.name).map(|l| (*h, l)))
        .collect();
    let Some(best) = measured.iter().map(|(_, l)| *l).min_by(f64::total_cmp) else {
        return candidates.to_vec();
    };
    measured
        .into_iter()
        .filter(|(_, l)| *l <= best + proximity.tolerance_ms)
        .map(|(h, _)| h)
        .collect()
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

    fn pick<'h>(
        sel: HubSelection<'_>,
        hubs: &'h [LinkedHub],
        id: &str,
    ) -> Result<&'h LinkedHub, ProvisioningError> {
        allocate(sel, hubs, id, Proximity::unmeasured())
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
            let chosen = pick(hashed(), &hubs, &id).unwrap();
            counts[hubs.iter().position(|h| h.name == chosen.name).unwrap()] += 1;
            // Stable: the same device lands on the same hub every time.
            assert_eq!(pick(hashed(), &hubs, &id).unwrap().name, chosen.name);
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
            let before = pick(hashed(), &two, &id).unwrap();
            let after = pick(hashed(), &three, &id).unwrap();
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
            assert_ne!(pick(hashed(), &hubs, &id).unwrap().name, "hub-b");
            let sel = HubSelection {
                iot_hubs: &only_c,
                ..hashed()
            };
            assert_eq!(pick(sel, &hubs, &id).unwrap().name, "hub-c");
        }
        // A hub that does not apply the policy still takes statically named devices.
        let only_b = ["hub-b".to_owned()];
        let sel = HubSelection {
            policy: AllocationPolicy::Static,
            iot_hubs: &only_b,
            iot_hub_host_name: None,
        };
        assert_eq!(pick(sel, &hubs, "x").unwrap().name, "hub-b");
    }

    #[test]
    fn failures_say_what_to_do() {
        let err = pick(hashed(), &[], "x").unwrap_err();
        assert_eq!(err.code, ErrorCode::IotHubNotAvailable);
        assert!(err.message.contains("onramp linked-hub add"));
        let gone = ["gone.example.net".to_owned()];
        let sel = HubSelection {
            policy: AllocationPolicy::Static,
            iot_hubs: &gone,
            iot_hub_host_name: None,
        };
        let err = pick(sel, &[hub("hub-a", 1)], "x").unwrap_err();
        assert!(err.message.contains("'gone.example.net' is not linked"));
        let sel = HubSelection {
            policy: AllocationPolicy::Static,
            iot_hubs: &[],
            iot_hub_host_name: Some("hub-a"),
        };
        assert_eq!(pick(sel, &[hub("hub-a", 1)], "x").unwrap().name, "hub-a");
    }

    struct Table(Vec<(&'static str, f64)>);

    impl HubLatency for Table {
        fn latency_ms(&self, hub: &str) -> Option<f64> {
            self.0.iter().find(|(h, _)| *h == hub).map(|(_, l)| *l)
        }
    }

    fn geo() -> HubSelection<'static> {
        HubSelection {
            policy: AllocationPolicy::GeoLatency,
            ..hashed()
        }
    }

    #[test]
    fn lowest_latency_avoids_slow_hubs_and_hashes_among_near_ones() {
        let mut hubs = vec![hub("hub-a", 1), hub("hub-b", 1), hub("hub-c", 1)];
        hubs[2].location = "eastus".into();
        let table = Table(vec![("hub-a", 1.0), ("hub-b", 3.0), ("hub-c", 80.0)]);
        let near = Proximity {
            client_region: None,
            latency: &table,
            tolerance_ms: 5.0,
        };
        let mut counts = std::collections::HashMap::new();
        for i in 0..400 {
            let h = allocate(geo(), &hubs, &format!("d{i}"), near).unwrap();
            *counts.entry(h.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("hub-c"), None, "{counts:?}");
        assert!(counts["hub-a"] > 120 && counts["hub-b"] > 120, "{counts:?}");

        // A tighter tolerance leaves only the fastest.
        let strict = Proximity {
            tolerance_ms: 1.0,
            ..near
        };
        assert_eq!(allocate(geo(), &hubs, "x", strict).unwrap().name, "hub-a");

        // The network table places a client in eastus: hub-c's region wins.
        let far = Proximity {
            client_region: Some("EastUS"),
            ..near
        };
        assert_eq!(allocate(geo(), &hubs, "x", far).unwrap().name, "hub-c");

        // A region without hubs falls back to measured latency.
        let nowhere = Proximity {
            client_region: Some("japaneast"),
            ..strict
        };
        assert_eq!(allocate(geo(), &hubs, "x", nowhere).unwrap().name, "hub-a");
    }

    #[test]
    fn lowest_latency_without_measurements_hashes_over_every_candidate() {
        let hubs = [hub("hub-a", 1), hub("hub-b", 1)];
        let table = Table(vec![("hub-b", 2.0)]);
        let one_measured = Proximity {
            client_region: None,
            latency: &table,
            tolerance_ms: 5.0,
        };
        // Only hub-b answered its probes: unmeasured hub-a takes no devices.
        for i in 0..50 {
            let id = format!("d{i}");
            assert_eq!(
                allocate(geo(), &hubs, &id, one_measured).unwrap().name,
                "hub-b"
            );
        }
        let seen: std::collections::HashSet<String> = (0..50)
            .map(|i| {
                allocate(geo(), &hubs, &format!("d{i}"), Proximity::unmeasured())
                    .unwrap()
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(seen.len(), 2);
    }
}
