//! `onramp enrollment …` and `onramp group …`: the DPS service API, called
//! over HTTPS with a service connection string, as any Azure service SDK would.

use anyhow::{Context, bail};
use onramp_core::connection_string::ConnectionString;
use onramp_core::ports::Store;
use onramp_core::sas;
use onramp_core::tenant::OWNER_POLICY;
use onramp_model::{
    AllocationPolicy, AttestationMechanism, AttestationType, DeviceCapabilities, EnrollmentGroup,
    ErrorBody, IndividualEnrollment, InitialTwin, ProvisioningStatus, Secret,
    SymmetricKeyAttestation, X509Attestation, X509CaReferences, X509CertificateWithInfo,
    X509Certificates,
};
use reqwest::Method;
use serde_json::Value;

use crate::cli::{EnrollmentCommand, EnrollmentSpec, GroupCommand, ServiceApi};
use crate::config::Config;
use crate::device::http_client;
use crate::local::{self, Deployment, Target};

const SERVICE_API_VERSION: &str = "2021-10-01";

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
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64
            + 3600;
        let token = sas::sign(&self.host, &self.key, expiry, Some(&self.key_name))
            .map_err(anyhow::Error::msg)?;
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
        let resp = self.send(req).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            if let Ok(err) = serde_json::from_str::<ErrorBody>(&text) {
                bail!(
                    "HTTP {} {}: {}",
                    status.as_u16(),
                    err.error_code,
                    err.message
                );
            }
            bail!("HTTP {}: {text}", status.as_u16());
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("unreadable answer: {text}"))
    }

    /// Every item of a query, following continuation tokens.
    async fn query_all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64
            + 3600;
        let token = sas::sign(&self.host, &self.key, expiry, Some(&self.key_name))
            .map_err(anyhow::Error::msg)?;
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

/// What `--initial-twin`, `--allocation-policy`, `--iot-hub`, `--disabled`
/// and `--edge` say, for an enrollment or a group alike.
struct SpecSettings {
    initial_twin: Option<InitialTwin>,
    allocation_policy: Option<AllocationPolicy>,
    iot_hubs: Option<Vec<String>>,
    provisioning_status: Option<ProvisioningStatus>,
    capabilities: Option<DeviceCapabilities>,
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
        provisioning_status: Some(if spec.disabled {
            ProvisioningStatus::Disabled
        } else {
            ProvisioningStatus::Enabled
        }),
        capabilities: Some(DeviceCapabilities {
            iot_edge: spec.edge,
        }),
    })
}

/// Individual enrollments and enrollment groups sit at parallel paths of the
/// service API and are shown, listed and deleted the same way.
#[derive(Clone, Copy)]
enum Collection {
    Enrollments,
    Groups,
}

impl Collection {
    fn path(self) -> &'static str {
        match self {
            Collection::Enrollments => "enrollments",
            Collection::Groups => "enrollmentGroups",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Collection::Enrollments => "enrollment",
            Collection::Groups => "enrollment group",
        }
    }

    fn item(self, id: &str) -> String {
        format!("{}/{}", self.path(), enc(id))
    }

    async fn put(self, api: &Api, id: &str, doc: Value) -> anyhow::Result<Value> {
        api.call(Method::PUT, &self.item(id), Some(&doc)).await
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

    async fn delete(self, api: &Api, id: &str) -> anyhow::Result<()> {
        api.call(Method::DELETE, &self.item(id), None).await?;
        eprintln!("deleted {} {id}", self.noun());
        Ok(())
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
    let group = EnrollmentGroup {
        enrollment_group_id: group_id.to_owned(),
        attestation: Some(attestation(&EnrollmentSpec::default(), true)?),
        ..Default::default()
    };
    let created = Collection::Groups
        .put(&api, group_id, serde_json::to_value(&group)?)
        .await?;
    created["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the service returned no group key"))
}

pub async fn enrollment(command: EnrollmentCommand) -> anyhow::Result<()> {
    let c = Collection::Enrollments;
    match command {
        EnrollmentCommand::Create {
            api,
            registration_id,
            device_id,
            spec,
        } => {
            let api = Api::open(&api).await?;
            let set = settings(&spec)?;
            let e = IndividualEnrollment {
                registration_id: registration_id.clone(),
                device_id,
                attestation: Some(attestation(&spec, false)?),
                initial_twin: set.initial_twin,
                allocation_policy: set.allocation_policy,
                iot_hubs: set.iot_hubs,
                provisioning_status: set.provisioning_status,
                capabilities: set.capabilities,
                ..Default::default()
            };
            print(
                &c.put(&api, &registration_id, serde_json::to_value(&e)?)
                    .await?,
            )
        }
        EnrollmentCommand::Show {
            api,
            registration_id,
            keys,
        } => {
            c.show(&Api::open(&api).await?, &registration_id, keys)
                .await
        }
        EnrollmentCommand::List { api } => c.list(&Api::open(&api).await?).await,
        EnrollmentCommand::Delete {
            api,
            registration_id,
        } => c.delete(&Api::open(&api).await?, &registration_id).await,
    }
}

pub async fn group(command: GroupCommand) -> anyhow::Result<()> {
    let c = Collection::Groups;
    match command {
        GroupCommand::Create {
            api,
            group_id,
            spec,
        } => {
            let api = Api::open(&api).await?;
            let set = settings(&spec)?;
            let g = EnrollmentGroup {
                enrollment_group_id: group_id.clone(),
                attestation: Some(attestation(&spec, true)?),
                initial_twin: set.initial_twin,
                allocation_policy: set.allocation_policy,
                iot_hubs: set.iot_hubs,
                provisioning_status: set.provisioning_status,
                capabilities: set.capabilities,
                ..Default::default()
            };
            print(&c.put(&api, &group_id, serde_json::to_value(&g)?).await?)
        }
        GroupCommand::Show {
            api,
            group_id,
            keys,
        } => c.show(&Api::open(&api).await?, &group_id, keys).await,
        GroupCommand::List { api } => c.list(&Api::open(&api).await?).await,
        GroupCommand::Delete { api, group_id } => {
            c.delete(&Api::open(&api).await?, &group_id).await
        }
    }
}
