//! Registration records as operators see them: read, deleted, and listed
//! by enrollment group.

use super::*;

impl Admin {
    pub async fn registration(
        &self,
        service: &str,
        id: &str,
    ) -> Result<DeviceRegistrationState, ProvisioningError> {
        self.store
            .get::<RegistrationRecord>(service, &IdKey::of(id))
            .await?
            .map(|r| service_view(r.state))
            .ok_or_else(|| registration_not_found(id))
    }

    pub async fn delete_registration(
        &self,
        service: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ProvisioningError> {
        self.remove::<RegistrationRecord>(service, id, if_match, ErrorCode::RegistrationNotFound)
            .await
    }

    /// Registration records of one enrollment group. The query body is
    /// optional here (Python's SDK sends none).
    pub async fn query_registrations(
        &self,
        service: &str,
        group_id: &str,
        query: Option<&QuerySpecification>,
        page: &PageRequest,
    ) -> Result<Page<DeviceRegistrationState>, ProvisioningError> {
        if let Some(q) = query {
            check_query(q, "deviceRegistrations")?;
        }
        let group_key = IdKey::of(group_id);
        if self
            .store
            .get::<EnrollmentGroup>(service, &group_key)
            .await?
            .is_none()
        {
            return Err(not_found(EnrollmentKind::Group, group_id));
        }
        let (after, limit) = page_bounds(page)?;
        let mut items = self
            .store
            .registrations_of_group(service, &group_key, after.as_ref(), limit + 1)
            .await?;
        let continuation = next_token(&mut items, limit, |r| IdKey::of(&r.state.registration_id));
        Ok(Page {
            items: items.into_iter().map(|r| service_view(r.state)).collect(),
            continuation,
        })
    }
}

fn registration_not_found(id: &str) -> ProvisioningError {
    ProvisioningError::new(
        ErrorCode::RegistrationNotFound,
        format!("no device has registered with registration ID '{id}'"),
    )
}
