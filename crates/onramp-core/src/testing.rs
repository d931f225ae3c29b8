//! In-memory fakes of the ports, for tests. They never ship as a backend.
//!
//! [`conformance`] is the store conformance suite: every `Store`
//! implementation (and [`MemoryStore`], so that engine tests run on a
//! faithful fake) must pass it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use onramp_model::{ETag, EnrollmentGroup, IndividualEnrollment, UtcTime};

use crate::ports::{
    AllocationWebhook, Clock, DeviceIdentity, HubError, HubLatency, HubLatencySample, HubRegistry,
    Placement, Precondition, RegistrationRecord, Store, StoreError, TwinSetup, TwinSnapshot,
    WebhookError, WebhookTarget, check_precondition, client_thumbprints,
};
use crate::tenant::{CaCertificate, LinkedHub, ProvisioningService, SharedAccessPolicy};
use onramp_model::allocation::{AllocationRequest, AllocationResponse};

type Key = (String, String);

#[derive(Default)]
struct State {
    services: BTreeMap<String, ProvisioningService>,
    policies: BTreeMap<Key, SharedAccessPolicy>,
    hubs: BTreeMap<Key, LinkedHub>,
    enrollments: BTreeMap<Key, IndividualEnrollment>,
    groups: BTreeMap<Key, EnrollmentGroup>,
    registrations: BTreeMap<Key, RegistrationRecord>,
    cas: BTreeMap<Key, CaCertificate>,
    latencies: BTreeMap<Key, HubLatencySample>,
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
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn etag(&self) -> ETag {
        ETag::from_opaque(&format!(
            "{:016x}",
            self.etags.fetch_add(1, Ordering::Relaxed) + 1
        ))
    }
}

fn k(service: &str, key: &str) -> Key {
    (service.to_owned(), key.to_owned())
}

fn page<T: Clone>(
    map: &BTreeMap<Key, T>,
    service: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<T> {
    map.range(k(service, after.unwrap_or(""))..)
        .filter(|((s, key), _)| s == service && Some(key.as_str()) != after)
        .take(limit)
        .map(|(_, v)| v.clone())
        .collect()
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
        id_scope_key: &str,
    ) -> Result<Option<ProvisioningService>, StoreError> {
        Ok(self
            .lock()
            .services
            .values()
            .find(|s| s.id_scope.key().as_str() == id_scope_key)
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
        s.hubs.retain(|(svc, _), _| svc != name);
        s.enrollments.retain(|(svc, _), _| svc != name);
        s.groups.retain(|(svc, _), _| svc != name);
        s.registrations.retain(|(svc, _), _| svc != name);
        s.cas.retain(|(svc, _), _| svc != name);
        Ok(existed)
    }
    async fn policies(&self, service: &str) -> Result<Vec<SharedAccessPolicy>, StoreError> {
        Ok(page(&self.lock().policies, service, None, usize::MAX))
    }
    async fn put_policy(
        &self,
        service: &str,
        policy: &SharedAccessPolicy,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        if !s.services.contains_key(service) {
            return Err(StoreError::NotFound(format!(
                "no provisioning service '{service}'"
            )));
        }
        s.policies.insert(k(service, &policy.name), policy.clone());
        Ok(())
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
    async fn linked_hubs(&self, service: &str) -> Result<Vec<LinkedHub>, StoreError> {
        Ok(page(&self.lock().hubs, service, None, usize::MAX))
    }
    async fn put_linked_hub(&self, service: &str, hub: &LinkedHub) -> Result<(), StoreError> {
        let mut s = self.lock();
        if !s.services.contains_key(service) {
            return Err(StoreError::NotFound(format!(
                "no provisioning service '{service}'"
            )));
        }
        s.hubs
            .insert(k(service, &hub.name.to_ascii_lowercase()), hub.clone());
        Ok(())
    }
    async fn delete_linked_hub(&self, service: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .hubs
            .remove(&k(service, &name.to_ascii_lowercase()))
            .is_some())
    }

    async fn enrollment(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<IndividualEnrollment>, StoreError> {
        Ok(self.lock().enrollments.get(&k(service, id_key)).cloned())
    }
    async fn put_enrollment(
        &self,
        service: &str,
        enrollment: &IndividualEnrollment,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<IndividualEnrollment, StoreError> {
        let mut s = self.lock();
        let key = k(service, &enrollment.registration_id.to_ascii_lowercase());
        let current = s.enrollments.get(&key);
        check_precondition(
            current.and_then(|c| c.etag.as_ref()),
            &condition,
            &format!("enrollment '{}'", enrollment.registration_id),
        )?;
        let mut stored = enrollment.clone();
        stored.created_date_time_utc =
            Some(current.and_then(|c| c.created_date_time_utc).unwrap_or(now));
        stored.last_updated_date_time_utc = Some(now);
        stored.etag = Some(self.etag());
        stored.registration_state = None;
        s.enrollments.insert(key, stored.clone());
        Ok(stored)
    }
    async fn delete_enrollment(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        let key = k(service, id_key);
        let Some(current) = s.enrollments.get(&key) else {
            return Err(StoreError::NotFound(format!(
                "no individual enrollment has registration ID '{id_key}'"
            )));
        };
        check_precondition(
            current.etag.as_ref(),
            &condition,
            &format!("enrollment '{id_key}'"),
        )?;
        s.enrollments.remove(&key);
        Ok(())
    }
    async fn enrollments_by_thumbprint(
        &self,
        service: &str,
        sha256: &str,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        Ok(page(&self.lock().enrollments, service, None, usize::MAX)
            .into_iter()
            .filter(|e| {
                client_thumbprints(e)
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(sha256))
            })
            .collect())
    }
    async fn ca_certificate(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<CaCertificate>, StoreError> {
        Ok(self
            .lock()
            .cas
            .get(&k(service, &name.to_ascii_lowercase()))
            .cloned())
    }
    async fn ca_certificates(&self, service: &str) -> Result<Vec<CaCertificate>, StoreError> {
        Ok(page(&self.lock().cas, service, None, usize::MAX))
    }
    async fn put_ca_certificate(
        &self,
        service: &str,
        certificate: &CaCertificate,
        condition: Precondition,
    ) -> Result<CaCertificate, StoreError> {
        let mut s = self.lock();
        if !s.services.contains_key(service) {
            return Err(StoreError::NotFound(format!(
                "no provisioning service '{service}'"
            )));
        }
        let key = k(service, &certificate.name.to_ascii_lowercase());
        check_precondition(
            s.cas.get(&key).and_then(|c| c.etag.as_ref()),
            &condition,
            &format!("CA certificate '{}'", certificate.name),
        )?;
        let mut stored = certificate.clone();
        stored.etag = Some(self.etag());
        s.cas.insert(key, stored.clone());
        Ok(stored)
    }
    async fn delete_ca_certificate(
        &self,
        service: &str,
        name: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        let key = k(service, &name.to_ascii_lowercase());
        let Some(current) = s.cas.get(&key) else {
            return Err(StoreError::NotFound(format!(
                "no CA certificate is named '{name}'"
            )));
        };
        check_precondition(
            current.etag.as_ref(),
            &condition,
            &format!("CA certificate '{name}'"),
        )?;
        s.cas.remove(&key);
        Ok(())
    }
    async fn enrollments(
        &self,
        service: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        Ok(page(&self.lock().enrollments, service, after_key, limit))
    }

    async fn enrollment_group(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<EnrollmentGroup>, StoreError> {
        Ok(self.lock().groups.get(&k(service, id_key)).cloned())
    }
    async fn put_enrollment_group(
        &self,
        service: &str,
        group: &EnrollmentGroup,
        condition: Precondition,
        now: UtcTime,
    ) -> Result<EnrollmentGroup, StoreError> {
        let mut s = self.lock();
        let key = k(service, &group.enrollment_group_id.to_ascii_lowercase());
        let current = s.groups.get(&key);
        check_precondition(
            current.and_then(|c| c.etag.as_ref()),
            &condition,
            &format!("enrollment group '{}'", group.enrollment_group_id),
        )?;
        let mut stored = group.clone();
        stored.created_date_time_utc =
            Some(current.and_then(|c| c.created_date_time_utc).unwrap_or(now));
        stored.last_updated_date_time_utc = Some(now);
        stored.etag = Some(self.etag());
        s.groups.insert(key, stored.clone());
        Ok(stored)
    }
    async fn delete_enrollment_group(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        let key = k(service, id_key);
        let Some(current) = s.groups.get(&key) else {
            return Err(StoreError::NotFound(format!(
                "no enrollment group has ID '{id_key}'"
            )));
        };
        check_precondition(
            current.etag.as_ref(),
            &condition,
            &format!("enrollment group '{id_key}'"),
        )?;
        s.groups.remove(&key);
        Ok(())
    }
    async fn enrollment_groups(
        &self,
        service: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EnrollmentGroup>, StoreError> {
        Ok(page(&self.lock().groups, service, after_key, limit))
    }

    async fn registration(
        &self,
        service: &str,
        id_key: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        Ok(self.lock().registrations.get(&k(service, id_key)).cloned())
    }
    async fn put_registration(
        &self,
        service: &str,
        record: &RegistrationRecord,
        now: UtcTime,
    ) -> Result<RegistrationRecord, StoreError> {
        let mut s = self.lock();
        let key = k(service, &record.state.registration_id.to_ascii_lowercase());
        let created = s
            .registrations
            .get(&key)
            .and_then(|c| c.state.created_date_time_utc)
            .unwrap_or(now);
        let mut stored = record.clone();
        stored.state.created_date_time_utc = Some(created);
        stored.state.last_updated_date_time_utc = Some(now);
        stored.state.etag = Some(self.etag());
        s.registrations.insert(key, stored.clone());
        Ok(stored)
    }
    async fn delete_registration(
        &self,
        service: &str,
        id_key: &str,
        condition: Precondition,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        let key = k(service, id_key);
        let Some(current) = s.registrations.get(&key) else {
            return Err(StoreError::NotFound(format!(
                "no device has registered with registration ID '{id_key}'"
            )));
        };
        check_precondition(
            current.state.etag.as_ref(),
            &condition,
            &format!("registration '{id_key}'"),
        )?;
        s.registrations.remove(&key);
        Ok(())
    }
    async fn registrations_of_group(
        &self,
        service: &str,
        group_key: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        Ok(
            page(&self.lock().registrations, service, after_key, usize::MAX)
                .into_iter()
                .filter(|r| {
                    r.enrollment_group_id
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .as_deref()
                        == Some(group_key)
                })
                .take(limit)
                .collect(),
        )
    }
    async fn count_devices_on_hub(&self, service: &str, hub: &str) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .registrations
            .iter()
            .filter(|((s, _), r)| {
                s == service
                    && r.current_placement()
                        .is_some_and(|p| p.hub.eq_ignore_ascii_case(hub))
            })
            .count() as u64)
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

/// A hub registry that remembers what it was asked and can be told to fail.
/// Twins behave as in a hub: set on registration, kept, or carried over.
#[derive(Default)]
pub struct RecordingHubs {
    pub devices: Mutex<BTreeMap<(String, String), DeviceIdentity>>,
    pub twins: Mutex<BTreeMap<(String, String), TwinSnapshot>>,
    pub calls: AtomicU64,
    pub fail_with: Mutex<Option<HubError>>,
}

impl RecordingHubs {
    pub fn device(&self, hub: &str, device_id: &str) -> Option<DeviceIdentity> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(hub.to_owned(), device_id.to_owned()))
            .cloned()
    }

    pub fn count(&self) -> usize {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn fail(&self, error: Option<HubError>) {
        *self.fail_with.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// The twin a hub holds for a device.
    pub fn twin_of(&self, hub: &str, device_id: &str) -> Option<TwinSnapshot> {
        self.twins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(hub.to_owned(), device_id.to_owned()))
            .cloned()
    }

    /// What a device reports through its hub.
    pub fn report(&self, hub: &str, device_id: &str, reported: serde_json::Value) {
        if let (Some(t), serde_json::Value::Object(m)) = (
            self.twins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&(hub.to_owned(), device_id.to_owned())),
            reported,
        ) {
            t.reported.extend(m);
        }
    }

    fn failure(&self) -> Option<HubError> {
        self.fail_with
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl HubRegistry for RecordingHubs {
    async fn register_device(
        &self,
        hub: &LinkedHub,
        device: &DeviceIdentity,
    ) -> Result<(), HubError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let key = (hub.name.clone(), device.device_id.clone());
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), device.clone());
        let mut twins = self.twins.lock().unwrap_or_else(|e| e.into_inner());
        match &device.twin {
            TwinSetup::Initial(t) => {
                twins.insert(
                    key,
                    TwinSnapshot {
                        tags: t.tags.clone().unwrap_or_default(),
                        desired: t.desired().cloned().unwrap_or_default(),
                        reported: Default::default(),
                    },
                );
            }
            TwinSetup::Keep => {
                twins.entry(key).or_default();
            }
            TwinSetup::Migrate(t) => {
                twins.insert(key, t.clone());
            }
        }
        Ok(())
    }

    async fn twin(
        &self,
        hub: &LinkedHub,
        device_id: &str,
    ) -> Result<Option<TwinSnapshot>, HubError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        Ok(self.twin_of(&hub.name, device_id))
    }

    async fn remove_device(&self, hub: &LinkedHub, device_id: &str) -> Result<(), HubError> {
        let key = (hub.name.clone(), device_id.to_owned());
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.twins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        Ok(())
    }
}

/// A webhook that answers what it is told, and remembers what it was sent.
#[derive(Default)]
pub struct ScriptedWebhook {
    pub answer: Mutex<Option<Result<AllocationResponse, WebhookError>>>,
    pub requests: Mutex<Vec<(WebhookTarget, AllocationRequest)>>,
}

impl ScriptedWebhook {
    pub fn answer(&self, answer: Result<AllocationResponse, WebhookError>) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    }

    pub fn last_request(&self) -> Option<(WebhookTarget, AllocationRequest)> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}

#[async_trait]
impl AllocationWebhook for ScriptedWebhook {
    async fn allocate(
        &self,
        target: &WebhookTarget,
        request: &AllocationRequest,
    ) -> Result<AllocationResponse, WebhookError> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((target.clone(), request.clone()));
        self.answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Err(WebhookError::Unreachable("no answer scripted".into())))
    }
}

/// Latencies tests set by hand (host name → milliseconds).
#[derive(Default)]
pub struct FixedLatency(pub Mutex<BTreeMap<String, f64>>);

impl FixedLatency {
    pub fn set(&self, hub: &str, ms: Option<f64>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match ms {
            Some(ms) => m.insert(hub.to_ascii_lowercase(), ms),
            None => m.remove(&hub.to_ascii_lowercase()),
        };
    }
}

impl HubLatency for FixedLatency {
    fn latency_ms(&self, hub: &str) -> Option<f64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hub.to_ascii_lowercase())
            .copied()
    }
}

/// A clock tests can set.
pub struct ManualClock(Mutex<UtcTime>);

impl ManualClock {
    pub fn new(at: UtcTime) -> Self {
        Self(Mutex::new(at))
    }
    pub fn set(&self, at: UtcTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
    pub fn advance_seconds(&self, seconds: i64) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) =
            UtcTime::from_unix_nanos(t.unix_nanos() + i128::from(seconds) * 1_000_000_000)
        {
            *t = next;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UtcTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub mod conformance {
    //! The store conformance suite. Call [`run`] with a fresh, empty store.

    use super::*;
    use crate::tenant::{AccessRights, OWNER_POLICY};
    use onramp_model::{
        AllocationPolicy, AttestationMechanism, AttestationType, DeviceRegistrationState, IdScope,
        RegistrationStatus, Secret, SymmetricKeyAttestation,
    };

    fn now(seconds: i64) -> UtcTime {
        UtcTime::from_unix_nanos(i128::from(1_700_000_000 + seconds) * 1_000_000_000)
            .expect("valid time")
    }

    pub fn service(name: &str, scope: u32) -> ProvisioningService {
        ProvisioningService {
            name: name.into(),
            id_scope: IdScope::from_number(scope),
            allocation_policy: AllocationPolicy::Hashed,
            custom_allocation: None,
            created: now(0),
        }
    }

    pub fn owner(key: &str) -> SharedAccessPolicy {
        SharedAccessPolicy {
            name: OWNER_POLICY.into(),
            primary_key: Secret::new(key),
            secondary_key: Secret::new(format!("{key}2")),
            rights: AccessRights::ALL,
        }
    }

    pub fn enrollment(id: &str) -> IndividualEnrollment {
        IndividualEnrollment {
            registration_id: id.into(),
            attestation: Some(AttestationMechanism {
                kind: AttestationType::SymmetricKey,
                symmetric_key: Some(SymmetricKeyAttestation {
                    primary_key: Some(Secret::new("cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw==")),
                    secondary_key: Some(Secret::new("c2Vjb25kYXJ5LWtleS1mb3ItdGVzdHMtMTI=")),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn group(id: &str) -> EnrollmentGroup {
        EnrollmentGroup {
            enrollment_group_id: id.into(),
            attestation: enrollment("x").attestation,
            ..Default::default()
        }
    }

    pub fn hub(name: &str) -> LinkedHub {
        LinkedHub {
            name: name.into(),
            connection_string: Secret::new(format!(
                "HostName={name};SharedAccessKeyName=iothubowner;SharedAccessKey=aHViLWtleQ=="
            )),
            location: "local".into(),
            allocation_weight: 1,
            apply_allocation_policy: true,
            embedded: false,
            companion: false,
        }
    }

    fn record(id: &str, group: Option<&str>) -> RegistrationRecord {
        let mut state = DeviceRegistrationState::new(id, RegistrationStatus::Assigned);
        state.assigned_hub = Some("hub-a".into());
        state.device_id = Some(id.into());
        RegistrationRecord {
            state,
            operation_id: format!("op-{id}"),
            enrollment_group_id: group.map(str::to_owned),
            placement: Some(Placement {
                hub: "hub-a".into(),
                device_id: id.into(),
                initial_hub: "hub-a".into(),
            }),
        }
    }

    /// Runs every check against `store`, which must start empty.
    pub async fn run(store: Arc<dyn Store>) {
        tenants(&*store).await;
        enrollments(&*store).await;
        groups(&*store).await;
        registrations(&*store).await;
        registration_inputs(&*store).await;
        placements_and_latencies(&*store).await;
        certificates(&*store).await;
        isolation(&*store).await;
    }

    async fn tenants(store: &dyn Store) {
        let svc = service("t1", 1);
        store
            .create_service(&svc, &[owner("b3duZXIta2V5LTE=")])
            .await
            .expect("create");
        assert!(matches!(
            store.create_service(&svc, &[]).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(
            matches!(
                store
                    .create_service(&service("t1-other-name", 1), &[])
                    .await,
                Err(StoreError::AlreadyExists(_)),
            ),
            "ID scopes are unique"
        );
        assert_eq!(store.service("t1").await.expect("get"), Some(svc.clone()));
        assert_eq!(
            store
                .service_by_scope(&svc.id_scope.key())
                .await
                .expect("by scope"),
            Some(svc.clone())
        );
        assert_eq!(
            store.service_by_scope("0ne99999999").await.expect("none"),
            None
        );
        let policies = store.policies("t1").await.expect("policies");
        assert_eq!(policies, vec![owner("b3duZXIta2V5LTE=")]);
        let named = store.policies_named(OWNER_POLICY).await.expect("named");
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].0, "t1");

        store
            .put_linked_hub("t1", &hub("Hub-A.example.net"))
            .await
            .expect("hub");
        store
            .put_linked_hub("t1", &hub("hub-b.example.net"))
            .await
            .expect("hub");
        let mut updated = hub("hub-a.example.net");
        updated.allocation_weight = 5;
        store
            .put_linked_hub("t1", &updated)
            .await
            .expect("update hub");
        let hubs = store.linked_hubs("t1").await.expect("hubs");
        assert_eq!(
            hubs.len(),
            2,
            "hub names are case-insensitive keys: {hubs:?}"
        );
        assert!(hubs.iter().any(|h| h.allocation_weight == 5));
        assert!(
            store
                .delete_linked_hub("t1", "HUB-B.example.net")
                .await
                .expect("del")
        );
        assert!(
            !store
                .delete_linked_hub("t1", "hub-b.example.net")
                .await
                .expect("del twice")
        );
        assert!(matches!(
            store.put_linked_hub("nope", &hub("h")).await,
            Err(StoreError::NotFound(_))
        ));

        let mut changed = svc.clone();
        changed.allocation_policy = AllocationPolicy::Static;
        store.update_service(&changed).await.expect("update");
        assert_eq!(
            store
                .service("t1")
                .await
                .expect("get")
                .map(|s| s.allocation_policy),
            Some(AllocationPolicy::Static)
        );
        store.update_service(&svc).await.expect("restore");
    }

    async fn enrollments(store: &dyn Store) {
        let e = store
            .put_enrollment("t1", &enrollment("Dev-1"), Precondition::None, now(10))
            .await
            .expect("create");
        let tag1 = e.etag.clone().expect("etag");
        assert_eq!(e.created_date_time_utc, Some(now(10)));
        assert_eq!(e.last_updated_date_time_utc, Some(now(10)));
        let got = store
            .enrollment("t1", "dev-1")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got.registration_id, "Dev-1", "original spelling is kept");
        assert_eq!(
            got.attestation,
            enrollment("x").attestation,
            "keys survive storage"
        );
        assert_eq!(got.etag, Some(tag1.clone()));

        // Conditional update.
        let e2 = store
            .put_enrollment(
                "t1",
                &enrollment("dev-1"),
                Precondition::IfMatch(tag1.as_str().into()),
                now(20),
            )
            .await
            .expect("update with etag");
        let tag2 = e2.etag.clone().expect("etag");
        assert_ne!(tag1, tag2);
        assert_eq!(e2.created_date_time_utc, Some(now(10)), "created is kept");
        assert_eq!(e2.last_updated_date_time_utc, Some(now(20)));
        assert!(matches!(
            store
                .put_enrollment(
                    "t1",
                    &enrollment("dev-1"),
                    Precondition::IfMatch(tag1.as_str().into()),
                    now(30)
                )
                .await,
            Err(StoreError::PreconditionFailed(_))
        ));
        assert!(matches!(
            store
                .put_enrollment(
                    "t1",
                    &enrollment("dev-1"),
                    Precondition::IfNotExists,
                    now(30)
                )
                .await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store
                .put_enrollment(
                    "t1",
                    &enrollment("dev-new"),
                    Precondition::IfMatch("\"x\"".into()),
                    now(30)
                )
                .await,
            Err(StoreError::PreconditionFailed(_))
        ));
        store
            .put_enrollment(
                "t1",
                &enrollment("dev-1"),
                Precondition::IfMatch("*".into()),
                now(30),
            )
            .await
            .expect("wildcard");

        // Paging in key order.
        for i in 0..25 {
            store
                .put_enrollment(
                    "t1",
                    &enrollment(&format!("page-{i:02}")),
                    Precondition::None,
                    now(40),
                )
                .await
                .expect("page item");
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .enrollments("t1", after.as_deref(), 10)
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            after = page.last().map(|e| e.registration_id.to_ascii_lowercase());
            seen.extend(page.into_iter().map(|e| e.registration_id));
        }
        assert_eq!(seen.len(), 26);
        let mut sorted = seen.clone();
        sorted.sort_by_key(|s| s.to_ascii_lowercase());
        assert_eq!(seen, sorted);

        // Delete.
        let current = store
            .enrollment("t1", "dev-1")
            .await
            .expect("get")
            .expect("found");
        assert!(matches!(
            store
                .delete_enrollment("t1", "dev-1", Precondition::IfMatch(tag1.as_str().into()))
                .await,
            Err(StoreError::PreconditionFailed(_))
        ));
        store
            .delete_enrollment(
                "t1",
                "dev-1",
                Precondition::IfMatch(current.etag.expect("etag").as_str().into()),
            )
            .await
            .expect("delete");
        assert_eq!(store.enrollment("t1", "dev-1").await.expect("get"), None);
        assert!(matches!(
            store
                .delete_enrollment("t1", "dev-1", Precondition::None)
                .await,
            Err(StoreError::NotFound(_))
        ));
    }

    async fn groups(store: &dyn Store) {
        let g = store
            .put_enrollment_group("t1", &group("Group-1"), Precondition::None, now(50))
            .await
            .expect("group");
        assert!(g.etag.is_some());
        assert_eq!(
            store
                .enrollment_group("t1", "group-1")
                .await
                .expect("get")
                .map(|g| g.attestation),
            Some(group("x").attestation)
        );
        store
            .put_enrollment_group("t1", &group("group-2"), Precondition::None, now(50))
            .await
            .expect("g2");
        let all = store
            .enrollment_groups("t1", None, 100)
            .await
            .expect("list");
        assert_eq!(all.len(), 2);
        let after = store
            .enrollment_groups("t1", Some("group-1"), 100)
            .await
            .expect("after");
        assert_eq!(after.len(), 1);
        assert!(matches!(
            store
                .put_enrollment_group(
                    "t1",
                    &group("group-1"),
                    Precondition::IfMatch("\"stale\"".into()),
                    now(60)
                )
                .await,
            Err(StoreError::PreconditionFailed(_))
        ));
        store
            .delete_enrollment_group("t1", "group-2", Precondition::None)
            .await
            .expect("delete");
        assert_eq!(
            store
                .enrollment_groups("t1", None, 100)
                .await
                .expect("list")
                .len(),
            1
        );
    }

    async fn registrations(store: &dyn Store) {
        let r = store
            .put_registration("t1", &record("Reg-1", Some("Group-1")), now(70))
            .await
            .expect("put");
        assert_eq!(r.state.created_date_time_utc, Some(now(70)));
        assert!(r.state.etag.is_some());
        let r2 = store
            .put_registration("t1", &record("reg-1", Some("Group-1")), now(80))
            .await
            .expect("again");
        assert_eq!(
            r2.state.created_date_time_utc,
            Some(now(70)),
            "created is kept"
        );
        assert_ne!(r.state.etag, r2.state.etag);
        let got = store
            .registration("t1", "reg-1")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got.operation_id, "op-reg-1");
        assert_eq!(got.state.assigned_hub.as_deref(), Some("hub-a"));
        store
            .put_registration("t1", &record("reg-2", Some("group-1")), now(80))
            .await
            .expect("put");
        store
            .put_registration("t1", &record("reg-3", None), now(80))
            .await
            .expect("put");
        let of_group = store
            .registrations_of_group("t1", "group-1", None, 100)
            .await
            .expect("query");
        assert_eq!(of_group.len(), 2, "{of_group:?}");
        let page2 = store
            .registrations_of_group("t1", "group-1", Some("reg-1"), 100)
            .await
            .expect("query");
        assert_eq!(page2.len(), 1);
        assert!(matches!(
            store
                .delete_registration("t1", "reg-2", Precondition::IfMatch("\"stale\"".into()))
                .await,
            Err(StoreError::PreconditionFailed(_))
        ));
        store
            .delete_registration("t1", "reg-2", Precondition::None)
            .await
            .expect("delete");
        assert_eq!(store.registration("t1", "reg-2").await.expect("get"), None);
    }

    /// The reads of one registration, asked for at once, answer what the
    /// single reads answer.
    async fn registration_inputs(store: &dyn Store) {
        let scope = service("t1", 1).id_scope.key();
        let unknown = service("nowhere", 77).id_scope.key();
        assert!(
            store
                .registration_inputs(&unknown, "reg-1", 10)
                .await
                .expect("read")
                .is_none()
        );
        store
            .put_enrollment("t1", &enrollment("Inputs-1"), Precondition::None, now(85))
            .await
            .expect("put");
        store
            .put_registration("t1", &record("Inputs-1", None), now(85))
            .await
            .expect("put");

        // An individual enrollment: groups are not read.
        let got = store
            .registration_inputs(&scope, "inputs-1", 10)
            .await
            .expect("read")
            .expect("service found");
        assert_eq!(got.service.name, "t1");
        assert_eq!(
            got.enrollment,
            store
                .enrollment("t1", "inputs-1")
                .await
                .expect("get")
                .map(Box::new)
        );
        assert!(got.enrollment.is_some());
        assert_eq!(
            got.enrollment
                .as_ref()
                .and_then(|e| e.attestation.as_ref())
                .and_then(|a| a.symmetric_key.as_ref())
                .and_then(|k| k.primary_key.as_ref())
                .map(|k| k.expose().to_owned()),
            Some("cHJpbWFyeS1rZXktZm9yLXRlc3RzLTEyMw==".to_owned()),
            "keys are unsealed"
        );
        assert_eq!(got.first_groups, None);
        assert_eq!(
            got.previous,
            store
                .registration("t1", "inputs-1")
                .await
                .expect("get")
                .map(Box::new)
        );
        assert!(got.previous.is_some());
        assert_eq!(
            got.linked_hubs,
            store.linked_hubs("t1").await.expect("list")
        );
        assert!(!got.linked_hubs.is_empty());

        // No individual enrollment: the first page of groups, at most the page asked for.
        let got = store
            .registration_inputs(&scope, "device-of-a-group", 1)
            .await
            .expect("read")
            .expect("service found");
        assert_eq!(got.enrollment, None);
        assert_eq!(got.previous, None);
        let first = store.enrollment_groups("t1", None, 1).await.expect("list");
        assert_eq!(first.len(), 1);
        assert_eq!(got.first_groups, Some(first));

        // Leave t1 as the later checks expect it.
        store
            .delete_registration("t1", "inputs-1", Precondition::None)
            .await
            .expect("delete");
        store
            .delete_enrollment("t1", "inputs-1", Precondition::None)
            .await
            .expect("delete");
    }

    async fn placements_and_latencies(store: &dyn Store) {
        // Records carry the placement beside the state, also when a failed
        // re-registration leaves the state without a hub.
        let mut moved = record("mover", None);
        moved.placement = Some(Placement {
            hub: "HUB-B".into(),
            device_id: "mover".into(),
            initial_hub: "hub-a".into(),
        });
        moved.state.assigned_hub = Some("HUB-B".into());
        store
            .put_registration("t1", &moved, now(90))
            .await
            .expect("put");
        let on_a_before = store
            .count_devices_on_hub("t1", "hub-a")
            .await
            .expect("count");
        let mut failed = record("stuck", None);
        failed.state.status = RegistrationStatus::Failed;
        failed.state.assigned_hub = None;
        failed.state.error_code = Some(400214);
        store
            .put_registration("t1", &failed, now(90))
            .await
            .expect("put");
        let got = store
            .registration("t1", "mover")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got.placement, moved.placement);
        assert_eq!(
            store
                .count_devices_on_hub("t1", "hub-b")
                .await
                .expect("count"),
            1
        );
        // "stuck" failed but its device still lives on hub-a.
        let on_a = store
            .count_devices_on_hub("t1", "Hub-A")
            .await
            .expect("count");
        assert_eq!(on_a, on_a_before + 1);
        assert_eq!(
            store
                .count_devices_on_hub("t2", "hub-b")
                .await
                .expect("count"),
            0,
            "other tenants' devices are not counted"
        );
        store
            .delete_registration("t1", "mover", Precondition::None)
            .await
            .expect("delete");
        assert_eq!(
            store
                .count_devices_on_hub("t1", "hub-b")
                .await
                .expect("count"),
            0
        );

        let sample = |node: &str, hub: &str, ms: Option<f64>| HubLatencySample {
            node: node.into(),
            hub: hub.into(),
            latency_ms: ms,
            error: ms.is_none().then(|| "timed out".to_owned()),
            measured: now(100),
        };
        store
            .record_hub_latency(&sample("node-1", "hub-a", Some(1.5)))
            .await
            .expect("record");
        store
            .record_hub_latency(&sample("node-1", "HUB-A", Some(2.5)))
            .await
            .expect("record");
        store
            .record_hub_latency(&sample("node-2", "hub-a", None))
            .await
            .expect("record");
        let mut all = store.hub_latencies().await.expect("list");
        all.sort_by(|a, b| a.node.cmp(&b.node));
        assert_eq!(all.len(), 2, "one row per node and hub: {all:?}");
        assert_eq!(all[0].latency_ms, Some(2.5));
        assert_eq!(all[1].error.as_deref(), Some("timed out"));
    }

    async fn certificates(store: &dyn Store) {
        let ca = CaCertificate {
            name: "My-Root".into(),
            der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
            subject: "CN=My Root".into(),
            thumbprint: "AA".repeat(20),
            sha256_thumbprint: "BB".repeat(32),
            not_after: now(1000),
            is_verified: false,
            verification_code: Some("C0DE".into()),
            etag: None,
            created: now(100),
            updated: now(100),
        };
        let stored = store
            .put_ca_certificate("t1", &ca, Precondition::IfNotExists)
            .await
            .expect("put");
        let tag = stored.etag.clone().expect("etag");
        let got = store
            .ca_certificate("t1", "my-root")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got.der, ca.der);
        assert_eq!(got.name, "My-Root");
        assert_eq!(got.verification_code.as_deref(), Some("C0DE"));
        let mut verified = got.clone();
        verified.is_verified = true;
        store
            .put_ca_certificate("t1", &verified, Precondition::IfMatch(tag.as_str().into()))
            .await
            .expect("update");
        assert!(matches!(
            store
                .put_ca_certificate("t1", &verified, Precondition::IfMatch(tag.as_str().into()))
                .await,
            Err(StoreError::PreconditionFailed(_))
        ));
        assert!(
            store
                .ca_certificate("t1", "MY-ROOT")
                .await
                .expect("get")
                .expect("found")
                .is_verified
        );
        assert_eq!(store.ca_certificates("t1").await.expect("list").len(), 1);
        store
            .delete_ca_certificate("t1", "my-root", Precondition::None)
            .await
            .expect("delete");
        assert_eq!(
            store.ca_certificate("t1", "my-root").await.expect("get"),
            None
        );
        assert!(matches!(
            store
                .delete_ca_certificate("t1", "my-root", Precondition::None)
                .await,
            Err(StoreError::NotFound(_))
        ));

        // Enrollments are found by the thumbprint of their client certificate.
        let print = "CD".repeat(32);
        let mut revoked = enrollment("revoke-ica");
        revoked.attestation = Some(AttestationMechanism {
            kind: AttestationType::X509,
            x509: Some(onramp_model::X509Attestation {
                client_certificates: Some(onramp_model::X509Certificates {
                    primary: Some(onramp_model::X509CertificateWithInfo {
                        certificate: None,
                        info: Some(onramp_model::X509CertificateInfo {
                            subject_name: "CN=ica".into(),
                            sha1_thumbprint: "EE".repeat(20),
                            sha256_thumbprint: print.clone(),
                            issuer_name: "CN=root".into(),
                            not_before_utc: now(0),
                            not_after_utc: now(1000),
                            serial_number: "01".into(),
                            version: 3,
                        }),
                    }),
                    secondary: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        store
            .put_enrollment("t1", &revoked, Precondition::None, now(110))
            .await
            .expect("x509 enrollment");
        let found = store
            .enrollments_by_thumbprint("t1", &print.to_ascii_lowercase())
            .await
            .expect("by thumbprint");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].registration_id, "revoke-ica");
        assert!(
            store
                .enrollments_by_thumbprint("t2-absent", &print)
                .await
                .expect("other service")
                .is_empty()
        );
        store
            .put_enrollment(
                "t1",
                &enrollment("revoke-ica"),
                Precondition::None,
                now(120),
            )
            .await
            .expect("now symmetric");
        assert!(
            store
                .enrollments_by_thumbprint("t1", &print)
                .await
                .expect("gone")
                .is_empty()
        );
        store
            .put_enrollment("t1", &revoked, Precondition::None, now(130))
            .await
            .expect("x509 again");
        store
            .delete_enrollment("t1", "revoke-ica", Precondition::None)
            .await
            .expect("delete");
        assert!(
            store
                .enrollments_by_thumbprint("t1", &print)
                .await
                .expect("deleted")
                .is_empty()
        );
    }

    async fn isolation(store: &dyn Store) {
        store
            .create_service(&service("t2", 2), &[owner("b3duZXIta2V5LTI=")])
            .await
            .expect("t2");
        assert_eq!(store.enrollment("t2", "page-00").await.expect("get"), None);
        assert!(
            store
                .enrollments("t2", None, 100)
                .await
                .expect("list")
                .is_empty()
        );
        assert!(store.linked_hubs("t2").await.expect("hubs").is_empty());
        store
            .put_enrollment("t2", &enrollment("page-00"), Precondition::None, now(90))
            .await
            .expect("same id");
        assert_eq!(
            store
                .enrollments("t2", None, 100)
                .await
                .expect("list")
                .len(),
            1
        );
        assert_eq!(
            store
                .enrollments("t1", None, 1000)
                .await
                .expect("list")
                .len(),
            25
        );
        assert_eq!(
            store
                .policies_named(OWNER_POLICY)
                .await
                .expect("named")
                .len(),
            2
        );
        assert!(store.delete_service("t2").await.expect("delete"));
        assert!(
            store
                .enrollments("t2", None, 100)
                .await
                .expect("list")
                .is_empty()
        );
        assert_eq!(
            store
                .policies_named(OWNER_POLICY)
                .await
                .expect("named")
                .len(),
            1
        );
        assert_eq!(store.services().await.expect("list").len(), 1);
    }
}
