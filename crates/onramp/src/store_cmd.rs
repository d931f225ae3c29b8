//! `onramp store backup|restore`: a consistent copy of a deployment's data
//! directory, taken while it serves, and put back into a stopped one.
//!
//! A backup holds the provisioning store and the companion hub's store
//! (copied online with SQLite's backup API), the master keys that unseal
//! their secrets and the development TLS certificates devices trust; all
//! of it is created readable by its owner alone.

use std::path::Path;

use anyhow::{Context, bail};

use crate::cli::StoreCommand;
use crate::config::Config;

/// The database files of a data directory, by file name.
const DATABASES: [&str; 2] = ["onramp.db", "hub.db"];
/// The folders of secrets a restored deployment needs beside its databases.
const FOLDERS: [&str; 2] = ["keys", "tls"];

pub fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Backup {
            location,
            dir,
            force,
        } => {
            let config = Config::load(&location)?;
            refuse_postgres(&config, "back up")?;
            if !config.store_path().exists() {
                bail!(
                    "no Onramp data in {}: nothing to back up",
                    config.data_dir.display()
                );
            }
            refuse_existing(&dir, force, "a backup")?;
            copy_deployment(&config.data_dir, &dir)?;
            if std::env::var_os("ONRAMP_MASTER_KEY").is_some() {
                eprintln!(
                    "note: the master key comes from ONRAMP_MASTER_KEY, which is not in the backup; \
                     keep it with the backup"
                );
            }
            eprintln!(
                "backed up {} to {}",
                config.data_dir.display(),
                dir.display()
            );
            Ok(())
        }
        StoreCommand::Restore {
            location,
            dir,
            force,
        } => {
            let config = Config::load(&location)?;
            refuse_postgres(&config, "restore")?;
            if !dir.join(DATABASES[0]).exists() {
                bail!(
                    "{} holds no Onramp backup ({} is missing)",
                    dir.display(),
                    DATABASES[0]
                );
            }
            if config.state_file().exists() {
                bail!(
                    "an Onramp server runs on {} ({} exists): stop it first \
                     (if none runs, remove that file)",
                    config.data_dir.display(),
                    config.state_file().display()
                );
            }
            refuse_existing(&config.data_dir, force, "a deployment")?;
            copy_deployment(&dir, &config.data_dir)?;
            eprintln!(
                "restored {} into {}",
                dir.display(),
                config.data_dir.display()
            );
            Ok(())
        }
    }
}

/// Backups copy the embedded SQLite files; a PostgreSQL store is the
/// database's to back up.
fn refuse_postgres(config: &Config, what: &str) -> anyhow::Result<()> {
    if let Some(url) = config.store_url() {
        bail!(
            "this deployment keeps its data in PostgreSQL ({}): {what} that database with its own \
             tools (pg_dump, pg_restore), and the master keys in {} with it",
            onramp_store::postgres::redact(url),
            config.keys_dir().display()
        );
    }
    Ok(())
}

fn refuse_existing(dir: &Path, force: bool, what: &str) -> anyhow::Result<()> {
    if !force && dir.join(DATABASES[0]).exists() {
        bail!(
            "{} already holds {what}; choose another folder, or repeat with --force to overwrite it",
            dir.display()
        );
    }
    Ok(())
}

/// The databases (online, consistent) and the folders of secrets of `from`, into `to`.
fn copy_deployment(from: &Path, to: &Path) -> anyhow::Result<()> {
    onramp_files::own_dir(to).with_context(|| format!("creating {}", to.display()))?;
    for name in DATABASES {
        let source = from.join(name);
        if source.exists() {
            onramp_store::backup::copy_database(&source, &to.join(name))
                .with_context(|| format!("copying {name}"))?;
        }
    }
    for folder in FOLDERS {
        let source = from.join(folder);
        if !source.is_dir() {
            continue;
        }
        let target = to.join(folder);
        onramp_files::own_dir(&target).with_context(|| format!("creating {}", target.display()))?;
        for entry in
            std::fs::read_dir(&source).with_context(|| format!("reading {}", source.display()))?
        {
            let path = entry?.path();
            if path.is_file() {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let name = path.file_name().context("a file without a name")?;
                onramp_files::write(&target.join(name), &bytes)
                    .with_context(|| format!("writing {}", target.join(name).display()))?;
            }
        }
    }
    Ok(())
}
