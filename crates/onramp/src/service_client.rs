//! `onramp enrollment …` and `onramp group …`: the DPS service API, called
//! over HTTPS with a service connection string, as any Azure service SDK would.

use std::path::Path;

use anyhow::{Context, bail};
use onramp_core::connection_string::ConnectionString;
use onramp_core::sas;
use onramp_core::tenant::OWNER_POLICY;
use onramp_core::tpm::RsaPublic;
use onramp_model::{
    AllocationPolicy, AttestationMechanism, AttestationType, DeviceCapabilities, EnrollmentKind,
    ErrorBody, ErrorCode, InitialTwin, ProvisioningStatus, Secret, SymmetricKeyAttestation,
    TpmAttestation, X509Attestation, X509CaReferences, X509CertificateWithInfo, X509Certificates,
};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{
    EnrollmentChanges, EnrollmentSpec, GroupCommand, RecordCommand, RegistrationCommand, ServiceApi,
};
use crate::config::Config;
use crate::device::http_client;
use crate::local::{self, Deployment, Target};

const SERVICE_API_VERSION: &str = "2021-10-01";

/// A refusal of the service API: its HTTP status, then the Azure error code
/// and message (or the body as it came).
#[derive(Debug)]
struct ApiError {
    status: u16,
    detail: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}{}", self.status, self.detail)
    }
}

impl std::error::Error for ApiError {}

pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    host: String,
    key_name: String,
    key: String,
    target: Target,
}

impl Api {
    pub(crate) async fn open(args: &ServiceApi) -> anyhow::Result<Self> {
        let config = Config::load(&args.location)?;
        let local = Deployment::read(&config);
        let connection_string = match &args.connection_string {
            Some(cs) => cs.clone(),
            None => local_connection_string(&config, local.as_ref()).await?,
        };
        let cs = ConnectionString::parse(&connection_string).map_err(anyhow::Error::msg)?;
        let (Some(key_name), Some(key)) = (cs.shared_access_key_name, cs.shared_access_key) else {
            bail!("the connection string needs SharedAccessKeyName and SharedAccessKey");
        };
        let target = args
            .endpoint
            .clone()
            .unwrap_or_else(|| cs.host_name.clone());
        // When the call goes to the local deployment, a refused connection
        // means it is stopped: say how to start it.
        let local_endpoint = local.as_ref().map_or_else(
            || local::configured_endpoint(&config),
            |d| d.endpoint.clone(),
        );
        let start = target
            .eq_ignore_ascii_case(&local_endpoint)
            .then(|| match &local {
                Some(d) => d.start_command(&config, &args.location),
                None => local::start_command(&args.location, &config),
            });
        let ca = args.ca.clone().or_else(|| local.and_then(|d| d.ca_cert));
        Ok(Self {
            client: http_client(&config, ca.as_ref())?,
            base: format!("https://{target}"),
            host: cs.host_name,
            key_name,
            key: key.expose().to_owned(),
            target: Target {
                address: onramp_model::authority::with_default_port(&target, 443).unwrap_or(target),
                start,
            },
        })
    }

    /// A service token valid for an hour.
    fn token(&self) -> anyhow::Result<String> {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64
            + 3600;
        sas::sign(&self.host, &self.key, expiry, Some(&self.key_name)).map_err(anyhow::Error::msg)
    }

    /// Sends `req`; a transport error says what is (not) answering.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        match req.send().await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                let err = anyhow::Error::new(e).context(format!("cannot reach {}", self.base));
                Err(self.target.explain(err).await)
            }
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.request(method, path, body, None).await
    }

    /// A call that holds only while the resource has the ETag `if_match`, when given.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Value> {
        let token = self.token()?;
        let mut req = self
            .client
            .request(
                method,
                format!("{}/{path}?api-version={SERVICE_API_VERSION}", self.base),
            )
            .header("Authorization", token);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(etag) = if_match {
            req = req.header("If-Match", etag);
        }
        let resp = self.send(req).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let detail = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(err) => format!(" {}: {}", err.error_code, err.message),
                Err(_) => format!(": {text}"),
            };
            return Err(ApiError {
                status: status.as_u16(),
                detail,
            }
            .into());
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("unreadable answer: {text}"))
    }

    /// Every item of a query, following continuation tokens.
    async fn query_all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let token = self.token()?;
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut req = self
                .client
                .post(format!(
                    "{}/{path}?api-version={SERVICE_API_VERSION}",
                    self.base
                ))
                .header("Authorization", &token)
                .header("x-ms-max-item-count", "1000")
                .json(&serde_json::json!({"query": "*"}));
            if let Some(c) = &continuation {
                req = req.header("x-ms-continuation", c);
            }
            let resp = self.send(req).await?;
            let status = resp.status();
            continuation = resp
                .headers()
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = resp.text().await?;
            if !status.is_success() {
                bail!("HTTP {}: {text}", status.as_u16());
            }
            let page: Vec<Value> = serde_json::from_str(&text)?;
            items.extend(page);
            if continuation.is_none() {
                return Ok(items);
            }
        }
    }
}

/// The owner policy's connection string of the local deployment.
async fn local_connection_string(
    config: &Config,
    state: Option<&Deployment>,
) -> anyhow::Result<String> {
    let store = local::open_existing(config)
        .await
        .context("no --connection-string given, and the local deployment could not be read")?;
    let service = state
        .map(|s| s.service.clone())
        .unwrap_or_else(|| config.service.name.clone());
    let owner = store
        .policies(&service)
        .await?
        .into_iter()
        .find(|p| p.name == OWNER_POLICY)
        .ok_or_else(|| anyhow::anyhow!("provisioning service '{service}' has no {OWNER_POLICY} policy; pass --connection-string"))?;
    let endpoint = state.map_or_else(
        || local::configured_endpoint(config),
        |s| s.endpoint.clone(),
    );
    Ok(owner.connection_string(&endpoint))
}

/// The attestation an enrollment or group gets from the command line:
/// certificates (`client` for an individual enrollment, signing
/// certificates for a group), a CA reference, or symmetric keys.
fn attestation(spec: &EnrollmentSpec, group: bool) -> anyhow::Result<AttestationMechanism> {
    let read = |p: &std::path::PathBuf| -> anyhow::Result<X509CertificateWithInfo> {
        let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        // The first certificate of the file (a chain file starts with the certificate itself).
        let first = pem
            .find("-----END CERTIFICATE-----")
            .map(|i| &pem[..i + 25])
            .unwrap_or(&pem);
        Ok(X509CertificateWithInfo {
            certificate: Some(first.to_owned()),
            info: None,
        })
    };
    if let Some(ek) = &spec.tpm_ek {
        let srk = spec.tpm_srk.as_deref();
        return Ok(AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                endorsement_key: tpm_key(ek, "--tpm-ek")?.to_base64(),
                storage_root_key: srk
                    .map(|k| tpm_key(k, "--tpm-srk").map(|k| k.to_base64()))
                    .transpose()?,
            }),
            ..Default::default()
        });
    }
    if let Some(name) = &spec.ca_reference {
        return Ok(AttestationMechanism {
            kind: AttestationType::X509,
            x509: Some(X509Attestation {
                ca_references: Some(X509CaReferences {
                    primary: Some(name.clone()),
                    secondary: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(primary) = &spec.certificate {
        let certs = X509Certificates {
            primary: Some(read(primary)?),
            secondary: spec.secondary_certificate.as_ref().map(read).transpose()?,
        };
        let x509 = if group {
            X509Attestation {
                signing_certificates: Some(certs),
                ..Default::default()
            }
        } else {
            X509Attestation {
                client_certificates: Some(certs),
                ..Default::default()
            }
        };
        return Ok(AttestationMechanism {
            kind: AttestationType::X509,
            x509: Some(x509),
            ..Default::default()
        });
    }
    Ok(AttestationMechanism {
        kind: AttestationType::SymmetricKey,
        symmetric_key: Some(SymmetricKeyAttestation {
            primary_key: spec.key.clone().map(Secret::new),
            secondary_key: spec.secondary_key.clone().map(Secret::new),
        }),
        ..Default::default()
    })
}

/// A TPM key given on the command line: a file holding the marshaled
/// `TPM2B_PUBLIC` (as `tpm2_readpublic -f tss` writes it, or base64 of it),
/// or the base64 text itself. Checked here so a wrong file is named before
/// anything is sent.
fn tpm_key(value: &str, flag: &str) -> anyhow::Result<RsaPublic> {
    let path = std::path::Path::new(value);
    let parsed = if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        match RsaPublic::parse(&bytes) {
            Ok(key) => Ok(key),
            Err(binary) => match std::str::from_utf8(&bytes) {
                Ok(text) => RsaPublic::from_base64(text.trim()),
                Err(_) => Err(binary),
            },
        }
    } else {
        RsaPublic::from_base64(value.trim())
    };
    parsed.map_err(|e| anyhow::anyhow!("{flag} '{value}': the key {e}"))
}

/// What `--initial-twin`, `--allocation-policy`, `--iot-hub`, `--disabled`
/// and `--edge` say, for an enrollment or a group alike, in the members'
/// JSON form.
#[serde_with::skip_serializing_none]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecSettings {
    initial_twin: Option<InitialTwin>,
    allocation_policy: Option<AllocationPolicy>,
    iot_hubs: Option<Vec<String>>,
    provisioning_status: ProvisioningStatus,
    capabilities: DeviceCapabilities,
}

fn settings(spec: &EnrollmentSpec) -> anyhow::Result<SpecSettings> {
    let initial_twin = match &spec.initial_twin {
        Some(t) => Some(
            serde_json::from_str(t).context("--initial-twin is not an initial twin JSON object")?,
        ),
        None => None,
    };
    let allocation_policy = match &spec.allocation_policy {
        Some(p) => Some(AllocationPolicy::parse(p).ok_or_else(|| {
            anyhow::anyhow!("--allocation-policy '{p}': use hashed, static, geoLatency or custom")
        })?),
        None => None,
    };
    Ok(SpecSettings {
        initial_twin,
        allocation_policy,
        iot_hubs: (!spec.iot_hubs.is_empty()).then(|| spec.iot_hubs.clone()),
        provisioning_status: if spec.disabled {
            ProvisioningStatus::Disabled
        } else {
            ProvisioningStatus::Enabled
        },
        capabilities: DeviceCapabilities {
            iot_edge: spec.edge,
        },
    })
}

/// Individual enrollments and enrollment groups sit at parallel paths of the
/// service API and are written, shown, listed and deleted the same way.
#[derive(Clone, Copy)]
struct Records(EnrollmentKind);

impl Records {
    fn path(self) -> &'static str {
        self.0.collection()
    }

    fn item(self, id: &str) -> String {
        format!("{}/{}", self.path(), enc(id))
    }

    async fn put(self, api: &Api, id: &str, doc: Value) -> anyhow::Result<Value> {
        api.call(Method::PUT, &self.item(id), Some(&doc)).await
    }

    /// The body of a create: the ID, the attestation and the settings of
    /// the command line.
    fn body(
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
        if let Some(twin) = &changes.initial_twin {
            let twin: InitialTwin = serde_json::from_str(twin)
                .context("--initial-twin is not an initial twin JSON object")?;
            doc["initialTwin"] = serde_json::to_value(twin)?;
        }
        if let Some(policy) = &changes.allocation_policy {
            let policy = AllocationPolicy::parse(policy).ok_or_else(|| {
                anyhow::anyhow!(
                    "--allocation-policy '{policy}': use hashed, static, geoLatency or custom"
                )
            })?;
            doc["allocationPolicy"] = policy.as_str().into();
        }
        if !changes.iot_hubs.is_empty() {
            doc["iotHubs"] = serde_json::to_value(&changes.iot_hubs)?;
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
            (&changes.key, "primaryKey"),
            (&changes.secondary_key, "secondaryKey"),
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

    async fn show(self, api: &Api, id: &str, keys: bool) -> anyhow::Result<()> {
        let mut doc = api.call(Method::GET, &self.item(id), None).await?;
        if keys {
            let path = format!("{}/attestationmechanism", self.item(id));
            doc["attestation"] = api.call(Method::POST, &path, None).await?;
        }
        print(&doc)
    }

    async fn list(self, api: &Api) -> anyhow::Result<()> {
        let query = format!("{}/query", self.path());
        print(&Value::Array(api.query_all(&query).await?))
    }

    async fn export(self, api: &Api, file: Option<&Path>, keys: bool) -> anyhow::Result<()> {
        let query = format!("{}/query", self.path());
        let mut lines = String::new();
        for mut record in api.query_all(&query).await? {
            if keys {
                let id = record[self.0.id_field()]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let path = format!("{}/attestationmechanism", self.item(&id));
                record["attestation"] = api.call(Method::POST, &path, None).await?;
            }
            lines.push_str(&serde_json::to_string(&record)?);
            lines.push('\n');
        }
        match file {
            // Keys or not, enrollments are the operator's alone.
            Some(path) => onramp_files::write(path, lines.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?,
            None => print!("{lines}"),
        }
        Ok(())
    }

    /// Creates the records of a JSON Lines file in bulk calls of `batch`.
    async fn import(self, api: &Api, file: &Path, batch: usize, quiet: bool) -> anyhow::Result<()> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut rejected = Vec::new();
        let mut records = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(record) if record[self.0.id_field()].is_string() => records.push(record),
                Ok(_) => rejected
                    .push(json!({"line": n + 1, "reason": format!("no {}", self.0.id_field())})),
                Err(e) => rejected.push(json!({"line": n + 1, "reason": format!("not JSON: {e}")})),
            }
        }
        let progress = crate::bench::bar(records.len() as u64, quiet, "importing");
        let (mut created, mut existing) = (0usize, 0usize);
        for chunk in records.chunks(batch) {
            let mut items = chunk.to_vec();
            for item in &mut items {
                // What the service owns is not imported.
                if let Some(fields) = item.as_object_mut() {
                    for owned in [
                        "etag",
                        "createdDateTimeUtc",
                        "lastUpdatedDateTimeUtc",
                        "registrationState",
                    ] {
                        fields.remove(owned);
                    }
                }
            }
            let body = json!({"mode": "create", self.0.collection(): items});
            let answer = api.call(Method::POST, self.path(), Some(&body)).await?;
            let errors = answer["errors"].as_array().cloned().unwrap_or_default();
            let exists = |e: &Value| {
                e["errorCode"].as_u64() == Some(u64::from(ErrorCode::AlreadyExists.code()))
            };
            existing += errors.iter().filter(|e| exists(e)).count();
            for error in errors.iter().filter(|e| !exists(e)) {
                rejected.push(error.clone());
            }
            created += chunk.len() - errors.len();
            progress.inc(chunk.len() as u64);
        }
        progress.finish_and_clear();
        eprintln!(
            "imported {created} {}, skipped {existing} that exist, rejected {}",
            self.0.collection(),
            rejected.len()
        );
        if !rejected.is_empty() {
            let report = file.with_extension("rejected.jsonl");
            let lines: String = rejected.iter().map(|r| format!("{r}\n")).collect();
            onramp_files::write(&report, lines.as_bytes())
                .with_context(|| format!("writing {}", report.display()))?;
            bail!(
                "{} records were refused; see {}",
                rejected.len(),
                report.display()
            );
        }
        Ok(())
    }

    async fn delete(self, api: &Api, id: &str) -> anyhow::Result<()> {
        api.call(Method::DELETE, &self.item(id), None).await?;
        eprintln!("deleted {} {id}", self.0.short_noun());
        Ok(())
    }

    /// Runs `onramp enrollment …` or `onramp group …`.
    pub async fn run(self, command: RecordCommand) -> anyhow::Result<()> {
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
                print(&self.put(&api, &id, body).await?)
            }
            RecordCommand::Update { api, id, changes } => {
                let api = Api::open(&api).await?;
                print(&self.update(&api, &id, &changes).await?)
            }
            RecordCommand::Show { api, id, keys } => {
                self.show(&Api::open(&api).await?, &id, keys).await
            }
            RecordCommand::List { api } => self.list(&Api::open(&api).await?).await,
            RecordCommand::Delete { api, id } => self.delete(&Api::open(&api).await?, &id).await,
            RecordCommand::Export { api, file, keys } => {
                self.export(&Api::open(&api).await?, file.as_deref(), keys)
                    .await
            }
            RecordCommand::Import {
                api,
                file,
                batch,
                quiet,
            } => {
                self.import(&Api::open(&api).await?, &file, batch as usize, quiet)
                    .await
            }
        }
    }
}

pub(crate) fn print(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

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

pub async fn enrollment(command: RecordCommand) -> anyhow::Result<()> {
    Records(EnrollmentKind::Individual).run(command).await
}

pub async fn group(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Record(command) => Records(EnrollmentKind::Group).run(command).await,
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

pub async fn registration(command: RegistrationCommand) -> anyhow::Result<()> {
    let item = |id: &str| format!("registrations/{}", enc(id));
    match command {
        RegistrationCommand::Show {
            api,
            registration_id,
        } => {
            let api = Api::open(&api).await?;
            print(&api.call(Method::GET, &item(&registration_id), None).await?)
        }
        RegistrationCommand::List { api, group_id } => {
            let api = Api::open(&api).await?;
            let query = format!("{}/query", item(&group_id));
            print(&Value::Array(api.query_all(&query).await?))
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
