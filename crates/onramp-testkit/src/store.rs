//! [`MemoryStore`]: the store in a mutex.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use onramp_core::ports::{
    HubLatencySample, Precondition, RegistrationRecord, Store, StoreError, check_precondition,
    client_thumbprints,
};
use onramp_core::tenant::{CaCertificate, LinkedHub, ProvisioningService, SharedAccessPolicy};
use onramp_model::{ETag, EnrollmentGroup, IndividualEnrollment, UtcTime};

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
