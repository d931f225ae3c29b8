//! `onramp store backup|restore`: a consistent copy of a deployment's data
//! directory, taken while it serves, and put back into a stopped one; and
//! `onramp store migrate`: an embedded store copied into PostgreSQL.
//!
//! A backup holds the provisioning store and the companion hub's store
//! (copied online with SQLite's backup API), the master keys that unseal
//! their secrets and the development TLS certificates devices trust; all
//! of it is created readable by its owner alone.

use std::path::Path;

use anyhow::{Context, bail};
use onramp_core::ports::{Page, Precondition, PutRecord, Record, RecordKind, Store};
use onramp_model::{IdKey, UtcTime};

use crate::cli::{Location, StoreCommand};
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
            let config = sqlite_config(&location, "back up")?;
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
            let config = sqlite_config(&location, "restore")?;
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
        StoreCommand::Migrate { from, to } => migrate(&from, &to),
    }
}

/// Backups copy the embedded SQLite files; a PostgreSQL store is the
/// database's to back up.
/// The deployment's configuration, which must keep its data in SQLite:
/// `what` (back up, restore) is refused for PostgreSQL.
fn sqlite_config(location: &Location, what: &str) -> anyhow::Result<Config> {
    let config = Config::load(location)?;
    if let Some(url) = config.store_url() {
        bail!(
            "this deployment keeps its data in PostgreSQL ({}): {what} that database with its own \
             tools (pg_dump, pg_restore), and the master keys in {} with it",
            onramp_store::postgres::redact(url),
            config.keys_dir().display()
        );
    }
    Ok(config)
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

/// The kinds of record a service owns that a migration copies, in an order
/// where nothing refers to what is not there yet.
const COPIED: [RecordKind; 6] = [
    RecordKind::LinkedHub,
    RecordKind::CaCertificate,
    RecordKind::EnrollmentGroup,
    RecordKind::Enrollment,
    RecordKind::Registration,
    RecordKind::TpmChallenge,
];

/// Records read from the source at a time.
const PAGE: usize = 500;

/// `onramp store migrate`: the embedded store of `from` into the empty
/// PostgreSQL database `to`, through the `Store` trait.
fn migrate(from: &Path, to: &str) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(migrate_stores(from, to))
    })
}

async fn migrate_stores(from: &Path, to: &str) -> anyhow::Result<()> {
    use onramp_store::SqliteStore;
    use onramp_store::postgres::{PgOptions, PgStore, is_postgres_url, redact};
    use onramp_store::sqlite::SqliteOptions;

    if !is_postgres_url(to) {
        bail!(
            "--to must be a PostgreSQL URL (postgres://user@host:5432/database), not {}",
            redact(to)
        );
    }
    let db = from.join(DATABASES[0]);
    if !db.exists() {
        bail!(
            "no Onramp store in {} ({} is missing): --from names a data directory",
            from.display(),
            db.display()
        );
    }
    if from.join("serve.json").exists() {
        bail!(
            "an Onramp server runs on {} (serve.json exists): stop it first, so that nothing \
             changes while the store is copied (if none runs, remove that file)",
            from.display()
        );
    }
    let keys = from.join(FOLDERS[0]);
    if std::env::var_os("ONRAMP_MASTER_KEY").is_none() && !keys.is_dir() {
        bail!(
            "no master keys in {} and ONRAMP_MASTER_KEY is not set: the store's secrets cannot be opened",
            keys.display()
        );
    }
    let sealer = crate::local::sealer_in(&keys)?;
    let source = SqliteStore::open(&db, sealer.clone(), SqliteOptions::default())
        .with_context(|| format!("opening the store {}", db.display()))?;
    let target = PgStore::open(to, sealer, PgOptions::default())
        .await
        .with_context(|| format!("opening the PostgreSQL store {}", redact(to)))?;
    let present = target.services().await?;
    if !present.is_empty() {
        bail!(
            "{} already holds {} provisioning service(s) ({}): migrate only into an empty database",
            redact(to),
            present.len(),
            present
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    // What there is to copy, counted first: the progress bar's length, and
    // what the target must hold after.
    let services = source.services().await?;
    let mut expected = Counts::default();
    for service in &services {
        expected.policies += source.policies(&service.name).await?.len();
        for kind in COPIED {
            *expected.records.entry(kind).or_default() +=
                count(&source, &service.name, kind).await?;
        }
    }
    let total: usize = expected.records.values().sum::<usize>() + services.len();
    let bar = crate::progress::bar(total as u64, "services");

    for service in &services {
        bar.set_message("services");
        let policies = source.policies(&service.name).await?;
        target
            .create_service(service, &policies)
            .await
            .with_context(|| format!("copying provisioning service '{}'", service.name))?;
        bar.inc(1);
        for kind in COPIED {
            bar.set_message(noun(kind));
            let mut after: Option<IdKey> = None;
            loop {
                let page = Page::new(&service.name, after.as_ref(), PAGE);
                let page = source.records(kind, &page).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.key());
                let full = page.len() == PAGE;
                for record in page {
                    copy_record(&target, &service.name, record)
                        .await
                        .with_context(|| {
                            format!("copying a {} of '{}'", noun(kind), service.name)
                        })?;
                    bar.inc(1);
                }
                if !full {
                    break;
                }
            }
        }
    }
    bar.finish_with_message("copied");

    // The target holds what the source held.
    let mut found = Counts::default();
    let copied = target.services().await?;
    for service in &copied {
        found.policies += target.policies(&service.name).await?.len();
        for kind in COPIED {
            *found.records.entry(kind).or_default() += count(&target, &service.name, kind).await?;
        }
    }
    if copied.len() != services.len() || found != expected {
        bail!(
            "the copy differs from the source: {} service(s), {} there, {} here; \
             the database is left as it is for inspection (drop it before trying again)",
            services.len(),
            expected.describe(),
            found.describe()
        );
    }
    println!(
        "migrated {} service(s) from {} to {}: {}",
        services.len(),
        from.display(),
        redact(to),
        expected.describe()
    );
    println!(
        "ETags are new; start the nodes with --store-url (or [store] url) and the same master keys"
    );
    Ok(())
}

/// A record as its source had it: written once at its creation time and,
/// when it changed since, again at its last update, so the target keeps
/// both times (the store sets them from the time of the write).
async fn copy_record(
    target: &dyn Store,
    service: &str,
    record: Record,
) -> Result<(), onramp_core::ports::StoreError> {
    let (created, updated) = times(&record);
    let first = created.or(updated).unwrap_or_else(UtcTime::now);
    let put = |record, now| PutRecord {
        record,
        condition: Precondition::None,
        now,
    };
    target
        .put_record(service, put(record.clone(), first))
        .await?;
    if let Some(updated) = updated
        && updated != first
    {
        target.put_record(service, put(record, updated)).await?;
    }
    Ok(())
}

/// A record's creation and last update times, where it has them.
fn times(record: &Record) -> (Option<UtcTime>, Option<UtcTime>) {
    match record {
        Record::Enrollment(e) => (e.created_date_time_utc, e.last_updated_date_time_utc),
        Record::EnrollmentGroup(g) => (g.created_date_time_utc, g.last_updated_date_time_utc),
        Record::Registration(r) => (
            r.state.created_date_time_utc,
            r.state.last_updated_date_time_utc,
        ),
        Record::CaCertificate(_) | Record::LinkedHub(_) | Record::TpmChallenge(_) => (None, None),
    }
}

/// How many records of `kind` a service holds.
async fn count(store: &dyn Store, service: &str, kind: RecordKind) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut after: Option<IdKey> = None;
    loop {
        let page = Page::new(service, after.as_ref(), PAGE);
        let page = store.records(kind, &page).await?;
        n += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.key()),
            _ => return Ok(n),
        }
    }
}

fn noun(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Enrollment => "enrollments",
        RecordKind::EnrollmentGroup => "groups",
        RecordKind::Registration => "registrations",
        RecordKind::CaCertificate => "CA certificates",
        RecordKind::LinkedHub => "linked hubs",
        RecordKind::TpmChallenge => "TPM challenges",
    }
}

/// What a store holds, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    policies: usize,
    records: std::collections::BTreeMap<RecordKind, usize>,
}

impl Counts {
    fn describe(&self) -> String {
        let mut parts = vec![format!("{} policies", self.policies)];
        for (kind, n) in &self.records {
            parts.push(format!("{n} {}", noun(*kind)));
        }
        parts.join(", ")
    }
}
