//! Admin commands that work on the deployment's store directly: provisioning
//! services and linked hubs. A running server sees the changes at once (it
//! reads them from the store for every registration).

use onramp_core::keys;
use onramp_core::ports::Store;
use onramp_core::tenant::{AccessRights, LinkedHub, OWNER_POLICY, SharedAccessPolicy};

use crate::cli::{LinkedHubCommand, Location, ServiceCommand};
use crate::config::Config;
use crate::local::{self, ServeState};

pub async fn service(command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Show { location, name } => {
            let config = Config::load(&location)?;
            let store = local::open_existing(&config)?;
            let name = name.unwrap_or_else(|| config.service.name.clone());
            let service = store.service(&name).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "no provisioning service named '{name}'; list them with onramp service list"
                )
            })?;
            let endpoint = endpoint(&config);
            println!("Provisioning service  {}", service.name);
            println!("ID scope              {}", service.id_scope);
            println!("Global device endpoint {endpoint}");
            println!("Allocation policy     {}", service.allocation_policy);
            for p in store.policies(&name).await? {
                println!("Policy {:<24} rights: {}", p.name, p.rights);
                println!("  connection string   {}", p.connection_string(&endpoint));
            }
            let hubs = store.linked_hubs(&name).await?;
            println!(
                "Linked hubs           {}",
                hubs.iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        ServiceCommand::List { location } => {
            let config = Config::load(&location)?;
            let store = local::open_existing(&config)?;
            println!(
                "{:<24} {:<14} {:<10} LINKED HUBS",
                "NAME", "ID SCOPE", "POLICY"
            );
            for s in store.services().await? {
                let hubs = store.linked_hubs(&s.name).await?.len();
                println!(
                    "{:<24} {:<14} {:<10} {hubs}",
                    s.name, s.id_scope, s.allocation_policy
                );
            }
            Ok(())
        }
        ServiceCommand::Create { location, name } => {
            let config = Config::load(&location)?;
            std::fs::create_dir_all(&config.data_dir)?;
            let store = local::open_store(&config, local::sealer(&config)?)?;
            let (service, owner) =
                local::create_service(&*store, &name, config.allocation_policy()?).await?;
            println!(
                "Created provisioning service '{}' with ID scope {}.",
                service.name, service.id_scope
            );
            println!(
                "Connection string ({OWNER_POLICY}): {}",
                owner.connection_string(&endpoint(&config))
            );
            println!(
                "It has no linked hub yet: onramp linked-hub add --service {} --connection-string …",
                service.name
            );
            Ok(())
        }
        ServiceCommand::AddPolicy {
            location,
            name,
            rights,
            service,
        } => {
            let (config, store, service) = open(&location, service).await?;
            let rights = AccessRights::parse(&rights).map_err(anyhow::Error::msg)?;
            let policy = SharedAccessPolicy {
                name,
                primary_key: keys::generate(),
                secondary_key: keys::generate(),
                rights,
            };
            store.put_policy(&service, &policy).await?;
            println!(
                "Policy '{}' of '{service}' has rights: {}",
                policy.name, policy.rights
            );
            println!(
                "Connection string: {}",
                policy.connection_string(&endpoint(&config))
            );
            Ok(())
        }
        ServiceCommand::Delete {
            location,
            name,
            yes,
        } => {
            if !yes {
                anyhow::bail!(
                    "deleting '{name}' removes its enrollments, registrations and keys; repeat with --yes"
                );
            }
            let config = Config::load(&location)?;
            let store = local::open_existing(&config)?;
            if store.delete_service(&name).await? {
                println!("Deleted provisioning service '{name}'.");
                Ok(())
            } else {
                anyhow::bail!("no provisioning service named '{name}'")
            }
        }
    }
}

pub async fn linked_hub(command: LinkedHubCommand) -> anyhow::Result<()> {
    match command {
        LinkedHubCommand::Add {
            location,
            connection_string,
            region,
            weight,
            no_allocation,
            companion,
            service,
        } => {
            let (_, store, service) = open(&location, service).await?;
            let mut link = LinkedHub::from_connection_string(
                &connection_string,
                &region,
                weight,
                !no_allocation,
            )
            .map_err(anyhow::Error::msg)?;
            link.companion = companion;
            store.put_linked_hub(&service, &link).await?;
            println!(
                "Linked hub {} to provisioning service '{service}' (region {}, weight {}).",
                link.name, link.location, link.allocation_weight
            );
            Ok(())
        }
        LinkedHubCommand::List { location, service } => {
            let (_, store, service) = open(&location, service).await?;
            println!(
                "{:<40} {:<12} {:>6} {:<9} KIND",
                "NAME", "REGION", "WEIGHT", "ALLOCATE"
            );
            for h in store.linked_hubs(&service).await? {
                println!(
                    "{:<40} {:<12} {:>6} {:<9} {}",
                    h.name,
                    h.location,
                    h.allocation_weight,
                    if h.apply_allocation_policy {
                        "yes"
                    } else {
                        "no"
                    },
                    if h.embedded { "embedded" } else { "linked" }
                );
            }
            Ok(())
        }
        LinkedHubCommand::Remove {
            location,
            name,
            service,
        } => {
            let (_, store, service) = open(&location, service).await?;
            if store.delete_linked_hub(&service, &name).await? {
                println!(
                    "Unlinked hub {name} from '{service}'. Devices already on it stay there until they register again."
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "hub '{name}' is not linked to '{service}'; see onramp linked-hub list"
                )
            }
        }
    }
}

async fn open(
    location: &Location,
    service: Option<String>,
) -> anyhow::Result<(Config, std::sync::Arc<onramp_store::SqliteStore>, String)> {
    let config = Config::load(location)?;
    let store = local::open_existing(&config)?;
    let service = service.unwrap_or_else(|| config.service.name.clone());
    if store.service(&service).await?.is_none() {
        anyhow::bail!("no provisioning service named '{service}'");
    }
    Ok((config, store, service))
}

/// `host[:port]` of the deployment: the running server's, else the configured host.
pub fn endpoint(config: &Config) -> String {
    ServeState::read(config)
        .map(|s| s.endpoint)
        .unwrap_or_else(|| config.public_host.clone())
}
