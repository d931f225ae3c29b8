//! Individual enrollments and enrollment groups: written, read, queried and
//! changed in bulk through one path for both kinds.

use futures_util::StreamExt;

use super::*;

/// Items of a bulk operation written at once.
const BULK_WRITES_IN_FLIGHT: usize = 64;

impl Admin {
    /// Creates or replaces an individual enrollment or a group (PUT).
    pub async fn put<E: EnrollmentResource>(
        &self,
        service: &str,
        request: Write<'_, E>,
    ) -> Result<E, ProvisioningError> {
        let targets = self.allocation_targets(service).await?;
        let condition = Precondition::from_if_match(request.if_match);
        let path_id = request.id;
        self.write(service, path_id, request.body, condition, &targets, |e| {
            record_error::<E>(e, path_id)
        })
        .await
    }

    /// Validates a record against what it replaces, the allocation targets
    /// and the CA certificates it names, and stores it: the one path of
    /// single and bulk writes.
    async fn write<E: EnrollmentResource>(
        &self,
        service: &str,
        id: &str,
        body: E,
        condition: Precondition,
        targets: &Targets,
        store_error: impl FnOnce(StoreError) -> ProvisioningError,
    ) -> Result<E, ProvisioningError> {
        let existing = self.store.get::<E>(service, &IdKey::of(id)).await?;
        let ctx = targets.context(existing.as_ref().and_then(|e| e.attestation()));
        let record = validate::enrollment(id, body, &ctx)?;
        self.check_ca_references(service, record.attestation())
            .await?;
        self.store
            .put(service, record, condition, self.clock.now())
            .await
            .map_err(store_error)
    }

    /// A record without its keys (see [`Admin::attestation`]); an individual
    /// enrollment with its device's registration record.
    pub async fn get<E: EnrollmentResource>(
        &self,
        service: &str,
        id: &str,
    ) -> Result<E, ProvisioningError> {
        let key = IdKey::of(id);
        let mut record = self.existing::<E>(service, id).await?;
        if E::KIND == EnrollmentKind::Individual {
            let state = self
                .store
                .get::<RegistrationRecord>(service, &key)
                .await?
                .map(|r| service_view(r.state));
            if let Some(slot) = record.service_owned().registration_state {
                *slot = state;
            }
        }
        Ok(hide_keys(record))
    }

    /// The attestation mechanism with its keys.
    pub async fn attestation<E: EnrollmentResource>(
        &self,
        service: &str,
        id: &str,
    ) -> Result<AttestationMechanism, ProvisioningError> {
        let record = self.existing::<E>(service, id).await?;
        record
            .attestation()
            .cloned()
            .ok_or_else(|| not_found::<E>(id))
    }

    pub async fn query<E: EnrollmentResource>(
        &self,
        service: &str,
        query: &QuerySpecification,
        page: &PageRequest,
    ) -> Result<Page<E>, ProvisioningError> {
        check_query(query, E::KIND.collection())?;
        let (after, limit) = page_bounds(page)?;
        let mut items = self
            .store
            .list::<E>(service, after.as_ref(), limit + 1)
            .await?;
        let continuation = next_token(&mut items, limit, |e| IdKey::of(e.id()));
        Ok(Page {
            items: items.into_iter().map(hide_keys).collect(),
            continuation,
        })
    }

    /// Applies a bulk operation item by item; failures are reported per item
    /// and do not stop the others.
    pub async fn bulk<E: EnrollmentResource>(
        &self,
        service: &str,
        op: E::BulkOperation,
    ) -> Result<E::BulkResult, ProvisioningError> {
        let (mode, items) = E::bulk_items(op);
        check_bulk_size(items.len())?;
        check_bulk_ids(items.iter().map(|e| e.id()), E::KIND)?;
        // Read once for the whole batch, not once per item.
        let targets = &self.allocation_targets(service).await?;
        // Items with different IDs are independent writes: several in
        // flight let the store commit them in groups instead of one commit
        // an item. A call that names one ID twice (in any case) is applied
        // one item after another, in order, as Azure does.
        let mut keys = std::collections::HashSet::with_capacity(items.len());
        let distinct = items.iter().all(|e| keys.insert(IdKey::of(e.id())));
        let in_flight = if distinct { BULK_WRITES_IN_FLIGHT } else { 1 };
        let outcomes = futures_util::stream::iter(items.into_iter().map(|item| async move {
            let id = item.id().to_owned();
            let etag = item.etag().map(|t| t.as_str().to_owned());
            let outcome = match mode {
                BulkMode::Delete => self.delete::<E>(service, &id, etag.as_deref()).await,
                mode => {
                    let condition = bulk_condition(mode, etag.as_deref());
                    self.write(service, &id, item, condition, targets, |e| {
                        bulk_error(e, &id)
                    })
                    .await
                    .map(drop)
                }
            };
            (id, outcome)
        }))
        .buffered(in_flight)
        .collect::<Vec<_>>()
        .await;
        let errors = outcomes
            .into_iter()
            .filter_map(|(id, outcome)| outcome.err().map(|e| (id, e.code.code(), e.message)))
            .collect();
        Ok(E::bulk_result(errors))
    }

    /// An X.509 group's `caReferences` must name CA certificates of this service.
    async fn check_ca_references(
        &self,
        service: &str,
        attestation: Option<&AttestationMechanism>,
    ) -> Result<(), ProvisioningError> {
        let refs = attestation
            .and_then(|a| a.x509.as_ref())
            .and_then(|x| x.ca_references.as_ref());
        for (slot, name) in [
            ("primary", refs.and_then(|r| r.primary.as_ref())),
            ("secondary", refs.and_then(|r| r.secondary.as_ref())),
        ] {
            if let Some(name) = name
                && self
                    .store
                    .get::<CaCertificate>(service, &IdKey::of(name))
                    .await?
                    .is_none()
            {
                return Err(ProvisioningError::invalid(format!(
                    "attestation.x509.caReferences.{slot} '{name}' names no CA certificate of this service; \
                     upload it first (onramp cert upload)"
                )));
            }
        }
        Ok(())
    }
}

fn bulk_condition(mode: BulkMode, etag: Option<&str>) -> Precondition {
    match mode {
        BulkMode::Create => Precondition::IfNotExists,
        BulkMode::UpdateIfMatchETag => match etag {
            Some(t) => Precondition::IfMatch(t.to_owned()),
            None => Precondition::IfMatch(String::new()),
        },
        BulkMode::Update | BulkMode::Delete => Precondition::None,
    }
}

fn bulk_error(e: StoreError, id: &str) -> ProvisioningError {
    match e {
        StoreError::AlreadyExists(_) => ProvisioningError::new(
            ErrorCode::AlreadyExists,
            format!("'{id}' already exists; use mode update to replace it"),
        ),
        other => other.into(),
    }
}

fn check_bulk_size(n: usize) -> Result<(), ProvisioningError> {
    if n > MAX_BULK_ITEMS {
        return Err(ProvisioningError::invalid(format!(
            "the bulk operation has {n} items; send at most {MAX_BULK_ITEMS} per call"
        )));
    }
    Ok(())
}

/// A bulk item without an ID could only be answered with an error item
/// whose ID is empty, which the API's schema forbids: the whole request is
/// refused, as a single write without an ID is.
fn check_bulk_ids<'a>(
    ids: impl Iterator<Item = &'a str>,
    kind: EnrollmentKind,
) -> Result<(), ProvisioningError> {
    let (list, field) = (kind.collection(), kind.id_field());
    for (i, id) in ids.enumerate() {
        if id.trim().is_empty() {
            return Err(ProvisioningError::invalid(format!(
                "{list}[{i}] has no {field}; give every item of a bulk operation its {field} \
                 (nothing in this request was applied)"
            )));
        }
    }
    Ok(())
}

/// GET and query never return symmetric keys (as in Azure); the
/// attestation-mechanism call does.
fn hide_keys<E: EnrollmentResource>(mut record: E) -> E {
    if let Some(keys) = record
        .attestation_mut()
        .as_mut()
        .and_then(|a| a.symmetric_key.as_mut())
    {
        keys.primary_key = None;
        keys.secondary_key = None;
    }
    record
}
