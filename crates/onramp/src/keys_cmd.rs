//! `onramp keys list|rotate|retire`: the master key ring that seals secrets
//! at rest, changed while servers run.
//!
//! A rotation adds a key to `<data>/keys`, makes it the one that seals, and
//! re-seals every secret of the provisioning store (SQLite or PostgreSQL)
//! and of the companion hub's store under it, a batch per transaction. A
//! server reading the same folder takes up the new key within
//! `seal::RELOAD_INTERVAL` and opens values sealed under it at once, so
//! nothing stops. Nothing is ever unreadable: a rotation stopped at any
//! point leaves values under the old key or the new, and running it again
//! (while some value is still under an older key) continues it instead of
//! adding another key. With `ONRAMP_MASTER_KEY` the ring is the variable's
//! list, first key sealing; a rotation then only re-seals (README says how).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use onramp_store::reseal::{KeyCounts, Page, Resealable};
use onramp_store::{Sealer, keyring, seal};

use crate::cli::KeysCommand;
use crate::config::Config;
use crate::local;
use crate::output::{Format, Output};

/// Passes over the stores before a rotation gives up on values that keep
/// arriving under an older key.
const MAX_PASSES: usize = 10;

/// A master key as `onramp keys list` shows it.
#[derive(serde::Serialize)]
struct KeyRow {
    key: String,
    secrets: u64,
    status: &'static str,
}

pub async fn run(command: KeysCommand, output: Output) -> anyhow::Result<()> {
    match command {
        KeysCommand::List(location) => {
            let keys = Keys::open(&Config::load(&location)?).await?;
            let counts = keys.counts().await?;
            let active = keys.sealer.active_key_id();
            let mut rows: Vec<KeyRow> = keys
                .sealer
                .key_ids()
                .into_iter()
                .map(|id| KeyRow {
                    secrets: counts.get(&id).copied().unwrap_or(0),
                    status: if id == active { "active" } else { "" },
                    key: id,
                })
                .collect();
            rows.extend(
                counts
                    .iter()
                    .filter(|(id, _)| !keys.has(id))
                    .map(|(id, n)| KeyRow {
                        key: id.clone(),
                        secrets: *n,
                        status: "missing from the key ring",
                    }),
            );
            output.or(Format::Table).list(&rows)
        }
        KeysCommand::Rotate {
            location,
            batch_size,
            pause_ms,
        } => {
            let keys = Keys::open(&Config::load(&location)?).await?;
            keys.rotate(batch_size.max(1), Duration::from_millis(pause_ms))
                .await
        }
        KeysCommand::Retire { location, id } => {
            let keys = Keys::open(&Config::load(&location)?).await?;
            keys.retire(&id).await
        }
    }
}

/// The ring and every store whose secrets it seals.
struct Keys {
    sealer: Arc<Sealer>,
    stores: Vec<Arc<dyn Resealable>>,
}

impl Keys {
    async fn open(config: &Config) -> anyhow::Result<Self> {
        if config.store_url().is_none() && !config.store_path().exists() {
            bail!(
                "no Onramp data in {}: point --data-dir / --config at the deployment",
                config.data_dir.display()
            );
        }
        let sealer = local::sealer(config)?;
        let (_, store) = local::open_sealed(config, sealer.clone()).await?;
        let mut stores = vec![store];
        if config.hub_store_path().exists() {
            let hub =
                onramp_hub::companion::HubStore::open(&config.hub_store_path(), sealer.clone())
                    .with_context(|| format!("opening {}", config.hub_store_path().display()))?;
            stores.push(Arc::new(hub));
        }
        Ok(Self { sealer, stores })
    }

    fn has(&self, id: &str) -> bool {
        self.sealer.key_ids().iter().any(|k| k == id)
    }

    /// Sealed values by key ID, over every store.
    async fn counts(&self) -> anyhow::Result<KeyCounts> {
        let mut total = BTreeMap::new();
        for store in &self.stores {
            let counts = store
                .key_counts()
                .await
                .with_context(|| format!("counting the secrets of {}", store.describe()))?;
            for (id, n) in counts {
                *total.entry(id).or_default() += n;
            }
        }
        Ok(total)
    }

    /// Values sealed under a key other than the active one.
    async fn stale(&self) -> anyhow::Result<u64> {
        let active = self.sealer.active_key_id();
        Ok(self
            .counts()
            .await?
            .iter()
            .filter(|(id, _)| **id != active)
            .map(|(_, n)| n)
            .sum())
    }

    async fn rotate(&self, batch_size: usize, pause: Duration) -> anyhow::Result<()> {
        let stale = self.stale().await?;
        if stale > 0 {
            eprintln!(
                "{stale} secret(s) are still sealed under an older key: continuing the rotation to '{}'",
                self.sealer.active_key_id()
            );
        } else if let Some(dir) = self.sealer.dir() {
            let old = self.sealer.active_key_id();
            let id =
                keyring::add(dir).with_context(|| format!("adding a key to {}", dir.display()))?;
            keyring::activate(dir, &id)
                .with_context(|| format!("making '{id}' active in {}", dir.display()))?;
            self.sealer
                .reload()
                .with_context(|| format!("reading {} again", dir.display()))?;
            eprintln!("added master key '{id}'; it seals from now on (was '{old}')");
        } else {
            bail!(
                "every secret is sealed under the first key of ONRAMP_MASTER_KEY already: to rotate, \
                 put a new key in front (ONRAMP_MASTER_KEY=new,old), restart the servers with it, \
                 then run `onramp keys rotate` again"
            );
        }
        // Servers following the folder seal under the new key within one
        // reload interval of the switch; values they sealed before that are
        // caught by a later pass.
        let settled = Instant::now() + 2 * seal::RELOAD_INTERVAL;
        let started = Instant::now();
        let mut resealed = 0;
        for pass in 1..=MAX_PASSES {
            let total: u64 = self.counts().await?.values().sum();
            let bar = crate::progress::bar(total, "re-sealing");
            for store in &self.stores {
                for column in store.sealed_columns() {
                    let mut after = None;
                    loop {
                        let batch = store
                            .reseal_batch(Page {
                                column,
                                after,
                                limit: batch_size,
                            })
                            .await
                            .with_context(|| {
                                format!("re-sealing {} of {}", column.table, store.describe())
                            })?;
                        bar.inc(batch.scanned as u64);
                        resealed += batch.resealed;
                        let Some(next) = batch.next else { break };
                        after = Some(next);
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            }
            bar.finish_and_clear();
            if let Some(wait) = settled.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let stale = self.stale().await?;
            if stale == 0 {
                println!(
                    "re-sealed {resealed} secret(s) under '{}' in {:.1} s ({pass} pass(es)); \
                     retire the old key with `onramp keys retire ID` (`onramp keys list` shows them)",
                    self.sealer.active_key_id(),
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            eprintln!("{stale} secret(s) were written under an older key meanwhile; another pass");
        }
        bail!(
            "secrets keep arriving under an older key after {MAX_PASSES} passes: a server seals with \
             a key ring whose active key is not '{}' (another node's keys folder?); give every \
             node the same keys, then run `onramp keys rotate` again",
            self.sealer.active_key_id()
        )
    }

    async fn retire(&self, id: &str) -> anyhow::Result<()> {
        if !self.has(id) {
            bail!(
                "no master key '{id}' in the key ring (it holds {})",
                self.sealer.key_ids().join(", ")
            );
        }
        if id == self.sealer.active_key_id() {
            bail!(
                "'{id}' is the active master key: run `onramp keys rotate` first, then retire it"
            );
        }
        let n = self.counts().await?.get(id).copied().unwrap_or(0);
        if n > 0 {
            bail!(
                "{n} secret(s) are still sealed under master key '{id}': run `onramp keys rotate` \
                 (it continues an unfinished rotation), then retire it"
            );
        }
        match self.sealer.dir() {
            Some(dir) => {
                keyring::remove(dir, id)
                    .with_context(|| format!("removing '{id}' from {}", dir.display()))?;
                println!("retired master key '{id}': nothing was sealed under it");
            }
            None => println!(
                "nothing is sealed under master key '{id}': remove it from ONRAMP_MASTER_KEY \
                 (and restart the servers with the shorter list)"
            ),
        }
        Ok(())
    }
}
