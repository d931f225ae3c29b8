//! The diagnostics recorder: registration attempts hand their entries to a
//! bounded channel and go on; one task writes them to the store in batches
//! and prunes what the retention no longer keeps. A full channel or a store
//! that fails loses entries (counted in `onramp_diagnostics_dropped_total`),
//! never a registration and never its time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onramp_model::IdScope;
use tokio::sync::{mpsc, oneshot};

use crate::events::DIAGNOSTICS_DROPPED;
use crate::ports::{Clock, DiagnosticEntry, Retention, Store};

/// How the recorder keeps entries.
#[derive(Debug, Clone, Copy)]
pub struct DiagnosticsConfig {
    pub retention: Retention,
    /// Entries waiting to be written, at the most; past it they are dropped.
    pub capacity: usize,
    /// Entries written in one store call, at the most.
    pub batch: usize,
    /// How often entries past the retention are removed.
    pub prune_every: Duration,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            capacity: 10_000,
            batch: 500,
            prune_every: Duration::from_secs(300),
        }
    }
}

/// Whose an entry is: its service, or (for an attempt refused before the
/// service was read) the ID scope the device sent, which the writer looks
/// up. An entry of no service is not kept: nobody could read it.
#[derive(Debug, Clone)]
pub enum Tenant {
    Service(String),
    Scope(String),
}

enum Message {
    Entry(Tenant, Box<DiagnosticEntry>),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// The sending side, and the writer it starts on first use.
pub struct Diagnostics {
    sender: mpsc::Sender<Message>,
    writer: Mutex<Option<Writer>>,
    /// Whether the writer runs: every registration asks, and after the
    /// first the answer is yes without taking the lock.
    started: AtomicBool,
}

struct Writer {
    receiver: mpsc::Receiver<Message>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: DiagnosticsConfig,
}

impl Diagnostics {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: DiagnosticsConfig) -> Self {
        let (sender, receiver) = mpsc::channel(config.capacity.max(1));
        Self {
            sender,
            writer: Mutex::new(Some(Writer {
                receiver,
                store,
                clock,
                config,
            })),
            started: AtomicBool::new(false),
        }
    }

    /// Starts the writer (and its pruning) now rather than at the first
    /// entry. Needs a Tokio runtime; a second call does nothing.
    pub fn start(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            metrics::counter!(DIAGNOSTICS_DROPPED).increment(0);
            tokio::spawn(writer.run());
            self.started.store(true, Ordering::Release);
        }
    }

    /// Hands an entry to the writer without waiting: dropped (and
    /// counted) when the writer is that far behind.
    pub fn record(&self, tenant: Tenant, entry: DiagnosticEntry) {
        self.start();
        if self
            .sender
            .try_send(Message::Entry(tenant, Box::new(entry)))
            .is_err()
        {
            metrics::counter!(DIAGNOSTICS_DROPPED).increment(1);
        }
    }

    /// Waits (at most `within`) until every entry recorded so far is
    /// written; whether that happened in time.
    pub async fn flush(&self, within: Duration) -> bool {
        self.start();
        let (done, written) = oneshot::channel();
        let flushed = async {
            self.sender.send(Message::Flush(done)).await.ok()?;
            written.await.ok()
        };
        matches!(tokio::time::timeout(within, flushed).await, Ok(Some(())))
    }
}

impl Writer {
    async fn run(mut self) {
        let mut prune = tokio::time::interval(self.config.prune_every);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.config.batch);
        loop {
            tokio::select! {
                received = self.receiver.recv_many(&mut batch, self.config.batch.max(1)) => {
                    if received == 0 {
                        return;
                    }
                    self.write(std::mem::take(&mut batch)).await;
                }
                _ = prune.tick() => self.prune().await,
            }
        }
    }

    async fn write(&self, batch: Vec<Message>) {
        let mut entries = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for message in batch {
            match message {
                Message::Entry(tenant, mut entry) => {
                    if let Some(service) = self.service_of(tenant).await {
                        entry.service = service;
                        entries.push(*entry);
                    }
                }
                Message::Flush(done) => flushes.push(done),
            }
        }
        if !entries.is_empty()
            && let Err(e) = self.store.add_diagnostics(&entries).await
        {
            metrics::counter!(DIAGNOSTICS_DROPPED).increment(entries.len() as u64);
            tracing::warn!(
                error = %e,
                lost = entries.len(),
                "diagnostic entries could not be written"
            );
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    async fn service_of(&self, tenant: Tenant) -> Option<String> {
        match tenant {
            Tenant::Service(name) => Some(name),
            Tenant::Scope(scope) => {
                let key = IdScope::parse(&scope).ok()?.key();
                let found = self.store.service_by_scope(&key).await.ok()??;
                Some(found.name)
            }
        }
    }

    async fn prune(&self) {
        let now = self.clock.now();
        match self
            .store
            .prune_diagnostics(self.config.retention, now)
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "old diagnostic entries removed"),
            Err(e) => tracing::warn!(error = %e, "old diagnostic entries could not be removed"),
        }
    }
}
