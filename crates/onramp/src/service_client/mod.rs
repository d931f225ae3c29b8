//! `onramp enrollment …` and `onramp group …`: the DPS service API, called
//! over HTTPS with a service connection string, as any Azure service SDK would.

mod api;
mod diagnostics;
mod records;
mod spec;
mod transfer;

use anyhow::{Context, bail};
use onramp_core::sas;
use onramp_model::EnrollmentKind;
use reqwest::Method;

pub(crate) use api::Api;
pub use diagnostics::diagnostics;
use records::Records;

use crate::cli::{EnrollmentSpec, GroupCommand, RecordCommand, RegistrationCommand, ServiceApi};
use crate::output::{Column, Format, Output};

/// What `--output table` shows of registration records.
const REGISTRATION_COLUMNS: &[Column] = &[
    ("REGISTRATION ID", "/registrationId"),
    ("STATUS", "/status"),
    ("SUBSTATUS", "/substatus"),
    ("HUB", "/assignedHub"),
    ("DEVICE ID", "/deviceId"),
    ("UPDATED", "/lastUpdatedDateTimeUtc"),
    ("ERROR", "/errorMessage"),
];

pub(crate) fn enc(id: &str) -> String {
    sas::encode(id)
}

/// Creates a symmetric-key enrollment group for a load test; returns its primary key.
pub async fn create_bench_group(api: &ServiceApi, group_id: &str) -> anyhow::Result<String> {
    let api = Api::open(api).await?;
    let groups = Records(EnrollmentKind::Group);
    let body = groups.body(group_id, None, &EnrollmentSpec::default())?;
    let created = groups.put(&api, group_id, body).await?;
    created["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the service returned no group key"))
}

pub async fn enrollment(command: RecordCommand, output: Output) -> anyhow::Result<()> {
    Records(EnrollmentKind::Individual)
        .run(command, output.or(Format::Json))
        .await
}

pub async fn group(command: GroupCommand, output: Output) -> anyhow::Result<()> {
    match command {
        GroupCommand::Record(command) => {
            Records(EnrollmentKind::Group)
                .run(command, output.or(Format::Json))
                .await
        }
        GroupCommand::ComputeDeviceKey {
            api,
            registration_id,
            group_id,
            key,
        } => {
            let group_key = match (key, group_id) {
                (Some(key), _) => key,
                (None, Some(group_id)) => {
                    let api = Api::open(&api).await?;
                    let path = format!(
                        "{}/attestationmechanism",
                        Records(EnrollmentKind::Group).item(&group_id)
                    );
                    let attestation = api.call(Method::POST, &path, None).await?;
                    attestation["symmetricKey"]["primaryKey"]
                        .as_str()
                        .map(str::to_owned)
                        .with_context(|| {
                            format!("enrollment group '{group_id}' has no symmetric key (it attests with {})", attestation["type"])
                        })?
                }
                (None, None) => bail!("give the group with --group-id, or its key with --key"),
            };
            let device_key = sas::derive_device_key(&group_key, &registration_id)
                .map_err(|e| anyhow::anyhow!("the group key: {e}"))?;
            println!("{device_key}");
            Ok(())
        }
    }
}

pub async fn registration(command: RegistrationCommand, output: Output) -> anyhow::Result<()> {
    let format = output.or(Format::Json);
    let item = |id: &str| format!("registrations/{}", enc(id));
    match command {
        RegistrationCommand::Show {
            api,
            registration_id,
        } => {
            let api = Api::open(&api).await?;
            format.one(&api.call(Method::GET, &item(&registration_id), None).await?)
        }
        RegistrationCommand::List { api, group_id } => {
            let api = Api::open(&api).await?;
            let query = format!("{}/query", item(&group_id));
            format.records(&api.query_all(&query).await?, REGISTRATION_COLUMNS)
        }
        RegistrationCommand::Delete {
            api,
            registration_id,
            etag,
        } => {
            let api = Api::open(&api).await?;
            api.request(
                Method::DELETE,
                &item(&registration_id),
                None,
                etag.as_deref(),
            )
            .await?;
            eprintln!("deleted the registration record of {registration_id}");
            Ok(())
        }
    }
}
