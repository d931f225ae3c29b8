//! Registration records as operators see them: read, deleted, and listed
//! by enrollment group.

use super::*;

impl Admin {
    pub async fn registration(
        &self,
        service: &str,
        id: &str,
    ) -> Result<DeviceRegistrationState, ProvisioningError> {
        let record = self.existing::<RegistrationRecord>(service, id).await?;
        Ok(service_view(record.state))
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
        self.existing::<EnrollmentGroup>(service, group_id).await?;
        let group_key = IdKey::of(group_id);
        let (after, limit) = page_bounds(page)?;
        let mut items = self
            .store
            .registrations_of_group(&crate::ports::GroupPage::new(
                &group_key,
                crate::ports::Page::new(service, after.as_ref(), limit + 1),
            ))
            .await?;
        let continuation = next_token(&mut items, limit, |r| IdKey::of(&r.state.registration_id));
        Ok(Page {
            items: items.into_iter().map(|r| service_view(r.state)).collect(),
            continuation,
        })
    }
}
