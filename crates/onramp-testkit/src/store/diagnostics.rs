//! The memory store's diagnostic entries: a list, filtered and sorted on read.

use std::cmp::Reverse;
use std::collections::HashMap;

use async_trait::async_trait;
use onramp_core::ports::{
    DiagnosticEntry, DiagnosticsLog, DiagnosticsQuery, Retention, StoreError, oldest_kept,
};
use onramp_model::UtcTime;

use super::MemoryStore;

#[async_trait]
impl DiagnosticsLog for MemoryStore {
    async fn add_diagnostics(&self, entries: &[DiagnosticEntry]) -> Result<(), StoreError> {
        let mut s = self.lock();
        for entry in entries {
            if s.services.contains_key(&entry.service) {
                s.diagnostics.push(entry.clone());
            }
        }
        Ok(())
    }

    async fn diagnostics(
        &self,
        service: &str,
        query: &DiagnosticsQuery,
    ) -> Result<Vec<DiagnosticEntry>, StoreError> {
        let s = self.lock();
        // Newest first; of entries at one time, the one added last first.
        let mut found: Vec<&DiagnosticEntry> = s
            .diagnostics
            .iter()
            .rev()
            .filter(|d| d.service == service)
            .filter(|d| {
                query
                    .registration
                    .as_ref()
                    .is_none_or(|k| d.registration_id.eq_ignore_ascii_case(k.as_str()))
            })
            .filter(|d| query.outcome.is_none_or(|o| d.outcome == o))
            .filter(|d| query.since.is_none_or(|t| d.time >= t))
            .collect();
        found.sort_by_key(|d| Reverse(d.time));
        Ok(found.into_iter().take(query.top).cloned().collect())
    }

    async fn prune_diagnostics(
        &self,
        retention: Retention,
        now: UtcTime,
    ) -> Result<u64, StoreError> {
        let oldest = oldest_kept(retention, now);
        let mut s = self.lock();
        let before = s.diagnostics.len();
        s.diagnostics.retain(|d| d.time >= oldest);
        // The newest entries of each service, by time then by arrival.
        let mut order: Vec<usize> = (0..s.diagnostics.len()).rev().collect();
        order.sort_by_key(|&i| Reverse(s.diagnostics[i].time));
        let mut kept_of: HashMap<String, u64> = HashMap::new();
        let mut keep = vec![false; s.diagnostics.len()];
        for i in order {
            let count = kept_of.entry(s.diagnostics[i].service.clone()).or_default();
            if *count < retention.max_entries_per_service {
                *count += 1;
                keep[i] = true;
            }
        }
        let mut index = 0;
        s.diagnostics.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        Ok((before - s.diagnostics.len()) as u64)
    }
}
