//! Linking hubs to a provisioning service: the rules that an operator's
//! edits (`onramp linked-hub add|update|remove`) and a starting server's
//! configured and embedded hubs all go through. Every link written meets
//! [`LinkedHub::check`]; a hub that devices are registered on is unlinked
//! only when the caller says so.

use std::sync::Arc;

use onramp_model::{IdKey, UtcTime};

use crate::ports::{Precondition, Store, StoreError, StoreExt};
use crate::tenant::{LinkedHub, TenantError};

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
        )?;
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
    #[error(transparent)]
    Invalid(#[from] TenantError),
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
        link.check()?;
        self.store
            .put(service, link.clone(), Precondition::None, UtcTime::now())
            .await?;
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
                let key = IdKey::of(&old.name);
                self.store
                    .delete::<LinkedHub>(service, &key, Precondition::None)
                    .await?;
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
            let fresh = LinkedHub::from_connection_string(&cs, &link.location, 1, true)?;
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
        let key = IdKey::of(name.trim());
        match self
            .store
            .delete::<LinkedHub>(service, &key, Precondition::None)
            .await
        {
            Err(StoreError::NotFound(_)) => Err(not_linked(service, name)),
            other => Ok(other?),
        }
    }
}

fn not_linked(service: &str, hub: &str) -> LinkError {
    LinkError::NotLinked {
        service: service.to_owned(),
        hub: hub.to_owned(),
    }
}
