//! `onramp device provision` and `onramp device run`: the simulator on the
//! command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_core::sas;
use onramp_core::tpm::device::SoftTpm;
use onramp_model::RegistrationStatus;

use crate::cli::{DeviceCommand, DeviceTarget, ProvisionArgs, RunArgs};
use crate::config::Config;
use crate::local::{Deployment, Target};
use crate::simulator::{self, DeviceSpec, HubDevice, HubLogin, Protocol};

pub async fn run(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Provision(args) => provision(args).await.map(|_| ()),
        DeviceCommand::Run(args) => run_device(args).await,
    }
}

/// The CA certificate PEM to trust: `ca`, else the local development CA.
fn trusted_pem(config: &Config, ca: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    let ca_path = ca.cloned().or_else(|| {
        let local = config.tls_dir().join("ca.pem");
        local.exists().then_some(local)
    });
    ca_path
        .map(|p| {
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading the CA certificate {}", p.display()))
        })
        .transpose()
}

pub fn tls_config(
    config: &Config,
    ca: Option<&PathBuf>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(Arc::new(onramp_net::tls::client_config(
        trusted_pem(config, ca)?.as_deref(),
    )?))
}

/// A TLS configuration that trusts `ca` and presents `chain_pem` (device
/// certificate first, then intermediates) with its private key.
pub fn client_config_with_certificate(
    config: &Config,
    ca: Option<&PathBuf>,
    chain_pem: &str,
    key_pem: &str,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = trusted_pem(config, ca)? {
        for cert in onramp_net::tls::certs_from_pem(&pem)? {
            roots.add(cert)?;
        }
    }
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(onramp_net::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                onramp_net::tls::certs_from_pem(chain_pem)?,
                onramp_net::tls::key_from_pem(key_pem)?,
            )?,
    )
}

/// Builds an HTTPS client trusting `ca` (or the local development CA).
pub fn http_client(config: &Config, ca: Option<&PathBuf>) -> anyhow::Result<reqwest::Client> {
    let tls = onramp_net::tls::client_config(trusted_pem(config, ca)?.as_deref())?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")
}

struct Provisioned {
    status: onramp_model::RegistrationOperationStatus,
    key: Option<String>,
    tls: Arc<rustls::ClientConfig>,
}

/// A [`DeviceTarget`] with the local server's values filled in.
pub(crate) struct Resolved {
    pub endpoint: String,
    pub id_scope: String,
    pub ca: Option<PathBuf>,
}

impl DeviceTarget {
    pub(crate) fn resolve(
        &self,
        local: Option<&Deployment>,
        protocol: Protocol,
    ) -> anyhow::Result<Resolved> {
        let endpoint = match (&self.endpoint, local) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) if protocol == Protocol::Mqtt => s
                .mqtt_endpoint
                .clone()
                .unwrap_or_else(|| s.endpoint.clone()),
            (None, Some(s)) => s.endpoint.clone(),
            (None, None) => "localhost".into(),
        };
        onramp_model::authority::split(&endpoint).context("--endpoint")?;
        let id_scope = self
            .scope
            .clone()
            .or_else(|| local.map(|s| s.id_scope.clone()))
            .ok_or_else(|| {
                anyhow::anyhow!("give the provisioning service's ID scope with --scope")
            })?;
        let ca = self
            .ca
            .clone()
            .or_else(|| local.and_then(|s| s.ca_cert.clone()));
        Ok(Resolved {
            endpoint,
            id_scope,
            ca,
        })
    }
}

async fn provision(args: ProvisionArgs) -> anyhow::Result<Provisioned> {
    let config = Config::load(&args.location)?;
    let local = Deployment::read(&config);
    let protocol = Protocol::parse(&args.protocol)?;
    let Resolved {
        endpoint,
        id_scope,
        ca,
    } = args.target.resolve(local.as_ref(), protocol)?;
    let tpm = match &args.tpm {
        Some(path) => Some(Arc::new(soft_tpm(path, &args.registration_id)?)),
        None => None,
    };
    let key = match (&args.key, &args.group_key, &args.certificate) {
        (Some(k), None, None) => Some(k.clone()),
        (None, Some(g), None) => {
            Some(sas::derive_device_key(g, &args.registration_id).map_err(anyhow::Error::msg)?)
        }
        (None, None, Some(_)) => None,
        (None, None, None) if tpm.is_some() => None,
        _ => bail!(
            "give the device key with --key, the enrollment group key with --group-key, or an X.509 \
             certificate with --certificate and --certificate-key"
        ),
    };
    let payload = match &args.payload {
        Some(p) => Some(serde_json::from_str(p).context("--payload is not JSON")?),
        None => None,
    };
    // An X.509 device presents its certificate chain in every TLS handshake.
    let tls = match (&args.certificate, &args.certificate_key) {
        (Some(chain), Some(private_key)) => {
            let chain = std::fs::read_to_string(chain)
                .with_context(|| format!("reading {}", chain.display()))?;
            let private_key = std::fs::read_to_string(private_key)
                .with_context(|| format!("reading {}", private_key.display()))?;
            Arc::new(client_config_with_certificate(
                &config,
                ca.as_ref(),
                &chain,
                &private_key,
            )?)
        }
        _ => tls_config(&config, ca.as_ref())?,
    };
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")?;
    // A refused connection to the local deployment means it is stopped.
    let target = Target {
        address: simulator::address(&endpoint, protocol),
        start: local
            .as_ref()
            .filter(|d| d.endpoint == endpoint || d.mqtt_endpoint.as_ref() == Some(&endpoint))
            .map(|d| d.start_command(&config, &args.location)),
    };
    let spec = DeviceSpec {
        endpoint,
        id_scope,
        registration_id: args.registration_id.clone(),
        key: key.clone(),
        payload,
        force: args.force,
        tpm,
    };
    let status = match simulator::provision(&spec, protocol, &http, tls.clone()).await {
        Ok(status) => status,
        Err(e) => return Err(target.explain(e).await),
    };
    println!("{}", serde_json::to_string_pretty(&status)?);
    match status.status {
        RegistrationStatus::Assigned => {
            if let Some(state) = &status.registration_state {
                eprintln!(
                    "assigned: device '{}' on hub {}",
                    state.device_id.as_deref().unwrap_or("?"),
                    state.assigned_hub.as_deref().unwrap_or("?")
                );
            }
            // A TPM device's hub key is the one the answer wraps for its TPM.
            let key = match spec.tpm_hub_key(&status)? {
                Some(hub_key) => Some(hub_key),
                None => key,
            };
            Ok(Provisioned { status, key, tls })
        }
        other => {
            let message = status
                .registration_state
                .as_ref()
                .and_then(|s| s.error_message.clone())
                .unwrap_or_default();
            bail!("registration {other}: {message}")
        }
    }
}

async fn run_device(args: RunArgs) -> anyhow::Result<()> {
    let hub_protocol = Protocol::parse(&args.hub_protocol)?;
    if hub_protocol == Protocol::Https {
        bail!(
            "--hub-protocol: the simulated device reaches its hub over mqtt, mqtt-ws, amqp or amqp-ws"
        );
    }
    let report = match &args.report {
        Some(r) => {
            Some(serde_json::from_str::<serde_json::Value>(r).context("--report is not JSON")?)
        }
        None => None,
    };
    let provisioned = provision(args.provision.clone()).await?;
    let Some((hub, device_id)) = provisioned
        .status
        .registration_state
        .and_then(|s| Some((s.assigned_hub?, s.device_id?)))
    else {
        bail!("the answer names no hub or device ID");
    };
    let mut device = HubDevice::connect(HubLogin {
        hub: &hub,
        device_id: &device_id,
        key: provisioned.key.as_deref(),
        protocol: hub_protocol,
        tls: provisioned.tls,
    })
    .await?;
    let twin = device.twin().await?;
    println!("{}", serde_json::json!({"desired": twin["desired"]}));
    if let Some(patch) = report {
        let version = device.report(&patch).await?;
        eprintln!("reported properties at version {version}");
    }
    for i in 0..args.messages {
        device
            .send_telemetry(&serde_json::json!({"seq": i, "deviceId": device_id, "sentAt": onramp_model::UtcTime::now()}))
            .await?;
    }
    eprintln!("sent {} telemetry messages to {hub}", args.messages);
    if args.listen_seconds > 0 {
        let until = tokio::time::Instant::now() + Duration::from_secs(args.listen_seconds);
        loop {
            match tokio::time::timeout_at(until, device.desired_update()).await {
                Ok(Ok(update)) => println!("{}", serde_json::json!({"desiredUpdate": update})),
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
    }
    device.disconnect().await;
    Ok(())
}

/// The software TPM kept in `path`, made (and its enrollment command shown)
/// when the file does not exist yet.
fn soft_tpm(path: &std::path::Path, registration_id: &str) -> anyhow::Result<SoftTpm> {
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Kept {
        endorsement_key: String,
        storage_root_key: String,
    }
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the software TPM {}", path.display()))?;
        let kept: Kept = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a software TPM Onramp wrote", path.display()))?;
        let der = |b64: &str| {
            STANDARD
                .decode(b64)
                .context("a key in the TPM file is not base64")
        };
        return SoftTpm::from_pkcs8(&der(&kept.endorsement_key)?, &der(&kept.storage_root_key)?)
            .with_context(|| format!("the keys in {}", path.display()));
    }
    let tpm = SoftTpm::generate()?;
    let (ek, srk) = tpm.to_pkcs8()?;
    let kept = Kept {
        endorsement_key: STANDARD.encode(ek),
        storage_root_key: STANDARD.encode(srk),
    };
    onramp_files::write(path, serde_json::to_string(&kept)?.as_bytes())
        .with_context(|| format!("writing the software TPM {}", path.display()))?;
    eprintln!(
        "created a software TPM in {}; enroll it with:\n  onramp enrollment create {registration_id} --tpm-ek {} --tpm-srk {}\n\
         or admit it in a TPM enrollment group by its endorsement key hash:\n  --allow-ek-hash {}",
        path.display(),
        tpm.endorsement_key().to_base64(),
        tpm.storage_root_key().to_base64(),
        tpm.endorsement_key().sha256_hex()
    );
    Ok(tpm)
}
