//! Admin commands that work on the deployment's store directly: provisioning
//! services and linked hubs. A running server sees the changes at once (it
//! reads them from the store for every registration).

use anyhow::Context;
use onramp_core::admin::LinkedHubStatus;
use onramp_core::keys;
use onramp_core::linked_hubs::{LinkChanges, LinkError, LinkedHubs, NewLink, Unlink};
use onramp_core::ports::{Store, StoreExt};
use onramp_core::tenant::{AccessRights, OWNER_POLICY, SharedAccessPolicy};
use onramp_model::{AllocationPolicy, CustomAllocationDefinition};

use crate::cli::{LinkedHubCommand, NewPolicy, PolicyCommand, ServiceCommand, ServiceScope};
use crate::config::Config;
use crate::local::{self, Deployment};
use crate::output::{Format, Output};
use views::{LinkedHubRow, PolicyView, ServiceRow, ServiceView};

mod views;

pub async fn service(command: ServiceCommand, output: Output) -> anyhow::Result<()> {
    let format = output.or(Format::Table);
    match command {
        ServiceCommand::Show {
            location,
            name,
            keys,
        } => {
            let config = Config::load(&location)?;
            let store = local::open_existing(&config).await?;
            let name = name.unwrap_or_else(|| config.service.name.clone());
            let service = store.service(&name).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "no provisioning service named '{name}'; list them with onramp service list"
                )
            })?;
            let endpoint = endpoint(&config);
            let policies = store.policies(&name).await?;
            let hubs = store.linked_hubs(&name).await?;
            format.one(&ServiceView::new(
                &service,
                config.throttle.engine().rates_of(&name),
                &endpoint,
                &policies,
                &hubs,
                keys.then_some(endpoint.as_str()),
            ))?;
            if !keys {
                eprintln!(
                    "Add --keys to show the connection strings (they hold the policies' keys)."
                );
            }
            Ok(())
        }
        ServiceCommand::List(location) => {
            let config = Config::load(&location)?;
            let store = local::open_existing(&config).await?;
            let mut rows = Vec::new();
            for s in store.services().await? {
                let linked_hubs = store.linked_hubs(&s.name).await?.len();
                rows.push(ServiceRow::new(&s, linked_hubs));
            }
            format.list(&rows)
        }
        ServiceCommand::Create {
            location,
            name,
            allocation_policy,
        } => {
            let config = Config::load(&location)?;
            onramp_files::create_dir(&config.data_dir).with_context(|| {
                format!("creating the data directory {}", config.data_dir.display())
            })?;
            let store = local::open_store(&config, local::sealer(&config)?).await?;
            let policy = match allocation_policy {
                Some(p) => service_default_policy(&p, false)?,
                None => config.allocation_policy()?,
            };
            let (service, owner) = local::create_service(&*store, &name, policy).await?;
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
        ServiceCommand::Update {
            location,
            name,
            allocation_policy,
            webhook_url,
            webhook_api_version,
            no_webhook,
        } => {
            let (_, store, name) = open(ServiceScope {
                location,
                service: name,
            })
            .await?;
            let mut service = store
                .service(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no provisioning service named '{name}'"))?;
            if let Some(url) = webhook_url {
                let url = url.trim().to_owned();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    anyhow::bail!("--webhook-url '{url}' is not an http(s) URL");
                }
                service.custom_allocation = Some(CustomAllocationDefinition {
                    webhook_url: url,
                    api_version: webhook_api_version,
                });
            }
            if no_webhook {
                service.custom_allocation = None;
            }
            if let Some(p) = allocation_policy {
                service.allocation_policy =
                    service_default_policy(&p, service.custom_allocation.is_some())?;
            }
            if service.allocation_policy == AllocationPolicy::Custom
                && service.custom_allocation.is_none()
            {
                anyhow::bail!(
                    "the default policy is custom, which needs a default webhook: add --webhook-url, \
                     or choose another --allocation-policy"
                );
            }
            store.update_service(&service).await?;
            println!(
                "Provisioning service '{}': default allocation policy {}, default webhook {}.",
                service.name,
                service.allocation_policy,
                service.custom_allocation.as_ref().map_or("none", |d| d
                    .webhook_url
                    .split('?')
                    .next()
                    .unwrap_or_default())
            );
            Ok(())
        }
        ServiceCommand::AddPolicy(new) => add_policy(new, true).await,
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
            let store = local::open_existing(&config).await?;
            if store.delete_service(&name).await? {
                println!("Deleted provisioning service '{name}'.");
                Ok(())
            } else {
                anyhow::bail!("no provisioning service named '{name}'")
            }
        }
    }
}

pub async fn policy(command: PolicyCommand, output: Output) -> anyhow::Result<()> {
    let format = output.or(Format::Table);
    match command {
        PolicyCommand::List(scope) => {
            let (_, store, service) = open(scope).await?;
            let policies = store.policies(&service).await?;
            let rows: Vec<PolicyView> = policies.iter().map(|p| PolicyView::new(p, None)).collect();
            format.list(&rows)
        }
        PolicyCommand::Show { scope, name, keys } => {
            let (config, store, service) = open(scope).await?;
            let policy = existing_policy(&*store, &service, &name).await?;
            let endpoint = endpoint(&config);
            format.one(&PolicyView::new(&policy, keys.then_some(endpoint.as_str())))?;
            if !keys {
                eprintln!("Add --keys to show the connection strings (they hold the keys).");
            }
            Ok(())
        }
        PolicyCommand::Create(new) => add_policy(new, false).await,
        PolicyCommand::Delete { scope, name } => {
            let (_, store, service) = open(scope).await?;
            if name == OWNER_POLICY {
                anyhow::bail!(
                    "policy '{OWNER_POLICY}' is how this CLI and the console reach the service; \
                     regenerate its keys instead of deleting it"
                );
            }
            if !store.delete_policy(&service, &name).await? {
                anyhow::bail!(
                    "no policy '{name}' in '{service}'; list them with onramp policy list"
                );
            }
            eprintln!("deleted policy '{name}' of '{service}'");
            Ok(())
        }
        PolicyCommand::RegenerateKey { scope, name, key } => {
            let (config, store, service) = open(scope).await?;
            let mut policy = existing_policy(&*store, &service, &name).await?;
            let fresh = keys::generate();
            let shown = if key == "secondary" {
                policy.secondary_key = fresh;
                SharedAccessPolicy {
                    primary_key: policy.secondary_key.clone(),
                    ..policy.clone()
                }
            } else {
                policy.primary_key = fresh;
                policy.clone()
            };
            store.put_policy(&service, &policy).await?;
            println!("{}", shown.connection_string(&endpoint(&config)));
            eprintln!("policy '{name}' has a new {key} key; the other one still works");
            Ok(())
        }
    }
}

/// Writes a policy with fresh keys (replacing one of that name only when
/// `replace`) and prints its connection string.
async fn add_policy(new: NewPolicy, replace: bool) -> anyhow::Result<()> {
    let NewPolicy {
        scope,
        name,
        rights,
    } = new;
    let (config, store, service) = open(scope).await?;
    if !replace
        && store
            .policies(&service)
            .await?
            .iter()
            .any(|p| p.name == name)
    {
        anyhow::bail!(
            "policy '{name}' of '{service}' exists; give it new keys with onramp policy regenerate-key"
        );
    }
    let policy = fresh_policy(name, &rights)?;
    store.put_policy(&service, &policy).await?;
    let connection_string = policy.connection_string(&endpoint(&config));
    let rights = format!(
        "Policy '{}' of '{service}' has rights: {}",
        policy.name, policy.rights
    );
    if replace {
        // `service add-policy` prints as it always has.
        println!("{rights}\nConnection string: {connection_string}");
    } else {
        eprintln!("{rights}");
        println!("{connection_string}");
    }
    Ok(())
}

/// A policy with fresh keys and the rights `rights` names.
fn fresh_policy(name: String, rights: &str) -> anyhow::Result<SharedAccessPolicy> {
    Ok(SharedAccessPolicy {
        name,
        primary_key: keys::generate(),
        secondary_key: keys::generate(),
        rights: AccessRights::parse(rights).map_err(anyhow::Error::msg)?,
    })
}

async fn existing_policy(
    store: &dyn Store,
    service: &str,
    name: &str,
) -> anyhow::Result<SharedAccessPolicy> {
    store
        .policies(service)
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            anyhow::anyhow!("no policy '{name}' in '{service}'; list them with onramp policy list")
        })
}

pub async fn linked_hub(command: LinkedHubCommand, output: Output) -> anyhow::Result<()> {
    match command {
        LinkedHubCommand::Add {
            scope,
            connection_string,
            region,
            weight,
            no_allocation,
            companion,
        } => {
            let (_, store, service) = open(scope).await?;
            let link = LinkedHubs::new(store)
                .add(
                    &service,
                    &NewLink {
                        connection_string: &connection_string,
                        region: &region,
                        weight,
                        allocate: !no_allocation,
                        companion,
                    },
                )
                .await?;
            println!(
                "Linked hub {} to provisioning service '{service}' (region {}, weight {}).",
                link.name, link.location, link.allocation_weight
            );
            Ok(())
        }
        LinkedHubCommand::List(scope) => {
            let (_, store, service) = open(scope).await?;
            let latencies = store.hub_latencies().await?;
            let mut hubs = Vec::new();
            for h in store.linked_hubs(&service).await? {
                let devices = store.count_devices_on_hub(&service, &h.name).await?;
                hubs.push(LinkedHubStatus::new(&h, devices, &latencies));
            }
            match output.or(Format::Table) {
                Format::Table => {
                    let rows: Vec<LinkedHubRow> = hubs.iter().map(LinkedHubRow::from).collect();
                    Format::Table.list(&rows)
                }
                format => format.list(&hubs),
            }
        }
        LinkedHubCommand::Show { scope, name } => {
            let (_, store, service) = open(scope).await?;
            let hub = store
                .linked_hubs(&service)
                .await?
                .into_iter()
                .find(|h| h.is_named(&name))
                .ok_or_else(|| {
                    anyhow::anyhow!("no linked hub '{name}' in '{service}'; list them with onramp linked-hub list")
                })?;
            let devices = store.count_devices_on_hub(&service, &hub.name).await?;
            let latencies = store.hub_latencies().await?;
            output
                .or(Format::Json)
                .one(&LinkedHubStatus::new(&hub, devices, &latencies))
        }
        LinkedHubCommand::Update {
            scope,
            name,
            connection_string,
            region,
            weight,
            allocation,
        } => {
            let (_, store, service) = open(scope).await?;
            let changes = LinkChanges {
                connection_string,
                region,
                weight,
                allocate: allocation.map(|a| a == "on"),
            };
            let link = match LinkedHubs::new(store)
                .update(&service, &name, changes)
                .await
            {
                Ok(link) => link,
                Err(e @ LinkError::NotLinked { .. }) => {
                    anyhow::bail!("{e}; see onramp linked-hub list")
                }
                Err(e @ LinkError::OtherHub { .. }) => {
                    anyhow::bail!("{e}; link that hub with onramp linked-hub add")
                }
                Err(e) => return Err(e.into()),
            };
            println!(
                "Hub {} of '{service}': region {}, weight {}, allocation {}.",
                link.name,
                link.location,
                link.allocation_weight,
                if link.apply_allocation_policy {
                    "on"
                } else {
                    "off"
                }
            );
            Ok(())
        }
        LinkedHubCommand::Remove { scope, name, yes } => {
            let (_, store, service) = open(scope).await?;
            let hubs = LinkedHubs::new(store);
            let when = if yes {
                Unlink::EvenWithDevices
            } else {
                Unlink::IfEmpty
            };
            match hubs.unlink(&service, &name, when).await {
                Err(LinkError::HoldsDevices { devices, .. })
                    if confirm(&format!(
                        "{devices} device(s) of '{service}' are registered on hub {name}. They stay there, but \
                         when they register again Onramp cannot migrate their data from an unlinked hub. Unlink it?"
                    ))? =>
                {
                    hubs.unlink(&service, &name, Unlink::EvenWithDevices).await
                }
                other => other,
            }
            .map_err(|e| match e {
                e @ LinkError::HoldsDevices { .. } => anyhow::anyhow!(
                    "{e}; nothing was changed (repeat with --yes to unlink it anyway)"
                ),
                e @ LinkError::NotLinked { .. } => {
                    anyhow::anyhow!("{e}; see onramp linked-hub list")
                }
                e => e.into(),
            })?;
            println!(
                "Unlinked hub {name} from '{service}'. Devices already on it stay there until they register again."
            );
            Ok(())
        }
    }
}

/// Asks on the terminal; without one (scripts, CI) the answer is no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}

/// A service-level default policy (custom only with a default webhook).
fn service_default_policy(text: &str, has_webhook: bool) -> anyhow::Result<AllocationPolicy> {
    match AllocationPolicy::parse(text) {
        Some(AllocationPolicy::Custom) if !has_webhook => {
            anyhow::bail!("custom as the default policy needs a default webhook: add --webhook-url")
        }
        Some(p) => Ok(p),
        None => anyhow::bail!(
            "allocation policy '{text}' is unknown; use hashed, geoLatency, static or custom"
        ),
    }
}

/// The configuration, the store and the name of the (existing) service `scope` names.
async fn open(
    scope: ServiceScope,
) -> anyhow::Result<(
    Config,
    std::sync::Arc<dyn onramp_core::ports::Store>,
    String,
)> {
    let config = Config::load(&scope.location)?;
    let store = local::open_existing(&config).await?;
    let service = scope.service.unwrap_or_else(|| config.service.name.clone());
    if store.service(&service).await?.is_none() {
        anyhow::bail!("no provisioning service named '{service}'");
    }
    Ok((config, store, service))
}

/// `host[:port]` of the deployment: where its server answers (or answered
/// when it last ran), else where its configuration says it will.
pub fn endpoint(config: &Config) -> String {
    Deployment::read(config)
        .map(|d| d.endpoint)
        .unwrap_or_else(|| local::configured_endpoint(config))
}
