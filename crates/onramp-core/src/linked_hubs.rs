//! Linking hubs to a provisioning service: the rules that an operator's
//! edits (`onramp linked-hub add|update|remove`) and a starting server's
//! configured and embedded hubs all go through. Every link written meets
//! [`LinkedHub::check`]; a hub that devices are registered on is unlinked
//! only when the caller says so.

use std::sync::Arc;

use crate::ports::{Store, StoreError};
use crate::tenant::LinkedHub;

/// The linked-hub rules over a store.
pub struct LinkedHubs {
    store: Arc<dyn Store>,
}

/// A hub to link, as an operator or a configuration file gives it.
#[derive(Debug, Clone)]
pub struct NewLink<'a> {
    /// A connection string with registry write rights; names the hub.
    pub connection_string: &'a str,
    pub region: &'a str,
    pub weight: u32,
    /// Whether the hub takes new devices under the allocation policy.
    pub allocate: bool,
    /// An Onramp companion hub, given the CAs of X.509 groups.
    pub companion: bool,
}

impl NewLink<'_> {
    /// The link, checked; nothing is written.
    pub fn build(&self) -> Result<LinkedHub, LinkError> {
        let mut link = LinkedHub::from_connection_string(
            self.connection_string,
            self.region,
            self.weight,
            self.allocate,
        )
        .map_err(LinkError::Invalid)?;
        link.companion = self.companion;
        Ok(link)
    }
}

/// Changes to a link; `None` keeps a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct LinkChanges {
    /// A new connection string for the same hub (a rotated key, say).
    pub connection_string: Option<String>,
    pub region: Option<String>,
    pub weight: Option<u32>,
    pub allocate: Option<bool>,
}

/// Whether a hub that devices are registered on may be unlinked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlink {
    /// Only a hub without devices.
    IfEmpty,
    /// Even one with devices: they stay there, but their data cannot be
    /// migrated from it when they register again.
    EvenWithDevices,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A connection string, name, region or weight breaks the rules.
    #[error("{0}")]
    Invalid(String),
    #[error("hub '{hub}' is not linked to '{service}'")]
    NotLinked { service: String, hub: String },
    /// An update's connection string is for another hub.
    #[error("the connection string is for hub '{given}', not '{linked}'")]
    OtherHub { given: String, linked: String },
    #[error("hub {hub} still holds {devices} device(s) of '{service}'")]
    HoldsDevices {
        service: String,
        hub: String,
        devices: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LinkedHubs {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Links a hub (or replaces the link to the same hub).
    pub async fn add(&self, service: &str, new: &NewLink<'_>) -> Result<LinkedHub, LinkError> {
        let link = new.build()?;
        self.link(service, &link).await?;
        Ok(link)
    }

    /// Writes a link built already (from the configuration, say), checked
    /// again here.
    pub async fn link(&self, service: &str, link: &LinkedHub) -> Result<(), LinkError> {
        link.check().map_err(LinkError::Invalid)?;
        self.store.put_linked_hub(service, link).await?;
        Ok(())
    }

    /// Links the companion hub embedded in this server under its current
    /// name, replacing a link left under an old name (the port changed) and
    /// keeping the operator's settings of the current one.
    pub async fn link_embedded(
        &self,
        service: &str,
        connection_string: &str,
    ) -> Result<LinkedHub, LinkError> {
        let existing = self.store.linked_hubs(service).await?;
        let mut link = NewLink {
            connection_string,
            region: "local",
            weight: 1,
            allocate: true,
            companion: true,
        }
        .build()?;
        link.embedded = true;
        for old in existing.iter().filter(|l| l.embedded) {
            if old.is_named(&link.name) {
                link.location = old.location.clone();
                link.allocation_weight = old.allocation_weight;
                link.apply_allocation_policy = old.apply_allocation_policy;
            } else {
                self.store.delete_linked_hub(service, &old.name).await?;
            }
        }
        self.link(service, &link).await?;
        Ok(link)
    }

    /// Changes a link's settings; a new connection string must be for the
    /// same hub.
    pub async fn update(
        &self,
        service: &str,
        name: &str,
        changes: LinkChanges,
    ) -> Result<LinkedHub, LinkError> {
        let mut link = self
            .store
            .linked_hubs(service)
            .await?
            .into_iter()
            .find(|h| h.is_named(name))
            .ok_or_else(|| not_linked(service, name))?;
        if let Some(cs) = changes.connection_string {
            let fresh = LinkedHub::from_connection_string(&cs, &link.location, 1, true)
                .map_err(LinkError::Invalid)?;
            if !fresh.is_named(&link.name) {
                return Err(LinkError::OtherHub {
                    given: fresh.name,
                    linked: link.name,
                });
            }
            link.connection_string = fresh.connection_string;
        }
        if let Some(region) = changes.region {
            link.location = region.trim().to_owned();
        }
        if let Some(weight) = changes.weight {
            link.allocation_weight = weight;
        }
        if let Some(allocate) = changes.allocate {
            link.apply_allocation_policy = allocate;
        }
        self.link(service, &link).await?;
        Ok(link)
    }

    /// Devices of `service` whose registration places them on hub `name`.
    pub async fn devices_on(&self, service: &str, name: &str) -> Result<u64, LinkError> {
        Ok(self.store.count_devices_on_hub(service, name).await?)
    }

    /// Unlinks a hub. Its devices stay there until they register again.
    pub async fn unlink(&self, service: &str, name: &str, when: Unlink) -> Result<(), LinkError> {
        let devices = self.devices_on(service, name).await?;
        if devices > 0 && when == Unlink::IfEmpty {
            return Err(LinkError::HoldsDevices {
                service: service.to_owned(),
                hub: name.to_owned(),
                devices,
            });
        }
        if self.store.delete_linked_hub(service, name).await? {
            Ok(())
        } else {
            Err(not_linked(service, name))
        }
    }
}

fn not_linked(service: &str, hub: &str) -> LinkError {
    LinkError::NotLinked {
        service: service.to_owned(),
        hub: hub.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

    use super::*;
    use crate::ports::{Placement, RegistrationRecord};
    use crate::testing::{MemoryStore, conformance};
    use onramp_model::{DeviceRegistrationState, RegistrationStatus};

    const CS: &str =
        "HostName=hub-a.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5";

    async fn hubs() -> (Arc<MemoryStore>, LinkedHubs) {
        let store = Arc::new(MemoryStore::new());
        store
            .create_service(&conformance::service("default", 0xA2B3), &[])
            .await
            .unwrap();
        (store.clone(), LinkedHubs::new(store))
    }

    fn new_link(weight: u32) -> NewLink<'static> {
        NewLink {
            connection_string: CS,
            region: "westeurope",
            weight,
            allocate: true,
            companion: false,
        }
    }

    #[tokio::test]
    async fn links_are_checked_before_they_are_written() {
        let (store, hubs) = hubs().await;
        let err = hubs.add("default", &new_link(0)).await.unwrap_err();
        assert!(err.to_string().contains("use 1 to 1000"), "{err}");
        assert!(store.linked_hubs("default").await.unwrap().is_empty());

        hubs.add("default", &new_link(2)).await.unwrap();
        for changes in [
            LinkChanges {
                weight: Some(1001),
                ..Default::default()
            },
            LinkChanges {
                region: Some(" ".into()),
                ..Default::default()
            },
        ] {
            let err = hubs
                .update("default", "HUB-A.example.net", changes)
                .await
                .unwrap_err();
            assert!(matches!(err, LinkError::Invalid(_)), "{err}");
        }
        let other = LinkChanges {
            connection_string: Some(CS.replace("hub-a", "hub-b")),
            ..Default::default()
        };
        let err = hubs
            .update("default", "hub-a.example.net", other)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::OtherHub { .. }), "{err}");
        let stored = store.linked_hubs("default").await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (stored[0].allocation_weight, stored[0].location.as_str()),
            (2, "westeurope")
        );
        let err = hubs
            .update("default", "hub-z.example.net", LinkChanges::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::NotLinked { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_hub_with_devices_is_unlinked_only_when_asked() {
        let (store, hubs) = hubs().await;
        let link = hubs.add("default", &new_link(1)).await.unwrap();
        let mut state = DeviceRegistrationState::new("dev-01", RegistrationStatus::Assigned);
        state.assigned_hub = Some(link.name.clone());
        state.device_id = Some("dev-01".into());
        let record = RegistrationRecord {
            state,
            operation_id: "1.0.x".into(),
            enrollment_group_id: None,
            placement: Some(Placement {
                hub: link.name.clone(),
                device_id: "dev-01".into(),
                initial_hub: link.name.clone(),
            }),
        };
        store
            .put_registration("default", &record, onramp_model::UtcTime::now())
            .await
            .unwrap();
        let err = hubs
            .unlink("default", &link.name, Unlink::IfEmpty)
            .await
            .unwrap_err();
        assert!(
            matches!(err, LinkError::HoldsDevices { devices: 1, .. }),
            "{err}"
        );
        assert_eq!(store.linked_hubs("default").await.unwrap().len(), 1);
        hubs.unlink("default", &link.name, Unlink::EvenWithDevices)
            .await
            .unwrap();
        assert!(store.linked_hubs("default").await.unwrap().is_empty());
        let err = hubs
            .unlink("default", &link.name, Unlink::EvenWithDevices)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::NotLinked { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_embedded_hub_keeps_its_settings_and_replaces_a_link_under_an_old_name() {
        let (store, hubs) = hubs().await;
        let old = CS.replace("hub-a.example.net", "localhost:8443");
        hubs.link_embedded("default", &old).await.unwrap();
        let current = CS.replace("hub-a.example.net", "localhost:9443");
        let link = hubs.link_embedded("default", &current).await.unwrap();
        hubs.update(
            "default",
            &link.name,
            LinkChanges {
                weight: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        hubs.link_embedded("default", &current).await.unwrap();
        let stored = store.linked_hubs("default").await.unwrap();
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(stored[0].name, "localhost:9443");
        assert_eq!(stored[0].allocation_weight, 3);
        assert!(stored[0].embedded && stored[0].companion);
    }
}
