//! `onramp device provision`: a simulated device, speaking the DPS device API
//! over HTTPS exactly as the Azure SDKs do. Load generators drive the same code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use onramp_core::sas;
use onramp_model::{
    DeviceRegistration, ErrorBody, RegistrationOperationStatus, RegistrationStatus,
};

use crate::cli::{DeviceCommand, ProvisionArgs};
use crate::config::Config;
use crate::local::ServeState;

/// The api-version Onramp's simulator sends (what the C SDK sends today).
pub const DEVICE_API_VERSION: &str = "2021-06-01";

pub async fn run(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Provision(args) => provision(args).await,
    }
}

/// Builds an HTTPS client trusting `ca` (or the local development CA).
pub fn http_client(config: &Config, ca: Option<&PathBuf>) -> anyhow::Result<reqwest::Client> {
    let ca_path = ca.cloned().or_else(|| {
        let local = config.tls_dir().join("ca.pem");
        local.exists().then_some(local)
    });
    let pem = match &ca_path {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the CA certificate {}", p.display()))?,
        ),
        None => None,
    };
    let tls = onramp_net::tls::client_config(pem.as_deref())?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")
}

/// One device's credentials and target.
pub struct DeviceSpec {
    pub endpoint: String,
    pub id_scope: String,
    pub registration_id: String,
    pub key: String,
    pub payload: Option<serde_json::Value>,
    pub force: bool,
}

/// Registers over HTTPS and polls until the operation is finished.
pub async fn provision_https(
    client: &reqwest::Client,
    spec: &DeviceSpec,
) -> anyhow::Result<RegistrationOperationStatus> {
    let resource = format!("{}/registrations/{}", spec.id_scope, spec.registration_id);
    let base = format!(
        "https://{}/{}",
        spec.endpoint,
        resource_path(&spec.id_scope, &spec.registration_id)
    );
    let token = |expiry| {
        sas::sign(&resource, &spec.key, expiry, Some("registration")).map_err(anyhow::Error::msg)
    };
    let expiry = unix_now() + 3600;
    let body = DeviceRegistration {
        registration_id: Some(spec.registration_id.clone()),
        payload: spec.payload.clone(),
        ..Default::default()
    };
    let mut url = format!("{base}/register?api-version={DEVICE_API_VERSION}");
    if spec.force {
        url.push_str("&forceRegistration=true");
    }
    let resp = client
        .put(&url)
        .header("Authorization", token(expiry)?)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", spec.endpoint))?;
    let mut status = read_status(resp).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while status.status == RegistrationStatus::Assigning {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the registration is still assigning after 120 s (operation {})",
                status.operation_id
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let resp = client
            .get(format!(
                "{base}/operations/{}?api-version={DEVICE_API_VERSION}",
                status.operation_id
            ))
            .header("Authorization", token(expiry)?)
            .send()
            .await?;
        status = read_status(resp).await?;
    }
    Ok(status)
}

fn resource_path(scope: &str, registration_id: &str) -> String {
    format!(
        "{}/registrations/{}",
        sas::encode(scope),
        sas::encode(registration_id)
    )
}

async fn read_status(resp: reqwest::Response) -> anyhow::Result<RegistrationOperationStatus> {
    let code = resp.status();
    let text = resp.text().await?;
    if !code.is_success() {
        if let Ok(err) = serde_json::from_str::<ErrorBody>(&text) {
            bail!("HTTP {} {}: {}", code.as_u16(), err.error_code, err.message);
        }
        bail!("HTTP {}: {text}", code.as_u16());
    }
    serde_json::from_str(&text).with_context(|| format!("unreadable answer: {text}"))
}

async fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.location)?;
    let local = ServeState::read(&config);
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| local.as_ref().map(|s| s.endpoint.clone()))
        .unwrap_or_else(|| "localhost".into());
    let id_scope = args
        .scope
        .clone()
        .or_else(|| local.as_ref().map(|s| s.id_scope.clone()))
        .ok_or_else(|| anyhow::anyhow!("give the provisioning service's ID scope with --scope"))?;
    let ca = args
        .ca
        .clone()
        .or_else(|| local.as_ref().and_then(|s| s.ca_cert.clone()));
    if args.protocol != "https" {
        bail!(
            "protocol '{}' is not available in this version; use https",
            args.protocol
        );
    }
    let key = match (&args.key, &args.group_key) {
        (Some(k), None) => k.clone(),
        (None, Some(g)) => {
            sas::derive_device_key(g, &args.registration_id).map_err(anyhow::Error::msg)?
        }
        _ => bail!("give the device key with --key, or the enrollment group key with --group-key"),
    };
    let payload = match &args.payload {
        Some(p) => Some(serde_json::from_str(p).context("--payload is not JSON")?),
        None => None,
    };
    let client = http_client(&config, ca.as_ref())?;
    let spec = DeviceSpec {
        endpoint,
        id_scope,
        registration_id: args.registration_id.clone(),
        key,
        payload,
        force: args.force,
    };
    let status = provision_https(&client, &spec).await?;
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
            Ok(())
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
