//! `onramp enrollment …` and `onramp group …`: one path for the two
//! resources, which sit at parallel paths of the service API.

use anyhow::{Context, bail};
use onramp_model::{EnrollmentKind, ProvisioningStatus};
use reqwest::Method;
use serde_json::Value;

use super::api::{Api, ApiError};
use super::enc;
use super::spec::{AllocationSettings, attestation, settings, tpm_key};
use super::transfer::Transfer;
use crate::cli::{EnrollmentChanges, EnrollmentSpec, RecordCommand};
use crate::output::{Column, Format};

/// What `--output table` shows of enrollments and groups after their IDs.
const SHARED_COLUMNS: &[Column] = &[
    ("ATTESTATION", "/attestation/type"),
    ("STATUS", "/provisioningStatus"),
    ("ALLOCATION", "/allocationPolicy"),
    ("HUBS", "/iotHubs"),
    ("ETAG", "/etag"),
    ("UPDATED", "/lastUpdatedDateTimeUtc"),
];

/// Individual enrollments and enrollment groups sit at parallel paths of the
/// service API and are written, shown, listed and deleted the same way.
#[derive(Clone, Copy)]
pub(super) struct Records(pub(super) EnrollmentKind);

impl Records {
    pub(super) fn path(self) -> &'static str {
        self.0.collection()
    }

    pub(super) fn item(self, id: &str) -> String {
        format!("{}/{}", self.path(), enc(id))
    }

    pub(super) async fn put(self, api: &Api, id: &str, doc: Value) -> anyhow::Result<Value> {
        api.call(Method::PUT, &self.item(id), Some(&doc)).await
    }

    /// The body of a create: the ID, the attestation and the settings of
    /// the command line.
    pub(super) fn body(
        self,
        id: &str,
        device_id: Option<String>,
        spec: &EnrollmentSpec,
    ) -> anyhow::Result<Value> {
        let group = self.0 == EnrollmentKind::Group;
        let mut body = serde_json::to_value(settings(spec)?)?;
        body[self.0.id_field()] = id.into();
        body["attestation"] = serde_json::to_value(attestation(spec, group)?)?;
        match device_id {
            Some(_) if group => {
                bail!(
                    "--device-id is for individual enrollments; a group's devices keep their registration IDs"
                )
            }
            Some(device_id) => body["deviceId"] = device_id.into(),
            None => {}
        }
        Ok(body)
    }

    /// Whether one with this ID exists (a 404 says it does not).
    async fn exists(self, api: &Api, id: &str) -> anyhow::Result<bool> {
        match api.call(Method::GET, &self.item(id), None).await {
            Ok(_) => Ok(true),
            Err(e)
                if e.downcast_ref::<ApiError>()
                    .is_some_and(|e| e.status == 404) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads it, applies `changes` and writes it back under the ETag read
    /// (or the one given): a change made in between is not overwritten.
    async fn update(
        self,
        api: &Api,
        id: &str,
        changes: &EnrollmentChanges,
    ) -> anyhow::Result<Value> {
        let mut doc = api.call(Method::GET, &self.item(id), None).await?;
        let etag = match &changes.etag {
            Some(etag) => etag.clone(),
            None => doc["etag"]
                .as_str()
                .map(str::to_owned)
                .context("the service returned no ETag")?,
        };
        let allocation = serde_json::to_value(AllocationSettings::of(&changes.settings)?)?;
        for (field, value) in allocation.as_object().into_iter().flatten() {
            doc[field.as_str()] = value.clone();
        }
        if changes.disable || changes.enable {
            let status = if changes.disable {
                ProvisioningStatus::Disabled
            } else {
                ProvisioningStatus::Enabled
            };
            doc["provisioningStatus"] = status.as_str().into();
        }
        if let Some(edge) = changes.edge {
            doc["capabilities"] = serde_json::json!({"iotEdge": edge});
        }
        for (given, field) in [
            (&changes.keys.key, "primaryKey"),
            (&changes.keys.secondary_key, "secondaryKey"),
        ] {
            let Some(key) = given else { continue };
            if doc["attestation"]["type"] != "symmetricKey" {
                bail!(
                    "{} '{id}' attests with {}: it has no symmetric keys to change",
                    self.0.noun(),
                    doc["attestation"]["type"]
                );
            }
            doc["attestation"]["symmetricKey"][field] = key.as_str().into();
        }
        api.request(Method::PUT, &self.item(id), Some(&doc), Some(&etag))
            .await
    }

    async fn show(self, api: &Api, id: &str, keys: bool, format: Format) -> anyhow::Result<()> {
        let mut doc = api.call(Method::GET, &self.item(id), None).await?;
        if keys {
            let path = format!("{}/attestationmechanism", self.item(id));
            doc["attestation"] = api.call(Method::POST, &path, None).await?;
        }
        format.one(&doc)
    }

    async fn list(self, api: &Api, format: Format) -> anyhow::Result<()> {
        let query = format!("{}/query", self.path());
        let mut columns: Vec<Column> = match self.0 {
            EnrollmentKind::Individual => vec![
                ("REGISTRATION ID", "/registrationId"),
                ("DEVICE ID", "/deviceId"),
            ],
            EnrollmentKind::Group => vec![("GROUP ID", "/enrollmentGroupId")],
        };
        columns.extend_from_slice(SHARED_COLUMNS);
        format.records(&api.query_all(&query).await?, &columns)
    }

    async fn delete(self, api: &Api, id: &str) -> anyhow::Result<()> {
        api.call(Method::DELETE, &self.item(id), None).await?;
        eprintln!("deleted {} {id}", self.0.short_noun());
        Ok(())
    }

    /// Runs `onramp enrollment …` or `onramp group …`.
    pub(super) async fn run(self, command: RecordCommand, format: Format) -> anyhow::Result<()> {
        match command {
            RecordCommand::Create {
                api,
                id,
                device_id,
                replace,
                spec,
            } => {
                let id = match (id, &spec.tpm_ek) {
                    (Some(id), _) => id,
                    (None, Some(ek)) => tpm_key(ek, "--tpm-ek")?.registration_id(),
                    (None, None) => match self.0 {
                        EnrollmentKind::Individual => bail!(
                            "give the registration ID (only a TPM enrollment, --tpm-ek, can leave it out: \
                             its key names the device)"
                        ),
                        EnrollmentKind::Group => bail!("give the group ID"),
                    },
                };
                let body = self.body(&id, device_id, &spec)?;
                let api = Api::open(&api).await?;
                if !replace && self.exists(&api, &id).await? {
                    bail!(
                        "{} '{id}' exists; change it with `update`, or replace it with --replace",
                        self.0.noun()
                    );
                }
                format.one(&self.put(&api, &id, body).await?)
            }
            RecordCommand::Update { api, id, changes } => {
                let api = Api::open(&api).await?;
                format.one(&self.update(&api, &id, &changes).await?)
            }
            RecordCommand::Show { api, id, keys } => {
                self.show(&Api::open(&api).await?, &id, keys, format).await
            }
            RecordCommand::List(api) => self.list(&Api::open(&api).await?, format).await,
            RecordCommand::Delete { api, id } => self.delete(&Api::open(&api).await?, &id).await,
            RecordCommand::Export {
                api,
                file,
                format: file_format,
                keys,
                quiet,
            } => {
                let to = Transfer::new(file_format, file.as_deref(), quiet);
                self.export(&Api::open(&api).await?, file.as_deref(), keys, to)
                    .await
            }
            RecordCommand::Import {
                api,
                file,
                format: file_format,
                batch,
                report,
                quiet,
            } => {
                let from = Transfer::new(file_format, Some(&file), quiet);
                let report = report.unwrap_or_else(|| file.with_extension("rejected.jsonl"));
                self.import(
                    &Api::open(&api).await?,
                    &file,
                    batch as usize,
                    &report,
                    from,
                )
                .await
            }
        }
    }
}
