//! [`MemoryStore`]: the store in a mutex.

mod diagnostics;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use onramp_core::ports::{
    DeviceAt, DiagnosticEntry, GroupPage, HubLatencySample, Page, Precondition, PutRecord, Record,
    RecordAt, RecordKind, RegistrationRecord, RunningOperation, Store, StoreError, StoredRecord,
    check_precondition, client_thumbprints, overtaken, overtaken_by,
};
use onramp_core::tenant::{ProvisioningService, SharedAccessPolicy};
use onramp_model::{ETag, IdKey, IndividualEnrollment, UtcTime};

type Key = (String, String);

#[derive(Default)]
struct State {
    services: BTreeMap<String, ProvisioningService>,
    policies: BTreeMap<Key, SharedAccessPolicy>,
    /// Records by kind, service and key: one ordered map serves every page.
    records: BTreeMap<RecordAt, Record>,
    latencies: BTreeMap<Key, HubLatencySample>,
    /// Running operations by device.
    operations: BTreeMap<DeviceAt, RunningOperation>,
    /// Diagnostic entries in the order they were added.
    diagnostics: Vec<DiagnosticEntry>,
}

impl State {
    /// Removes the device's running operation if it is `operation_id`.
    fn end_operation(&mut self, device: &DeviceAt, operation_id: &str) {
        if self
            .operations
            .get(device)
            .is_some_and(|o| o.operation_id == operation_id)
        {
            self.operations.remove(device);
        }
    }

    /// Records of one kind in the page's service, in key order after its
    /// `after` (the page's limit is the caller's to apply).
    fn page<'a>(
        &'a self,
        kind: RecordKind,
        page: &'a Page,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        let after = page.after.clone().unwrap_or_default();
        let start = RecordAt::new(&page.service, kind, &after);
        self.records
            .range(start..)
            .take_while(move |(at, _)| at.kind == kind && at.service == page.service)
            .filter(move |(at, _)| Some(&at.key) != page.after.as_ref())
            .map(|(_, r)| r)
    }

    /// The records of type `T` in the page's service, in key order after its
    /// `after`, that `keep` accepts.
    fn matching<'a, T: StoredRecord>(
        &'a self,
        page: &'a Page,
        keep: impl Fn(&T) -> bool + 'a,
    ) -> impl Iterator<Item = T> + 'a {
        self.page(T::RECORD_KIND, page)
            .cloned()
            .filter_map(T::from_record)
            .filter(move |r| keep(r))
    }

    fn require_service(&self, service: &str) -> Result<(), StoreError> {
        if self.services.contains_key(service) {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!(
                "no provisioning service '{service}'"
            )))
        }
    }
}

/// A `Store` in a mutex. Same semantics as the real backends.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    etags: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    fn etag(&self) -> ETag {
        ETag::from_opaque(&format!(
            "{:016x}",
            self.etags.fetch_add(1, Ordering::Relaxed) + 1
        ))
    }

    /// Sets what the store owns on a write: a new ETag, and for enrollments,
    /// groups and registrations the creation time (kept from `current`) and
    /// the update time.
    fn stamp(&self, record: &mut Record, current: Option<&Record>, now: UtcTime) {
        let created = |c: Option<UtcTime>| Some(c.unwrap_or(now));
        match record {
            Record::Enrollment(e) => {
                e.created_date_time_utc = created(current.and_then(created_of));
                e.last_updated_date_time_utc = Some(now);
                e.etag = Some(self.etag());
                e.registration_state = None;
            }
            Record::EnrollmentGroup(g) => {
                g.created_date_time_utc = created(current.and_then(created_of));
                g.last_updated_date_time_utc = Some(now);
                g.etag = Some(self.etag());
            }
            Record::Registration(r) => {
                r.state.created_date_time_utc = created(current.and_then(created_of));
                r.state.last_updated_date_time_utc = Some(now);
                r.state.etag = Some(self.etag());
            }
            Record::CaCertificate(c) => c.etag = Some(self.etag()),
            Record::LinkedHub(_) | Record::TpmChallenge(_) => {}
        }
    }
}

fn k(service: &str, key: &str) -> Key {
    (service.to_owned(), key.to_owned())
}

fn created_of(record: &Record) -> Option<UtcTime> {
    match record {
        Record::Enrollment(e) => e.created_date_time_utc,
        Record::EnrollmentGroup(g) => g.created_date_time_utc,
        Record::Registration(r) => r.state.created_date_time_utc,
        Record::CaCertificate(_) | Record::LinkedHub(_) | Record::TpmChallenge(_) => None,
    }
}

/// The ETag a condition is checked against; linked hubs have none, and
/// match only `*`.
fn etag_of(record: &Record) -> Option<ETag> {
    match record {
        Record::Enrollment(e) => e.etag.clone(),
        Record::EnrollmentGroup(g) => g.etag.clone(),
        Record::Registration(r) => r.state.etag.clone(),
        Record::CaCertificate(c) => c.etag.clone(),
        Record::LinkedHub(_) | Record::TpmChallenge(_) => Some(ETag::from_raw("*")),
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_service(
        &self,
        service: &ProvisioningService,
        policies: &[SharedAccessPolicy],
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.services.contains_key(&service.name)
            || s.services
                .values()
                .any(|x| x.id_scope.key() == service.id_scope.key())
        {
            return Err(StoreError::AlreadyExists(format!(
                "provisioning service '{}' or its ID scope already exists",
                service.name
            )));
        }
        s.services.insert(service.name.clone(), service.clone());
        for p in policies {
            s.policies.insert(k(&service.name, &p.name), p.clone());
        }
        Ok(())
    }
    async fn service(&self, name: &str) -> Result<Option<ProvisioningService>, StoreError> {
        Ok(self.lock().services.get(name).cloned())
    }
    async fn service_by_scope(
        &self,
        id_scope_key: &IdKey,
    ) -> Result<Option<ProvisioningService>, StoreError> {
        Ok(self
            .lock()
            .services
            .values()
            .find(|s| s.id_scope.key() == *id_scope_key)
            .cloned())
    }
    async fn services(&self) -> Result<Vec<ProvisioningService>, StoreError> {
        Ok(self.lock().services.values().cloned().collect())
    }
    async fn update_service(&self, service: &ProvisioningService) -> Result<(), StoreError> {
        let mut s = self.lock();
        match s.services.get_mut(&service.name) {
            Some(x) => {
                *x = service.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound(format!(
                "no provisioning service '{}'",
                service.name
            ))),
        }
    }
    async fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let existed = s.services.remove(name).is_some();
        s.policies.retain(|(svc, _), _| svc != name);
        s.records.retain(|at, _| at.service != name);
        s.operations.retain(|device, _| device.service != name);
        s.diagnostics.retain(|d| d.service != name);
        Ok(existed)
    }
    async fn policies(&self, service: &str) -> Result<Vec<SharedAccessPolicy>, StoreError> {
        Ok(self
            .lock()
            .policies
            .iter()
            .filter(|((svc, _), _)| svc == service)
            .map(|(_, p)| p.clone())
            .collect())
    }
    async fn put_policy(
        &self,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.require_service(service)?;
        s.policies.insert(k(service, &policy.name), policy.clone());
        Ok(())
    }
    async fn delete_policy(&self, service: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self.lock().policies.remove(&k(service, name)).is_some())
    }
    async fn policies_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, SharedAccessPolicy)>, StoreError> {
        Ok(self
            .lock()
            .policies
            .iter()
            .filter(|((_, n), _)| n == name)
            .map(|((svc, _), p)| (svc.clone(), p.clone()))
            .collect())
    }
    async fn record(&self, at: &RecordAt) -> Result<Option<Record>, StoreError> {
        Ok(self.lock().records.get(at).cloned())
    }
    async fn put_record(&self, service: &str, put: PutRecord) -> Result<Record, StoreError> {
        let PutRecord {
            mut record,
            condition,
            now,
        } = put;
        let mut s = self.lock();
        s.require_service(service)?;
        let at = RecordAt::of(service, &record);
        let current = s.records.get(&at);
        check_precondition(
            current.and_then(etag_of).as_ref(),
            &condition,
            &format!("{:?} '{}'", at.kind, at.key),
        )?;
        if let (Record::Registration(new), Some(Record::Registration(stored))) = (&record, current)
            && overtaken_by(&new.operation_id, &stored.operation_id)
        {
            return Err(overtaken(&new.state.registration_id));
        }
        self.stamp(&mut record, current, now);
        if let Record::Registration(r) = &record {
            s.end_operation(&DeviceAt::new(service, &at.key), &r.operation_id);
        }
        s.records.insert(at, record.clone());
        Ok(record)
    }
    async fn delete_record(
        &self,
        at: &RecordAt,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        let Some(current) = s.records.get(at) else {
            return Err(StoreError::NotFound(at.missing()));
        };
        let what = format!("{:?} '{}'", at.kind, at.key);
        check_precondition(etag_of(current).as_ref(), &condition, &what)?;
        s.records.remove(at);
        Ok(())
    }
    async fn put_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.require_service(service)?;
        let device = op.device(service);
        // The newest operation of a device stays.
        if s.operations
            .get(&device)
            .is_some_and(|o| o.operation_id != op.operation_id && o.started > op.started)
        {
            return Ok(());
        }
        s.operations.insert(device, op.clone());
        Ok(())
    }
    async fn operation(&self, device: &DeviceAt) -> Result<Option<RunningOperation>, StoreError> {
        Ok(self.lock().operations.get(device).cloned())
    }
    async fn end_operation(&self, service: &str, op: &RunningOperation) -> Result<(), StoreError> {
        let device = op.device(service);
        self.lock().end_operation(&device, &op.operation_id);
        Ok(())
    }
    async fn records(&self, kind: RecordKind, page: &Page) -> Result<Vec<Record>, StoreError> {
        let s = self.lock();
        Ok(s.page(kind, page).take(page.limit).cloned().collect())
    }
    async fn enrollments_by_thumbprint(
        &self,
        service: &str,
        sha256: &str,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        let vouches = |e: &IndividualEnrollment| {
            client_thumbprints(e.attestation.as_ref())
                .iter()
                .any(|t| t.eq_ignore_ascii_case(sha256))
        };
        let every = Page::all(service);
        Ok(self.lock().matching(&every, vouches).collect())
    }
    async fn registrations_of_group(
        &self,
        group: &GroupPage,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let in_group = |r: &RegistrationRecord| {
            r.enrollment_group_id
                .as_deref()
                .is_some_and(|g| IdKey::of(g) == group.group_key)
        };
        let page = &group.page;
        Ok(self
            .lock()
            .matching(page, in_group)
            .take(page.limit)
            .collect())
    }
    async fn count_devices_on_hub(&self, service: &str, hub: &str) -> Result<u64, StoreError> {
        let on_hub = |r: &RegistrationRecord| {
            r.current_placement()
                .is_some_and(|p| p.hub.eq_ignore_ascii_case(hub.trim()))
        };
        let every = Page::all(service);
        Ok(self.lock().matching(&every, on_hub).count() as u64)
    }
    async fn record_hub_latency(&self, sample: &HubLatencySample) -> Result<(), StoreError> {
        self.lock().latencies.insert(
            (sample.node.clone(), sample.hub.to_ascii_lowercase()),
            sample.clone(),
        );
        Ok(())
    }
    async fn hub_latencies(&self) -> Result<Vec<HubLatencySample>, StoreError> {
        Ok(self.lock().latencies.values().cloned().collect())
    }
}
